"""The mesh's own Docker client and the few threads its calls run on.

DockerSpawner runs every Docker call of every spawner on one shared thread; the sidecars'
calls (create, copy the token in, start, readiness probes, inspections, removal) run here
instead, so one user's sidecar never queues behind other users' notebooks, and a few servers'
sidecars proceed side by side.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import requests
from docker.api.client import APIClient
from docker.errors import APIError, DockerException

# Threads for the sidecars' Docker calls of one spawner class. Each call is short (the longest
# is a readiness probe's exec); docker-py's connection pool (10 by default) is larger.
SIDECAR_DOCKER_THREADS = 4


class DockerUnreachable(RuntimeError):
    """A Docker call that got no answer from the daemon (connection refused or dropped, a
    timeout): docker-py raises ``requests``' own errors for these, not ``APIError``."""


class DockerPool:
    """One docker-py client shared by a small pool of threads.

    The client is built on a pool thread at the first call, never on the hub's event loop:
    ``docker.APIClient(version="auto")`` asks the daemon for its API version. A construction
    the daemon refused (down, starting) is not remembered: the next call builds it again."""

    def __init__(self, client_kwargs: Callable[[], dict[str, Any]], name: str, threads: int = SIDECAR_DOCKER_THREADS):
        self._client_kwargs = client_kwargs
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix=name)
        self._lock = threading.Lock()
        self._client: APIClient | None = None

    def client(self) -> APIClient:
        """The client, built now if need be: call it on a pool thread only."""
        with self._lock:
            if self._client is None:
                self._client = APIClient(**self._client_kwargs())
            return self._client

    def call(self, method: str | Callable, *args, **kwargs) -> asyncio.Future:
        """``client.<method>(*args, **kwargs)`` on a pool thread, as an awaitable; a callable
        ``method(client, *args, **kwargs)`` runs whole on the thread (e.g. reading a streamed
        archive to its end)."""

        def run():
            try:
                if callable(method):
                    return method(self.client(), *args, **kwargs)
                return getattr(self.client(), method)(*args, **kwargs)
            except APIError:
                raise  # the daemon answered: callers tell 404 and 409 apart
            except (requests.RequestException, DockerException) as e:
                raise DockerUnreachable(f"Docker {method} failed: {type(e).__name__}: {e}") from e

        return asyncio.wrap_future(self._executor.submit(run))

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False)
        if self._client is not None:
            self._client.close()
