"""Traits of the server's place in the mesh: hub name, service names, upstreams, intentions,
the Trino user."""

from __future__ import annotations

from traitlets import (
    Bool,
    Callable,
    CaselessStrEnum,
    Dict,
    HasTraits,
    List,
    TraitError,
    Unicode,
    Union,
    default,
    validate,
)

from .. import naming
from ..entries import L4, L7
from .settings import default as setting
from .settings import upstreams_from


class MeshConfig(HasTraits):
    """Names, upstreams and intentions (``c.ConsulSpawner.upstreams`` and friends)."""

    hub_instance = Unicode(
        setting("hub_instance"),
        help="""Name of this hub, written into everything it creates in Consul.

        Cleanup only touches objects marked with this name; give each hub sharing a Consul
        cluster its own.

            c.ConsulSpawner.hub_instance = "analytics-hub"
        """,
    ).tag(config=True)

    service_name_template = Unicode(
        setting("name_template"),
        help="""Consul service name template; ``{slug}`` is the user's (and server's) safe name.

        The result is a DNS label unique per (user, server).

            c.ConsulSpawner.service_name_template = "hub2-{slug}"
        """,
    ).tag(config=True)

    @validate("service_name_template")
    def _valid_template(self, proposal):
        try:
            naming.check_template(proposal.value)
        except naming.NameTemplateError as e:
            raise TraitError(str(e)) from e
        return proposal.value

    upstreams = List(
        Dict(),
        default_value=[
            {"destination_name": u.destination, "local_bind_port": u.local_bind_port} for u in setting("upstreams")
        ],
        help="""Connect upstreams the sidecar binds on the notebook's 127.0.0.1.

        Each item: ``destination_name``, ``local_bind_port`` and optionally
        ``local_bind_address``.

            c.ConsulSpawner.upstreams = [{"destination_name": "trino-coordinator", "local_bind_port": 28080}]
        """,
    ).tag(config=True)

    @validate("upstreams")
    def _valid_upstreams(self, proposal):
        try:
            upstreams_from(proposal.value)
        except (TypeError, ValueError) as e:
            raise TraitError(f"c.ConsulSpawner.upstreams: {e}") from e
        return proposal.value

    intention_destinations = List(
        Unicode(),
        help="""Services this server gets an intention to; default: every upstream's destination.

            c.ConsulSpawner.intention_destinations = ["trino-coordinator"]
        """,
    ).tag(config=True)

    @default("intention_destinations")
    def _intention_destinations_default(self):
        return [u["destination_name"] for u in self.upstreams]

    intention_mode = CaselessStrEnum(
        [L4, L7],
        default_value=setting("intention_mode"),
        help="""How intentions bind the server to its user.

        L7 (default): Trino is reached only with requests whose ``X-Trino-User`` is exactly this
        user's Trino user, and with none of the other headers Trino derives identity from
        (``X-Trino-Original-User``, ``X-Presto-User``, ...): Envoy refuses anything else before
        it reaches Trino. The destination's protocol must be http (a service-defaults entry;
        the spawn names it if missing).

        L4: any connection from this server is allowed, and Trino runs queries as whatever user
        the notebook's client sends: it trusts the notebook. The hub warns at start.

            c.ConsulSpawner.intention_mode = "L4"
        """,
    ).tag(config=True)

    manage_l7_service_defaults = Bool(
        False,
        help="""With intention_mode L7, write a ``service-defaults`` entry with protocol http for
        a destination that has none (marked as this hub's; a foreign entry is never replaced).

        Off by default: L7 intentions need the destination's protocol to be http, and the hub
        refuses to spawn until an operator has written that entry (the message names it). On,
        the hub's token also needs service:write on the destinations.

            c.ConsulSpawner.manage_l7_service_defaults = True
        """,
    ).tag(config=True)

    trino_user = Union(
        [Unicode(), Callable()],
        default_value="{username}",
        help="""The Trino user of a hub user: a template with ``{username}`` or a callable
        ``f(spawner) -> str`` (may be async), evaluated at spawn time.

            c.ConsulSpawner.trino_user = lambda spawner: spawner.user.name.split("@")[0]
        """,
    ).tag(config=True)

    trino_destination = Unicode(
        setting("trino_destination"),
        help="""The upstream whose bind address and port become TRINO_HOST/TRINO_PORT in the notebook.

            c.ConsulSpawner.trino_destination = "trino-coordinator"
        """,
    ).tag(config=True)

    @validate("trino_user")
    def _valid_trino_user(self, proposal):
        value = proposal.value
        if isinstance(value, str):
            try:
                value.format(username="x")
            except (KeyError, IndexError, ValueError) as e:
                raise TraitError(
                    f"c.ConsulSpawner.trino_user {value!r}: only the placeholder {{username}} is known ({e!r})"
                ) from e
        return value
