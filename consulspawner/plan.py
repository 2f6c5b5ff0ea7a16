"""The mesh plan: what to register, grant and revoke for one server (pure, no I/O).

The spawner gathers its traits into :class:`MeshSettings`, resolves per-user values (the Trino
user) at spawn time, and asks :func:`build_plan` for a :class:`MeshPlan`. Everything Consul will
be told about this server is computed here, so it can be tested against literal dicts and
reused by a spawner for another container backend.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from . import naming, ownership, trinouser
from .config.settings import TRINO_DESTINATION, MeshSettings, Upstream
from .entries import source_entry

# MeshSettings (the traits' defaults and limits) and Upstream live in config.settings.
__all__ = ["TRINO_DESTINATION", "MeshPlan", "MeshSettings", "Upstream", "build_plan"]


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

    def grants(self, now: float, since: float | None = None) -> list[tuple[str, dict]]:
        """(destination, source entry) for every intention this server holds until
        ``now + intention_ttl``; ``since``: when this incarnation was first granted."""
        owner = self.owner.with_expiry(now + self.settings.intention_ttl)
        if since:
            owner = dataclasses.replace(owner, since=int(since))
        return [
            (destination, source_entry(self.service_name, owner, self.settings.intention_mode, self.trino_user))
            for destination in self.settings.intention_destinations
        ]

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
    service_name: str | None = None,
    incarnation: str = "",
) -> MeshPlan:
    """The plan for one incarnation of one server. ``service_id`` and ``service_name`` pin
    what spawner state recorded, so a template changed while the server runs never loses track
    of what was registered; ``incarnation`` goes into every marker and into the service ID
    (:func:`naming.service_id`), the name stays stable."""
    trino_user = user_name if trino_user is None else trino_user
    # It becomes the X-Trino-User an L7 intention binds, so only what Envoy and Trino read alike.
    trinouser.check_trino_user(trino_user, user_name)
    # State of an earlier release pins only the ID, which was then the name.
    name = service_name or service_id or naming.service_name(user_name, server_name, settings.name_template)
    owner = ownership.Owner(
        hub=settings.hub_instance, user=user_name, server=server_name, service=name, incarnation=incarnation
    )
    return MeshPlan(
        settings=settings,
        owner=owner,
        service_id=service_id or naming.service_id(name, incarnation),
        service_name=name,
        trino_user=trino_user,
        service_port=int(service_port),
    )
