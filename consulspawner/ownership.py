"""Ownership markers: how everything we write into Consul says it is ours (pure, no I/O).

Consul offers no common place for metadata: services have ``Meta``, but an ACL token only has a
``Description`` and a ``service-intentions`` source only has a ``Description`` (``Meta`` exists on
the whole entry, shared with sources we do not own). So every object we create carries one
parseable marker, the way consul-k8s marks what its endpoints controller owns, and every
cleanup filters on it: what does not parse as ours is never touched.

The marker is a fixed prefix followed by compact JSON, after a human-readable sentence::

    JupyterHub server alice/ (hub main) consulspawner/v1 {"hub":"main","user":"alice",...}
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace

MARKER = "consulspawner/v1 "
MANAGED_BY = "consulspawner"
# Service Meta keys (Consul: keys up to 128 chars, values up to 512, at most 64 pairs).
META_MANAGED_BY = "managed-by"
META_HUB = "hub-instance"
META_USER = "hub-user"
META_SERVER = "hub-server"
# Consul caps a Meta value at 512 characters; longer user names are kept in full in the marker.
_META_VALUE_MAX = 512


@dataclass(frozen=True)
class Owner:
    """Which hub, user and server an object in Consul belongs to, and until when.

    ``expires_at`` (Unix seconds) is set on intention sources only: intentions have no expiry of
    their own in Consul, so the janitor reads it from here.
    """

    hub: str
    user: str
    server: str
    service: str
    expires_at: int | None = None

    def describe(self) -> str:
        """A Description: a short sentence for people, then the marker for programs."""
        data = {k: v for k, v in asdict(self).items() if v is not None}
        sentence = f"JupyterHub server {self.user}/{self.server} (hub {self.hub})"
        return f"{sentence} {MARKER}{json.dumps(data, separators=(',', ':'), sort_keys=True)}"

    def with_expiry(self, expires_at: float) -> Owner:
        return replace(self, expires_at=int(expires_at))

    def service_meta(self) -> dict[str, str]:
        """Service ``Meta`` naming the owner, for people reading the catalog and for filters."""
        return {
            META_MANAGED_BY: MANAGED_BY,
            META_HUB: self.hub[:_META_VALUE_MAX],
            META_USER: self.user[:_META_VALUE_MAX],
            META_SERVER: self.server[:_META_VALUE_MAX],
        }


def parse(description: str | None) -> Owner | None:
    """The owner a Description names, or None when it is not one of ours (or is damaged)."""
    if not description or MARKER not in description:
        return None
    raw = description[description.index(MARKER) + len(MARKER) :]
    try:
        data = json.loads(raw)
        owner = Owner(
            hub=data["hub"],
            user=data["user"],
            server=data["server"],
            service=data["service"],
            expires_at=data.get("expires_at"),
        )
    except (ValueError, KeyError, TypeError):
        return None
    if not all(isinstance(v, str) for v in (owner.hub, owner.user, owner.server, owner.service)):
        return None
    if owner.expires_at is not None and not isinstance(owner.expires_at, int):
        return None
    return owner


def is_managed_service(service: dict) -> bool:
    """Whether an agent or catalog service definition was registered by us."""
    meta = service.get("Meta") or service.get("ServiceMeta") or {}
    return meta.get(META_MANAGED_BY) == MANAGED_BY
