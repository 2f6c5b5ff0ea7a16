"""The fake agent's clock, raft-like index and blocking-query wake-ups.

Every write bumps a global raft-like index; each query reports the highest index of the tables it
reads (``table_index``), which is what blocking queries compare against - so a write to service A
does not wake a blocking query on service B, as in Consul's per-service index tracking
(``agent/consul/state/catalog.go`` ``maxIndexForService``; blocking itself:
``agent/consul/rpc.go`` ``blockingQuery``, ``agent/http.go`` ``parseWait``/``setIndex``).
"""

from __future__ import annotations

import time


class Clock:
    """The fake clock (wall clock plus ``advance()``), the index tables and the waiters."""

    # ------------------------------------------------------------------ clock / index / waiters
    def now(self) -> float:
        """The fake clock: wall clock plus everything ``advance()`` added."""
        return time.time() + self.clock_offset

    def _bump(self, *keys: str) -> int:
        self.index += 1
        for key in keys:
            self.table_index[key] = self.index
        self.notify()
        return self.index

    def idx(self, *keys: str) -> int:
        """The index a read of these tables reports (never below 1, agent/http.go setIndex)."""
        return max([self.table_index.get(k, 0) for k in keys] + [1])

    def add_waiter(self, waiter) -> None:
        with self.lock:
            self._waiters.add(waiter)

    def remove_waiter(self, waiter) -> None:
        with self.lock:
            self._waiters.discard(waiter)

    def notify(self) -> None:
        """Wake every blocked query so it re-evaluates (safe from any thread)."""
        with self.lock:
            for loop, event in list(self._waiters):
                try:
                    loop.call_soon_threadsafe(event.set)
                except RuntimeError:  # loop already closed
                    self._waiters.discard((loop, event))
