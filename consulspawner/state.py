"""What one server has in Consul, as persisted in the spawner's state (never a secret)."""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass, field

from . import ownership


def new_incarnation() -> str:
    """A unique ID for one start of one server."""
    return uuid.uuid4().hex


@dataclass
class MeshState:
    """What exists in Consul for one incarnation of one server. Persisted in the spawner's
    state; never a secret. Enough on its own to undo everything."""

    incarnation: str = ""
    hub_instance: str = ""
    service_id: str = ""
    user: str = ""
    trino_user: str = ""  # what the grants were made for, so a restarted hub re-grants the same
    token_accessor: str = ""
    token_expires_at: float = 0.0
    # Accessors replaced by a rotation but maybe not deleted yet (deleted with the server).
    retired_accessors: list[str] = field(default_factory=list)
    registered: bool = False
    granted: list[list[str]] = field(default_factory=list)  # [destination, source] pairs
    grant_expires_at: float = 0.0
    # Why the spawner took this server down (the keeper's verdict), kept until the hub clears
    # the state: poll reports it even while a notebook whose stop failed still runs.
    mesh_failure: str = ""

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v}

    @classmethod
    def from_dict(cls, data: dict | None) -> MeshState:
        data = data or {}
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        state = cls(**known)
        state.granted = [list(pair) for pair in state.granted]
        state.retired_accessors = list(state.retired_accessors)
        return state

    def copy(self) -> MeshState:
        """An independent copy (for work that outlives this state: lingering, deferred undo)."""
        return MeshState.from_dict(self.to_dict())

    @property
    def empty(self) -> bool:
        return not (self.registered or self.token_accessor or self.granted or self.retired_accessors)

    def owns(self, owner: ownership.Owner | None) -> bool:
        """Whether a marker names this very incarnation (:func:`ownership.is_incarnation`)."""
        return ownership.is_incarnation(
            owner, hub=self.hub_instance, service=self.service_id, incarnation=self.incarnation
        )
