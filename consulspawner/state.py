"""What one server has in Consul, as persisted in the spawner's state (never a secret)."""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass, field

from . import ownership

# The layout of the persisted state, written under "version" (as kubespawner versions its state).
# 1: release 1 (no version key, no hub_instance); 2: hub_instance and the version key;
# 3: service_name, as service IDs became unique per incarnation (until then ID == name).
STATE_VERSION = 3


def new_incarnation() -> str:
    """A unique ID for one start of one server."""
    return uuid.uuid4().hex


@dataclass
class MeshState:
    """What exists in Consul for one incarnation of one server. Persisted in the spawner's
    state; never a secret. Enough on its own to undo everything."""

    incarnation: str = ""
    hub_instance: str = ""
    service_id: str = ""  # this incarnation's, unique (naming.service_id)
    service_name: str = ""  # stable across incarnations: identities, intentions, tokens
    user: str = ""
    trino_user: str = ""  # what the grants were made for, so a restarted hub re-grants the same
    token_accessor: str = ""
    token_expires_at: float = 0.0
    token_lifetime: float = 0.0  # what the auth method's MaxTokenTTL gave this token
    # Accessors replaced by a rotation but maybe not logged out yet (logged out with the server).
    retired_accessors: list[str] = field(default_factory=list)
    registered: bool = False
    granted: list[list[str]] = field(default_factory=list)  # [destination, source] pairs
    grant_expires_at: float = 0.0
    # When this incarnation was first granted (the marker's ``since``, kept by extensions) and
    # its server name: for the audit trail and consulspawner-reach.
    granted_since: float = 0.0
    server: str = ""
    # Why the spawner took this server down (the keeper's verdict), kept until the hub clears
    # the state: poll reports it even while a notebook whose stop failed still runs.
    mesh_failure: str = ""
    # The login tokens' secrets by accessor, in this hub process's memory only: never persisted
    # (to_dict leaves them out), never logged. A restarted hub reads the current one back from
    # the sidecar, the one place it lives on disk.
    secrets: dict[str, str] = field(default_factory=dict, repr=False, compare=False)

    def to_dict(self) -> dict:
        return {"version": STATE_VERSION, **{k: v for k, v in asdict(self).items() if v and k != "secrets"}}

    @classmethod
    def from_dict(cls, data: dict | None, hub_instance: str = "") -> MeshState:
        """State as persisted by this or an earlier release, upgraded to this layout.

        ``hub_instance`` is the loading hub's: state from before it was recorded (version 1)
        can only have been written by this hub, and without it no ownership check matches, so
        teardown would leave everything behind while reporting success."""
        data = data or {}
        version = data.get("version", 1)
        if not isinstance(version, int):
            version = 1
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data and k != "secrets"}
        state = cls(**known)
        state.granted = [list(pair) for pair in state.granted]
        state.retired_accessors = list(state.retired_accessors)
        if version < 2 and not state.hub_instance:
            state.hub_instance = hub_instance
        if version < 3 and not state.service_name:
            state.service_name = state.service_id
        return state

    def copy(self) -> MeshState:
        """An independent copy (for work that outlives this state: lingering, deferred undo)."""
        state = MeshState.from_dict(self.to_dict(), self.hub_instance)
        state.secrets = dict(self.secrets)
        return state

    @property
    def empty(self) -> bool:
        return not (self.registered or self.token_accessor or self.granted or self.retired_accessors)

    def owner(self) -> ownership.Owner:
        """The ownership marker's fields for this incarnation (what audit events name)."""
        return ownership.Owner(
            hub=self.hub_instance,
            user=self.user,
            server=self.server,
            service=self.service_name or self.service_id,
            incarnation=self.incarnation,
            expires_at=int(self.grant_expires_at) or None,
            since=int(self.granted_since) or None,
        )

    def owns(self, owner: ownership.Owner | None) -> bool:
        """Whether a marker names this very incarnation (:func:`ownership.is_incarnation`)."""
        return ownership.is_incarnation(
            owner, hub=self.hub_instance, service=self.service_name, incarnation=self.incarnation
        )
