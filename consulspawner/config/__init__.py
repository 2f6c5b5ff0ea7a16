"""Configuration: every trait of ConsulSpawner, its validation, and the mesh settings.

- :mod:`.settings`: :class:`~.settings.MeshSettings`, the one source of the defaults and
  limits the traits and the mesh plan share (pure, no traitlets);
- :mod:`.connection`, :mod:`.mesh`, :mod:`.containers`, :mod:`.lifetimes`: the traits by topic,
  as ``HasTraits`` mixins of :class:`~.traits.ConsulSpawnerConfig`;
- :mod:`.traits`: all of them together, and the cross-checks that turn them into settings.

Kept free of imports here, so the pure plan can import :mod:`.settings` alone.
"""
