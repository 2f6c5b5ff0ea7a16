"""Grant and revoke intentions for our services, one ``service-intentions`` entry at a time.

The I/O half of intentions: the source entries themselves (built, validated, read back) are
the pure ``entries`` module's.

All sources for one destination live in one config entry (docs: config-entries/service-intentions),
so every grant or revoke is a read-modify-write of that entry, made safe with ``?cas=<ModifyIndex>``
(``cas=0``: create only) and retried when someone else wrote first. The legacy
``/v1/connect/intentions/exact`` endpoint replaces a single source without CAS, but cannot store
``Meta`` and cannot express L7 ``Permissions`` on older servers, so we do not use it.

Coalescing: a hub starting or culling many servers at once would otherwise write the same entry
N times, each write invalidating the others' CAS index. Changes for one destination are queued
and one flusher applies everything queued so far in a single write; whatever arrives during that
write goes into the next one. N simultaneous changes cost a handful of writes, and none is lost:
every caller's future resolves only after a write containing its change has landed. Within a
batch the changes apply in the order they were submitted, each to what the earlier ones left,
so a batch means exactly what the same changes one write at a time would: a late conditional
revoke of an old start never removes a grant a newer start made just before it.

Ownership: a source is ours only if its ``Description`` carries our marker for this hub
(``entries.owned_by``). Sources written by anyone else pass through every write untouched, and a grant
never replaces a foreign source of the same name.

Isolation: one caller's bad change must not fail the others coalesced with it. Each grant is
checked against Consul's own validation (``entries.validate_source``) before it joins a batch, and
a batch Consul still refuses as invalid is split in halves, recursively, so only the offending
change fails.

What the writer remembers: Consul's ``PUT /v1/config`` answers only ``true``/``false``, with no
index (hashicorp/consul agent/config_endpoint.go, ``ConfigApply``), so after its own write the
writer cannot know the entry's new ModifyIndex and must read before the next write. After its
own successful *delete* it does know the state: the entry is absent, so the next grant creates
it with ``cas=0`` without reading (a wrong guess only costs a refused CAS and a read). Likewise
an entry a spawn's up-front check has just read (``remember``) stands in for the read once.

One Trino user, one hub user: an L7 grant whose Trino user another hub user's live source holds
is refused in the CAS cycle that would write it (``entries.TrinoUserTaken``), so two spawns that
passed the up-front check side by side cannot both be granted.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from . import metrics
from .consul import ConsulClient, ConsulError
from .entries import (
    KIND,
    TrinoUserTaken,
    bound_trino_user,
    holder_of,
    owned_by,
    source_owner,
    taken_message,
    validate_source,
)

log = logging.getLogger(__name__)

# Fields Consul adds on read that must not be sent back as if they were ours to set.
_RAFT_FIELDS = ("CreateIndex", "ModifyIndex", "Hash")
# Consul answers a config write it finds invalid with 400 (decoding) or 500 (validation errors
# come back through the RPC layer as 500). Those concern some change in the batch, so the batch
# is split; 401/403 (ACL), 429 and 502..504 or no answer concern every change alike.
_SPLIT_STATUSES = frozenset({400, 413, 422, 500})
# How long an entry offered by remember() may stand in for a read (s): a spawn's check and its
# grant are seconds apart; an older view would more likely cost a refused write than save a read.
REMEMBERED_FOR = 60.0


class IntentionConflict(Exception):
    """A change would touch a source that is not ours (or not this hub's)."""


class _WriteRefused(Exception):
    """Consul refused the config write itself (not the read before it)."""

    def __init__(self, error: ConsulError):
        super().__init__(str(error))
        self.error = error


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

    def __init__(
        self,
        consul: ConsulClient,
        hub_instance: str,
        *,
        max_attempts: int = 30,
        retry_budget: float = 15.0,
        logger: logging.Logger | None = None,
    ):
        self.log = logger or log
        self.retry_budget = retry_budget
        self.consul = consul
        self.hub_instance = hub_instance
        self.max_attempts = max_attempts
        self.writes = 0
        self.conflicts = 0
        self.splits = 0  # refused batches split to isolate the change Consul refused
        self._queues: dict[str, _Queue] = {}
        # Entries known moments ago (None: absent, as after this writer's own delete; or read by
        # a spawn's up-front check): the next write of that destination starts from one instead
        # of reading, if it is recent enough. A wrong view only costs a refused CAS and a read.
        self._remembered: dict[str, tuple[float, dict | None]] = {}

    def remember(self, destination: str, entry: dict | None) -> None:
        """Offer an entry just read (None: absent) as the view the next write of
        ``destination`` starts from. Harmless if stale: its CAS index no longer matches, the
        write is refused and the writer reads, as after any conflict. Kept as given, not copied
        (an entry can be megabytes): the writer never changes an entry it read, and callers hand
        over one they are done with."""
        self._remembered[destination] = (time.monotonic(), entry)

    def _recalled(self, destination: str) -> tuple[bool, dict | None]:
        """(True, entry) for a view to start from without reading, used once; (False, None)."""
        at, entry = self._remembered.pop(destination, (0.0, None))
        if time.monotonic() - at <= REMEMBERED_FOR:
            return True, entry
        return False, None

    def owns(self, source: dict) -> bool:
        return owned_by(source, self.hub_instance)

    async def grant(self, destination: str, entry: dict) -> None:
        """Add or replace our source ``entry["Name"]`` on ``destination``.

        Raises ``entries.IntentionRefused`` (a ValueError) at once, before any Consul call, for an
        entry Consul would refuse; a ConsulError if Consul refuses it anyway; and
        :class:`IntentionConflict` if a source of that name is not this hub's. Other changes
        coalesced with this one are unaffected by any of these.
        """
        validate_source(entry)
        await self._submit(destination, entry["Name"], dict(entry))

    async def revoke(
        self,
        destination: str,
        source: str,
        only_if: Callable[[dict], bool] | None = None,
        *,
        incarnation: str | None = None,
    ) -> bool:
        """Remove our source ``source`` from ``destination``; nothing to do if it is gone.

        Returns True once the source is gone (removed, or absent already), False when it is
        still there because ``only_if`` no longer held: then it was not this caller's to remove.
        ``only_if`` is checked against the source as it stands at this change's turn: read in
        the same CAS cycle that deletes it, after every change submitted before this one, so a
        janitor never removes a grant the hub extended after the janitor looked, and a late
        teardown never removes the grant a newer start made in the same batch.
        ``incarnation``: remove the source only while its marker names this incarnation (one
        start of the server), so a late teardown of an old start spares a newer one's grant.
        Both conditions must hold when both are given.
        """
        if not isinstance(source, str) or not source:
            raise ValueError(f"cannot revoke intention source {source!r}")
        condition = only_if
        if incarnation is not None:
            if not incarnation:
                raise ValueError("revoke(incarnation=...) needs a non-empty incarnation")

            def condition(existing: dict, only_if=only_if) -> bool:
                owner = source_owner(existing)
                return (
                    owner is not None
                    and owner.incarnation == incarnation
                    and (only_if is None or bool(only_if(existing)))
                )

        return bool(await self._submit(destination, source, None, condition))

    async def _submit(self, destination: str, source: str, entry: dict | None, only_if=None) -> bool | None:
        future = asyncio.get_running_loop().create_future()
        queue = self._queues.setdefault(destination, _Queue())
        queue.changes.append(_Change(source, entry, future, only_if))
        if queue.flusher is None or queue.flusher.done():
            queue.flusher = asyncio.create_task(self._flush(destination, queue))
        return await future

    async def _flush(self, destination: str, queue: _Queue) -> None:
        # Let every change submitted in this loop iteration join the first batch.
        await asyncio.sleep(0)
        while queue.changes:
            batch, queue.changes = queue.changes, []
            await self._apply(destination, batch)

    async def _apply(self, destination: str, batch: list[_Change]) -> None:
        """Write ``batch`` and settle every caller's future; split the batch if Consul refuses it."""
        try:
            outcomes = await self._write(destination, batch)
        except _WriteRefused as refusal:
            error = refusal.error
            if len(batch) > 1 and error.status in _SPLIT_STATUSES:
                # Halves in order, so a later change to one source still lands after an earlier one.
                self.splits += 1
                self.log.warning(
                    "Consul refused a write of %d changes to %s %s (%s); splitting it to find the refused change",
                    len(batch),
                    KIND,
                    destination,
                    error,
                )
                middle = len(batch) // 2
                await self._apply(destination, batch[:middle])
                await self._apply(destination, batch[middle:])
                return
            if len(batch) == 1:
                self.log.warning("Consul refused intention %s -> %s: %s", batch[0].source, destination, error)
            self._fail(batch, error)
            return
        except Exception as e:
            self._fail(batch, e)
            return
        for change, outcome in zip(batch, outcomes, strict=True):
            if change.future.done():
                continue
            if isinstance(outcome, Exception):
                change.future.set_exception(outcome)
            else:
                change.future.set_result(outcome)

    @staticmethod
    def _fail(batch: list[_Change], error: BaseException) -> None:
        for change in batch:
            if not change.future.done():
                change.future.set_exception(error)

    async def _write(self, destination: str, batch: list[_Change]) -> list[bool | Exception | None]:
        """Apply a batch in one CAS write, re-reading on conflict.

        The changes apply in the order they were submitted, each to what the earlier ones left
        (a grant then a revoke is a revoke; a conditional revoke sees a grant made before it in
        the same batch). Returns each change's outcome, in batch order: None for a grant that
        holds, True for a revoke that left the source gone, False for a revoke whose condition
        no longer held, or the exception that refused the change.
        """
        for attempt in range(1, self.max_attempts + 1):
            # Believed absent (we deleted it last) or just read by someone else: no read first.
            assumed, current = self._recalled(destination)
            if not assumed:
                current = await self.consul.retrying(
                    lambda: self.consul.get_config(KIND, destination), budget=self.retry_budget
                )
            before = list((current or {}).get("Sources") or [])
            sources: list[dict | None] = list(before)
            by_name = {s.get("Name"): i for i, s in enumerate(before)}
            outcomes: list[bool | Exception | None] = []
            applied: list[_Change] = []
            for change in batch:
                name = change.source
                index = by_name.get(name)
                existing = sources[index] if index is not None else None
                if existing is not None and not self.owns(existing):
                    outcomes.append(
                        IntentionConflict(
                            f"source {name!r} on {destination!r} was not written by this hub; left untouched"
                        )
                    )
                elif change.entry is None:
                    if index is None or existing is None:
                        outcomes.append(True)  # gone already
                        continue
                    try:
                        due = change.only_if is None or bool(change.only_if(existing))
                    except Exception as e:  # a caller's broken condition fails that caller only
                        outcomes.append(e)
                        continue
                    if due:
                        sources[index] = None
                        del by_name[name]
                        applied.append(change)
                    # False: not ours to remove any more (a newer grant, perhaps earlier in this
                    # very batch); its caller hears so rather than a success.
                    outcomes.append(due)
                elif (taken := self._trino_user_taken(change.entry, sources)) is not None:
                    outcomes.append(taken)
                elif index is None:
                    by_name[name] = len(sources)
                    sources.append(change.entry)
                    applied.append(change)
                    outcomes.append(None)
                else:
                    # Compare only what we set: Consul adds Precedence, Type... on read.
                    if {k: (existing or {}).get(k) for k in change.entry} != change.entry:
                        sources[index] = change.entry
                        applied.append(change)
                    outcomes.append(None)
            kept = [s for s in sources if s is not None]
            if kept == before:
                if assumed:
                    continue  # "nothing to do" judged on a remembered view: confirm with a read
                return outcomes
            try:
                if current is None:
                    ok = await self._create(destination, kept)
                elif kept:
                    body = {k: v for k, v in current.items() if k not in _RAFT_FIELDS}
                    body["Sources"] = kept
                    self.writes += 1
                    metrics.INTENTION_WRITES.inc()
                    ok = await self.consul.set_config(body, cas=current["ModifyIndex"])
                    if ok:
                        metrics.observe_entry(destination, body)
                else:
                    # Our revoke emptied the entry and nobody else has a source there: delete it,
                    # with cas so a source someone adds meanwhile is never deleted with it.
                    self.writes += 1
                    metrics.INTENTION_WRITES.inc()
                    ok = await self.consul.delete_config(KIND, destination, cas=current["ModifyIndex"])
                    if ok:
                        metrics.observe_entry(destination, None)
                        self.remember(destination, None)
            except ConsulError as e:
                if e.status is None:
                    raise  # no answer: the write may or may not have landed; nothing to split
                raise _WriteRefused(e) from e
            if ok:
                self._log_changes(destination, applied)
                return outcomes
            self.conflicts += 1
            metrics.CAS_CONFLICTS.inc()
            self.log.debug("CAS conflict on %s %s (attempt %d), re-reading", KIND, destination, attempt)
            await asyncio.sleep(random.uniform(0, min(0.05 * attempt, 0.5)))
        raise ConsulError(
            f"PUT /v1/config ({KIND} {destination})",
            409,
            f"gave up after {self.max_attempts} CAS conflicts",
        )

    @staticmethod
    def _trino_user_taken(entry: dict, sources: list[dict | None]) -> TrinoUserTaken | None:
        """Refuse an L7 grant whose Trino user another hub user's live source holds in the
        entry as this write would leave it (earlier changes of the batch included): checked in
        the CAS cycle, so two spawns that passed the up-front check side by side cannot both
        land."""
        trino_user, owner = bound_trino_user(entry), source_owner(entry)
        if trino_user is None or owner is None:
            return None
        others = {"Sources": [s for s in sources if s is not None and s.get("Name") != entry.get("Name")]}
        holder = holder_of(others, trino_user, owner.user, time.time())
        return None if holder is None else TrinoUserTaken(taken_message(trino_user, holder))

    async def _create(self, destination: str, sources: list[dict]) -> bool:
        self.writes += 1
        metrics.INTENTION_WRITES.inc()
        entry = {"Kind": KIND, "Name": destination, "Sources": sources}
        ok = await self.consul.set_config(entry, cas=0)
        if ok:
            metrics.observe_entry(destination, entry)
        return ok

    def _log_changes(self, destination: str, changes: list[_Change]) -> None:
        for change in changes:
            if change.entry is None:
                self.log.info("Revoked intention %s -> %s", change.source, destination)
            else:
                owner = source_owner(change.entry)
                user = owner.user if owner else "?"
                self.log.info("Granted intention %s -> %s for hub user %r", change.source, destination, user)
