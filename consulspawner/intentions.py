"""Grant and revoke intentions for our services, one ``service-intentions`` entry at a time.

All sources for one destination live in one config entry (docs: config-entries/service-intentions),
so every grant or revoke is a read-modify-write of that entry, made safe with ``?cas=<ModifyIndex>``
(``cas=0``: create only) and retried when someone else wrote first. The legacy
``/v1/connect/intentions/exact`` endpoint replaces a single source without CAS, but cannot store
``Meta`` and cannot express L7 ``Permissions`` on older servers, so we do not use it.

Coalescing: a hub starting or culling many servers at once would otherwise write the same entry
N times, each write invalidating the others' CAS index. Changes for one destination are queued
and one flusher applies everything queued so far in a single write; whatever arrives during that
write goes into the next one. N simultaneous changes cost a handful of writes, and none is lost:
every caller's future resolves only after a write containing its change has landed.

Ownership: a source is ours only if its ``Description`` carries our marker (see ``ownership``)
for this hub. Sources written by anyone else pass through every write untouched, and a grant
never replaces a foreign source of the same name.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from . import ownership
from .consul import ConsulClient, ConsulError

log = logging.getLogger(__name__)

KIND = "service-intentions"
L4 = "L4"
L7 = "L7"
TRINO_USER_HEADER = "X-Trino-User"
# Fields Consul adds on read that must not be sent back as if they were ours to set.
_RAFT_FIELDS = ("CreateIndex", "ModifyIndex", "Hash")


class IntentionConflict(Exception):
    """A change would touch a source that is not ours (or not this hub's)."""


def source_entry(source: str, owner: ownership.Owner, mode: str = L4, trino_user: str | None = None) -> dict:
    """The ``Sources[]`` item that grants ``source`` access, carrying the ownership marker.

    L4: ``Action: allow`` for the whole connection. L7: allow only HTTP requests whose
    ``X-Trino-User`` header is exactly this user's Trino user, then deny everything else
    explicitly (Consul takes the first matching permission), so the outcome does not depend on
    the cluster's default intention policy. L7 needs the destination's protocol to be http.
    """
    entry: dict = {"Name": source, "Description": owner.describe()}
    if mode == L4:
        entry["Action"] = "allow"
    elif mode == L7:
        if not trino_user:
            raise ValueError("L7 intentions need the Trino user this source may act as")
        entry["Permissions"] = [
            {"Action": "allow", "HTTP": {"Header": [{"Name": TRINO_USER_HEADER, "Exact": trino_user}]}},
            {"Action": "deny", "HTTP": {"PathPrefix": "/"}},
        ]
    else:
        raise ValueError(f"intention mode must be {L4!r} or {L7!r}, not {mode!r}")
    return entry


@dataclass
class _Change:
    source: str
    entry: dict | None  # None: revoke
    future: asyncio.Future
    only_if: Callable[[dict], bool] | None = None  # revoke only while this holds for the source


@dataclass
class _Queue:
    changes: list[_Change] = field(default_factory=list)
    flusher: asyncio.Task | None = None


class IntentionWriter:
    """Coalescing, CAS-safe writer of our sources in ``service-intentions`` entries.

    One writer per hub (the spawners share it); all methods must run on the hub's event loop.
    ``writes`` counts config writes and deletes that went out, for tests and benchmarks.
    """

    def __init__(self, consul: ConsulClient, hub_instance: str, *, max_attempts: int = 30,
                 retry_budget: float = 15.0, logger: logging.Logger | None = None):
        self.log = logger or log
        self.retry_budget = retry_budget
        self.consul = consul
        self.hub_instance = hub_instance
        self.max_attempts = max_attempts
        self.writes = 0
        self.conflicts = 0
        self._queues: dict[str, _Queue] = {}

    def owns(self, source: dict) -> bool:
        owner = ownership.parse(source.get("Description"))
        return owner is not None and owner.hub == self.hub_instance

    async def grant(self, destination: str, entry: dict) -> None:
        """Add or replace our source ``entry["Name"]`` on ``destination``."""
        if not ownership.parse(entry.get("Description")):
            raise ValueError("a granted source must carry an ownership marker in its Description")
        await self._submit(destination, entry["Name"], entry)

    async def revoke(self, destination: str, source: str, only_if: Callable[[dict], bool] | None = None) -> None:
        """Remove our source ``source`` from ``destination``; nothing to do if it is gone.

        ``only_if`` is checked against the source as read in the same CAS cycle that deletes
        it, so a janitor never removes a grant the hub extended after the janitor looked.
        """
        await self._submit(destination, source, None, only_if)

    async def _submit(self, destination: str, source: str, entry: dict | None, only_if=None) -> None:
        future = asyncio.get_running_loop().create_future()
        queue = self._queues.setdefault(destination, _Queue())
        queue.changes.append(_Change(source, entry, future, only_if))
        if queue.flusher is None or queue.flusher.done():
            queue.flusher = asyncio.create_task(self._flush(destination, queue))
        await future

    async def _flush(self, destination: str, queue: _Queue) -> None:
        # Let every change submitted in this loop iteration join the first batch.
        await asyncio.sleep(0)
        while queue.changes:
            batch, queue.changes = queue.changes, []
            try:
                refused = await self._write(destination, batch)
            except Exception as e:
                for change in batch:
                    if not change.future.done():
                        change.future.set_exception(e)
                continue
            for change in batch:
                if change.future.done():
                    continue
                if change.source in refused:
                    change.future.set_exception(refused[change.source])
                else:
                    change.future.set_result(None)

    async def _write(self, destination: str, batch: list[_Change]) -> dict[str, Exception]:
        """Apply a batch in one CAS write, re-reading on conflict. Returns refused changes."""
        # Later changes to the same source win: a grant then a revoke in one batch is a revoke.
        wanted: dict[str, dict | None] = {}
        conditions: dict[str, Callable[[dict], bool] | None] = {}
        for change in batch:
            wanted[change.source] = change.entry
            conditions[change.source] = change.only_if
        for attempt in range(1, self.max_attempts + 1):
            current = await self.consul.retrying(lambda: self.consul.get_config(KIND, destination),
                                                 budget=self.retry_budget)
            sources = list((current or {}).get("Sources") or [])
            refused: dict[str, Exception] = {}
            by_name = {s.get("Name"): i for i, s in enumerate(sources)}
            changed: set[str] = set()
            for name, entry in wanted.items():
                index = by_name.get(name)
                existing = sources[index] if index is not None else None
                if existing is not None and not self.owns(existing):
                    refused[name] = IntentionConflict(
                        f"source {name!r} on {destination!r} was not written by this hub; left untouched"
                    )
                    continue
                if entry is None:
                    condition = conditions[name]
                    if existing is not None and (condition is None or condition(existing)):
                        sources[index] = None
                        changed.add(name)
                elif existing is None:
                    sources.append(entry)
                    changed.add(name)
                elif {k: existing.get(k) for k in entry} != entry:
                    # Compare only what we set: Consul adds Precedence, Type... on read.
                    sources[index] = entry
                    changed.add(name)
            if not changed:
                return refused
            kept = [s for s in sources if s is not None]
            if current is None:
                ok = await self._create(destination, kept)
            elif kept:
                body = {k: v for k, v in current.items() if k not in _RAFT_FIELDS}
                body["Sources"] = kept
                self.writes += 1
                ok = await self.consul.set_config(body, cas=current["ModifyIndex"])
            else:
                # Our revoke emptied the entry and nobody else has a source there: delete it,
                # with cas so a source someone adds meanwhile is never deleted with it.
                self.writes += 1
                ok = await self.consul.delete_config(KIND, destination, cas=current["ModifyIndex"])
            if ok:
                self._log_changes(destination, {name: wanted[name] for name in changed})
                return refused
            self.conflicts += 1
            self.log.debug("CAS conflict on %s %s (attempt %d), re-reading", KIND, destination, attempt)
            await asyncio.sleep(random.uniform(0, min(0.05 * attempt, 0.5)))
        raise ConsulError(
            f"PUT /v1/config ({KIND} {destination})", 409,
            f"gave up after {self.max_attempts} CAS conflicts",
        )

    async def _create(self, destination: str, sources: list[dict]) -> bool:
        self.writes += 1
        entry = {"Kind": KIND, "Name": destination, "Sources": sources}
        return await self.consul.set_config(entry, cas=0)

    def _log_changes(self, destination: str, changes: dict[str, dict | None]) -> None:
        for name, entry in changes.items():
            if entry is None:
                self.log.info("Revoked intention %s -> %s", name, destination)
            else:
                owner = ownership.parse(entry["Description"])
                self.log.info("Granted intention %s -> %s for hub user %r", name, destination, owner.user)
