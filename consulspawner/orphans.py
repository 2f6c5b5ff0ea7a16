"""Orphans: what this hub owns in Consul but no server of its own holds. One definition
(:func:`is_orphan`), used by the hub's sweep at start (here) and by the janitor's survey.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeGuard

from . import naming, ownership
from .consul import ConsulClient
from .entries import KIND
from .hubwide import _orphan_sweeps
from .intentions import IntentionWriter
from .room import Room

log = logging.getLogger(__name__)


def is_orphan(
    owner: ownership.Owner | None, alive: Mapping[str, str | None], hub: str | None
) -> TypeGuard[ownership.Owner]:
    """Whether an object marked ``owner`` is an orphan of hub ``hub`` (None: of any hub).

    ``alive`` maps the service names that still have a server to that server's incarnation, or
    to None when it is not known (then every object of that service is kept). An object of an
    alive service but of another incarnation is an orphan too (left by an earlier start)."""
    if owner is None or (hub is not None and owner.hub != hub):
        return False
    if owner.service not in alive:
        return True
    current = alive[owner.service]
    return current is not None and owner.incarnation != current


@dataclass(frozen=True)
class Orphan:
    """One object the sweep removed: what it was and which incarnation created it."""

    kind: str
    target: str
    user: str
    service: str
    incarnation: str

    def line(self) -> str:
        return f"{self.kind} {self.target} (user {self.user!r}, incarnation {self.incarnation[:8] or '-'})"


async def sweep_orphans(
    consul: ConsulClient,
    writer: IntentionWriter,
    hub_instance: str,
    live: Callable[[], dict[str, str | None]],
    logger: logging.Logger | logging.LoggerAdapter | None = None,
    *,
    only_service: str | None = None,
) -> list[Orphan]:
    """Revoke everything this hub owns in Consul that belongs to no live incarnation.

    ``live()`` maps the service names of the hub's running and pending servers to their current
    incarnation (see :func:`is_orphan`). It is asked again right before each deletion, so a
    server spawned meanwhile is left alone. Intentions go first. Returns what was removed.
    ``only_service``: only that service name's objects (a stop that has no state for its server).
    """
    services = await consul.agent_services()
    entries = await consul.list_config(KIND)

    def orphaned(owner: ownership.Owner | None) -> TypeGuard[ownership.Owner]:
        return is_orphan(owner, live(), hub_instance) and (only_service is None or owner.service == only_service)

    removed: list[Orphan] = []

    for entry in entries:
        for source in entry.get("Sources") or []:
            owner = ownership.parse(source.get("Description"))
            if orphaned(owner):
                seen = source.get("Description")

                def unchanged(current: dict, owner: ownership.Owner = owner, seen: str | None = seen) -> bool:
                    # Only the source as we read it: a re-grant changes the Description (expiry).
                    return current.get("Description") == seen and ownership.is_incarnation(
                        ownership.parse(current.get("Description")),
                        hub=owner.hub,
                        service=owner.service,
                        incarnation=owner.incarnation,
                    )

                if not await writer.revoke(entry["Name"], source["Name"], only_if=unchanged):
                    continue  # it changed since the read (re-granted, or a newer start's): kept
                removed.append(
                    Orphan(
                        "intention",
                        f"{source['Name']} -> {entry['Name']}",
                        owner.user,
                        owner.service,
                        owner.incarnation,
                    )
                )
    for service_id, service in services.items():
        if service.get("Kind") == "connect-proxy":
            continue
        service_owner = ownership.service_owner(service_id, service)
        if orphaned(service_owner):
            await consul.deregister_service(service_id)
            removed.append(
                Orphan("service", service_id, service_owner.user, service_owner.service, service_owner.incarnation)
            )
    for orphan in removed:
        (logger or log).info("Removed orphaned %s of hub %s", orphan.line(), hub_instance)
    return removed


class OrphanSweep(Room):
    """The hub's sweep of orphans, once per hub process, some time after the hub starts; and a
    stop's search for what a server without state left."""

    async def _remove_leftovers(self) -> None:
        """What this server left in Consul and Docker without state to say so (a hub killed
        mid-spawn): this hub's objects under this server's service name, of any incarnation,
        and its sidecar, found by its stable name and proven ours by its labels. Run by a stop
        under the server's lock, so no start of this server is under way."""
        client, writer = self._client_and_writer()
        removed = await sweep_orphans(
            client, writer, self.hub_instance, dict, self.log, only_service=self._service_name()
        )
        if removed:
            self.log.warning(
                "Removed what an earlier start of %s left: %s", self._log_name, ", ".join(o.line() for o in removed)
            )
        await self._remove_sidecar()

    def _schedule_orphan_sweep(self) -> None:
        """Start, once per hub process, the sweep of objects this hub owns but no server holds."""
        users = getattr(self.user, "settings", {}).get("users") if self.orphan_sweep_delay > 0 else None
        if users is None:
            return  # not inside a hub (tests, tools), or disabled
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return  # built outside the hub's loop: the first start schedules it
        client, writer = self._client_and_writer()
        key = (self.hub_instance, id(asyncio.get_running_loop()))
        if key in _orphan_sweeps:
            return

        def live_incarnations() -> dict[str, str | None]:
            alive: dict[str, str | None] = {}
            for user in list(users.values()):
                for spawner in list(user.spawners.values()):
                    if not isinstance(spawner, OrphanSweep):
                        continue
                    if spawner.mesh_state.service_name:
                        alive[spawner.mesh_state.service_name] = spawner.mesh_state.incarnation or None
                    if spawner.pending or spawner.active:
                        # Mid-start its incarnation may not be recorded yet: keep all of its objects.
                        name = naming.service_name(user.name, spawner.name or "", spawner.service_name_template)
                        if spawner.pending or name not in alive:
                            alive[name] = None
            return alive

        async def sweep():
            await asyncio.sleep(self.orphan_sweep_delay)
            try:
                removed = await sweep_orphans(client, writer, self.hub_instance, live_incarnations, self.log)
                await self._remove_orphan_sidecars({(o.service, o.incarnation) for o in removed})
            except Exception as e:
                self.log.warning("Orphan sweep of hub %s failed; the janitor remains: %s", self.hub_instance, e)

        _orphan_sweeps[key] = asyncio.get_running_loop().create_task(sweep())
