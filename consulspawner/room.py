"""What the rooms of ConsulSpawner (the mixins in sidecar, keeper, teardown, orphans) may use of
the spawner they are mixed into: DockerSpawner and the per-server attributes below.

For the type checker each room is such a spawner; at run time a room is a plain mixin that
:class:`~consulspawner.spawner.ConsulSpawner` combines with DockerSpawner.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dockerspawner import DockerSpawner

    from .plan import MeshPlan
    from .state import MeshState

    class Room(DockerSpawner):
        mesh_state: MeshState
        sidecar_container_id: str
        _plan: MeshPlan | None
        _keeper: asyncio.Task | None
        _unfinished_teardown: asyncio.Future | None
        _early_sidecar: asyncio.Future | None
        _last_probe_output: str
        _restart_marks: list[tuple[float, int]]
        _sidecar_boosted: bool
        _boost_failure_told: bool
        keeper_rounds: int

        def _service_name(self) -> str: ...
        async def _remove_leftovers(self) -> None: ...
        async def _logout_leftover_token(self) -> None: ...
        async def _settle_early_sidecar(self) -> None: ...

else:
    Room = object
