"""Docker's event stream, watched for the sidecars' deaths, so a dead sidecar is acted on at
once instead of at the keeper's next round (as kubespawner watches pods with a reflector).

One watcher per hub process, Docker daemon and hub instance, on a thread of its own with a
client of its own (a stream holds its connection), reconnecting after an error from where it
left off. The keeper's round stays the fallback: a missed event only costs time.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from docker.api.client import APIClient

# Deaths remembered, so a keeper that starts watching just after its sidecar died still wakes.
REMEMBERED_DEATHS = 1000
# Reconnect backoff after the stream failed (daemon restarting, connection dropped), in s.
RECONNECT_WAIT = (0.5, 30.0)


class SidecarDeaths:
    """Wakes whoever waits on a sidecar container when Docker reports its ``die`` event.

    Filtered on Docker's side by our labels (``labels``: ``key=value`` strings), so the stream
    carries only this hub's sidecars."""

    def __init__(self, client_kwargs: Callable[[], dict[str, Any]], labels: list[str], log: logging.Logger):
        self._client_kwargs = client_kwargs
        self._labels = labels
        self._log = log
        self._lock = threading.Lock()
        self._waiters: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Event]] = {}
        self._died: OrderedDict[str, float] = OrderedDict()
        self._since = time.time()  # events from now on, replayed after a reconnect
        self._thread = threading.Thread(target=self._watch, name="consulspawner-sidecar-deaths", daemon=True)
        self._thread.start()

    def wake_on_death(self, container_id: str, woken: asyncio.Event) -> None:
        """Set ``woken`` (from the running loop) when ``container_id`` dies; at once if it has."""
        loop = asyncio.get_running_loop()
        with self._lock:
            self._waiters[container_id] = (loop, woken)
            died = container_id in self._died
        if died:
            woken.set()

    def forget(self, container_id: str, death: bool = True) -> None:
        """Stop waking for ``container_id``; with ``death``, forget that it died too."""
        with self._lock:
            self._waiters.pop(container_id, None)
            if death:
                self._died.pop(container_id, None)

    def _watch(self) -> None:
        wait = RECONNECT_WAIT[0]
        while True:
            try:
                client = APIClient(**self._client_kwargs())
                try:
                    filters = {"type": "container", "event": "die", "label": self._labels}
                    for event in client.events(since=int(self._since), filters=filters, decode=True):
                        wait = RECONNECT_WAIT[0]
                        self._since = max(self._since, event.get("time", 0))
                        self._died_now(event.get("id") or (event.get("Actor") or {}).get("ID", ""))
                finally:
                    client.close()
            except Exception as e:
                self._log.warning("Watching Docker's events for dead sidecars failed (docker events): %s", e)
            time.sleep(wait)  # a stream that ended or failed: reconnect, backing off
            wait = min(wait * 2, RECONNECT_WAIT[1])

    def _died_now(self, container_id: str) -> None:
        with self._lock:
            self._died[container_id] = time.time()
            while len(self._died) > REMEMBERED_DEATHS:
                self._died.popitem(last=False)
            waiter = self._waiters.get(container_id)
        if waiter is not None:
            loop, woken = waiter
            try:
                loop.call_soon_threadsafe(woken.set)
            except RuntimeError:
                pass  # that loop is closed (a test's, or a hub shutting down)
