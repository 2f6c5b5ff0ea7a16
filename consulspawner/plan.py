"""The mesh plan: what to register, grant and revoke for one server (pure, no I/O).

The spawner gathers its traits into :class:`MeshSettings`, resolves per-user values (the Trino
user) at spawn time, and asks :func:`build_plan` for a :class:`MeshPlan`. Everything Consul will
be told about this server is computed here, so it can be tested against literal dicts and
reused by a spawner for another container backend.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from . import naming, ownership, trinouser
from .entries import L4, L7, source_entry

TRINO_DESTINATION = "trino-coordinator"


@dataclass(frozen=True)
class Upstream:
    """One Connect upstream: ``destination`` reachable from the notebook at
    ``local_bind_address:local_bind_port`` through the sidecar."""

    destination: str
    local_bind_port: int
    local_bind_address: str = "127.0.0.1"

    def __post_init__(self):
        if not naming.is_service_identity_name(self.destination):
            raise ValueError(f"upstream destination {self.destination!r} is not a valid Consul service name")
        if not 1 <= int(self.local_bind_port) <= 65535:
            raise ValueError(f"upstream {self.destination}: local_bind_port {self.local_bind_port} out of range")

    def definition(self) -> dict:
        """As Consul's ``Proxy.Upstreams[]`` (docs: connect/proxies/proxy-config-reference)."""
        return {
            "DestinationType": "service",
            "DestinationName": self.destination,
            "LocalBindAddress": self.local_bind_address,
            "LocalBindPort": int(self.local_bind_port),
        }


@dataclass(frozen=True)
class MeshSettings:
    """The site-wide part of the plan, read from the spawner's traits."""

    hub_instance: str = "jupyterhub"
    name_template: str = naming.DEFAULT_TEMPLATE
    upstreams: tuple[Upstream, ...] = (Upstream(TRINO_DESTINATION, 28080),)
    intention_destinations: tuple[str, ...] = (TRINO_DESTINATION,)
    intention_mode: str = L4
    trino_destination: str = TRINO_DESTINATION
    check_ttl: int = 60
    deregister_critical_after: int = 90
    token_ttl: int = 3600
    intention_ttl: int = 600
    tags: tuple[str, ...] = ("jupyterhub",)
    # Every sidecar listens on its own notebook's address, so all can share one port. 0 leaves it
    # to the agent, whose range (sidecar_min_port..sidecar_max_port, 21000..21255 by default:
    # agent/sidecar_service.go) caps an agent at 256 servers.
    sidecar_port: int = 21000

    def __post_init__(self):
        naming.check_template(self.name_template)
        if self.intention_mode not in (L4, L7):
            raise ValueError(f"intention mode must be {L4!r} or {L7!r}, not {self.intention_mode!r}")
        for destination in self.intention_destinations:
            if not naming.is_service_identity_name(destination):
                raise ValueError(f"intention destination {destination!r} is not a valid Consul service name")
        ports = [u.local_bind_port for u in self.upstreams]
        if len(set(ports)) != len(ports):
            raise ValueError(f"upstreams bind the same local port twice: {ports}")
        # Consul's documented minimum for DeregisterCriticalServiceAfter is one minute, and
        # ACL token ExpirationTTL is documented as 1 minute to 24 hours.
        if self.deregister_critical_after < 60:
            raise ValueError("deregister_critical_after must be at least 60 s (Consul's minimum)")
        if not 60 <= self.token_ttl <= 24 * 3600:
            raise ValueError("token_ttl must be between 60 s and 24 h (Consul's ExpirationTTL range)")
        if self.check_ttl < 5:
            raise ValueError("check_ttl below 5 s would flap on any hub hiccup")
        if self.intention_ttl < self.check_ttl:
            raise ValueError("intention_ttl must be at least check_ttl, or a healthy server loses access")


@dataclass(frozen=True)
class MeshPlan:
    """Everything Consul is told about one server. Built by :func:`build_plan`."""

    settings: MeshSettings
    owner: ownership.Owner
    service_id: str
    service_name: str
    trino_user: str
    service_port: int
    extra_meta: dict = field(default_factory=dict)

    @property
    def sidecar_id(self) -> str:
        return naming.sidecar_id(self.service_id)

    @property
    def check_id(self) -> str:
        return f"{self.service_id}:alive"

    def token_description(self) -> str:
        return self.owner.describe()

    def registration(self, address: str | None = None) -> dict:
        """The agent service definition (docs: services/configuration/services-reference).

        The TTL check is the server's heartbeat: the hub's keeper passes it, and if the hub dies
        the agent deregisters the service ``deregister_critical_after`` later. It is registered
        already passing (``Status``, docs: api-docs/agent/check), since the notebook runs by then:
        one call instead of a registration and a first heartbeat.
        """
        settings = self.settings
        meta = {**self.extra_meta, **self.owner.service_meta()}
        definition = {
            "ID": self.service_id,
            "Name": self.service_name,
            "Port": self.service_port,
            "Tags": list(settings.tags),
            "Meta": meta,
            "Check": {
                "CheckID": self.check_id,
                "Name": "JupyterHub server alive",
                "TTL": f"{settings.check_ttl}s",
                "DeregisterCriticalServiceAfter": f"{settings.deregister_critical_after}s",
                "Status": "passing",
            },
            "Connect": {
                "SidecarService": {
                    **({"Port": settings.sidecar_port} if settings.sidecar_port else {}),
                    "Tags": list(settings.tags),
                    "Meta": meta,
                    "Proxy": {"Upstreams": [u.definition() for u in settings.upstreams]},
                }
            },
        }
        if address:
            definition["Address"] = address
        return definition

    def grants(self, now: float) -> list[tuple[str, dict]]:
        """(destination, source entry) for every intention this server holds until
        ``now + intention_ttl``."""
        owner = self.owner.with_expiry(now + self.settings.intention_ttl)
        return [
            (destination, source_entry(self.service_name, owner, self.settings.intention_mode, self.trino_user))
            for destination in self.settings.intention_destinations
        ]

    def revocations(self) -> list[tuple[str, str]]:
        return [(destination, self.service_name) for destination in self.settings.intention_destinations]

    def notebook_env(self) -> dict[str, str]:
        """What the notebook needs so the trino client works unchanged (and nothing secret)."""
        env = {"TRINO_USER": self.trino_user, "CONSUL_SERVICE_NAME": self.service_name}
        for upstream in self.settings.upstreams:
            if upstream.destination == self.settings.trino_destination:
                env["TRINO_HOST"] = upstream.local_bind_address
                env["TRINO_PORT"] = str(upstream.local_bind_port)
        return env

    def sidecar_args(self, template: list[str], **extra: str) -> list[str]:
        """The sidecar command with ``{service_id}``, ``{sidecar_id}``, ``{service_name}`` and
        any ``extra`` placeholders filled in."""
        values = {
            "service_id": self.service_id,
            "sidecar_id": self.sidecar_id,
            "service_name": self.service_name,
            **extra,
        }
        try:
            return [part.format(**values) for part in template]
        except (KeyError, IndexError, ValueError) as e:
            raise ValueError(f"sidecar command {template!r} has an unknown placeholder: {e}") from e


def build_plan(
    settings: MeshSettings,
    user_name: str,
    server_name: str = "",
    *,
    trino_user: str | None = None,
    service_port: int = 8888,
    service_id: str | None = None,
    incarnation: str = "",
) -> MeshPlan:
    """The plan for one incarnation of one server. ``service_id`` pins a name recorded in
    spawner state, so a template changed while the server runs never loses track of what was
    registered; ``incarnation`` goes into every marker."""
    trino_user = user_name if trino_user is None else trino_user
    # It becomes the X-Trino-User an L7 intention binds, so only what Envoy and Trino read alike.
    trinouser.check_trino_user(trino_user, user_name)
    name = service_id or naming.service_name(user_name, server_name, settings.name_template)
    owner = ownership.Owner(
        hub=settings.hub_instance, user=user_name, server=server_name, service=name, incarnation=incarnation
    )
    return MeshPlan(
        settings=settings,
        owner=owner,
        service_id=name,
        service_name=name,
        trino_user=trino_user,
        service_port=int(service_port),
    )
