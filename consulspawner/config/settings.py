"""The site-wide mesh settings: the one source of their defaults and limits (pure, no I/O).

The spawner's traits take their defaults from :class:`MeshSettings` and validate each value
with :func:`check`, the same check :class:`MeshSettings` runs on itself, so a limit is written
once. :class:`MeshSettings` adds the checks that relate two settings (an intention outliving the
check TTL, distinct upstream ports).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields

from .. import naming
from ..entries import L4, L7

TRINO_DESTINATION = "trino-coordinator"
DAY = 24 * 3600


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


def upstreams_from(items: list[dict]) -> tuple[Upstream, ...]:
    """Upstreams from the ``upstreams`` trait's dicts; ValueError/TypeError on a bad item."""
    upstreams = []
    for item in items:
        unknown = set(item) - {"destination_name", "local_bind_port", "local_bind_address"}
        if unknown:
            raise ValueError(f"unknown upstream keys {sorted(unknown)}")
        upstreams.append(
            Upstream(
                destination=item["destination_name"],
                local_bind_port=int(item["local_bind_port"]),
                local_bind_address=item.get("local_bind_address", "127.0.0.1"),
            )
        )
    return tuple(upstreams)


# Each setting's own range: (holds, what the message says it must be). Shared by the traits'
# validators and MeshSettings.__post_init__.
LIMITS: dict[str, tuple[Callable[[float], bool], str]] = {
    "check_ttl": (lambda v: v >= 5, "must be at least 5 s: below that it would flap on any hub hiccup"),
    # agent/config/default.go check_deregister_interval_min = "1m"
    "deregister_critical_after": (lambda v: v >= 60, "must be at least 60 s (Consul's minimum)"),
    # acl.token_min_expiration_ttl "1m", token_max_expiration_ttl "24h" (agent/config/default.go)
    "intention_ttl": (lambda v: v >= 60, "must be at least 60 s"),
    "sidecar_port": (lambda v: 0 <= v <= 65535, "must be a port (or 0)"),
    # Settings of the spawner only (not in the plan), checked the same way.
    "token_rotation_margin": (lambda v: v >= 0, "must not be negative"),
    "sidecar_restart_attempts": (lambda v: v >= 0, "must not be negative"),
    # Docker's CpuShares: 2..262144 on cgroup v1 (the kernel's cpu.shares range), 0 for its default.
    "sidecar_cpu_shares": (lambda v: v == 0 or 2 <= v <= 262144, "must be 0 (Docker's default) or 2..262144"),
    "sidecar_start_cpu_shares": (lambda v: v == 0 or 2 <= v <= 262144, "must be 0 (no boost) or 2..262144"),
    "keeper_interval": (lambda v: v > 0, "must be positive"),
    "consul_request_timeout": (lambda v: v > 0, "must be positive"),
    "sidecar_ready_timeout": (lambda v: v > 0, "must be positive"),
}


def check(name: str, value: float) -> None:
    """ValueError naming the setting when ``value`` is outside its range in :data:`LIMITS`."""
    holds, must = LIMITS[name]
    if not holds(value):
        raise ValueError(f"{name} {must}, not {value!r}")


@dataclass(frozen=True)
class MeshSettings:
    """The site-wide part of the plan, read from the spawner's traits; its field defaults are
    the traits' defaults."""

    hub_instance: str = "jupyterhub"
    name_template: str = naming.DEFAULT_TEMPLATE
    upstreams: tuple[Upstream, ...] = (Upstream(TRINO_DESTINATION, 28080),)
    intention_destinations: tuple[str, ...] = (TRINO_DESTINATION,)
    intention_mode: str = L7
    trino_destination: str = TRINO_DESTINATION
    check_ttl: int = 60
    deregister_critical_after: int = 180
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
        if self.intention_ttl < self.check_ttl:
            raise ValueError("intention_ttl must be at least check_ttl, or a healthy server loses access")
        for name in sorted(LIMITS.keys() & {f.name for f in fields(self)}):
            check(name, getattr(self, name))


def default(name: str):
    """The default of a MeshSettings field, for the trait of the same name."""
    return next(f.default for f in fields(MeshSettings) if f.name == name)
