"""A fake Consul agent for tests: Consul's HTTP API and semantics, served from a thread.

Usage::

    from consulspawner_dev.fakeconsul import FakeConsul

    with FakeConsul(acl_master_token="secret").start() as fake:
        ...  # point a Consul client at fake.url

See :class:`FakeConsul` for the test knobs (clock, faults, snapshots) and ``python -m
consulspawner_dev.fakeconsul --help`` for running it as a process.
"""

from .acl import ConsulError
from .server import FakeConsul
from .state import State

__all__ = ["ConsulError", "FakeConsul", "State"]
