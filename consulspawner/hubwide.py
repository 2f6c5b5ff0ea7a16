"""What one hub process shares between all its spawners: Consul clients and intention writers,
their closing at hub shutdown, background tasks kept alive, and once-per-process checks.

Everything here is keyed so two hubs (or two event loops, as in tests) in one process never
share a client: aiohttp sessions are bound to the loop that made them.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from .consul import ConsulClient
from .identity import Signer, SigningKeyError
from .intentions import IntentionWriter

if TYPE_CHECKING:
    from .dockerevents import SidecarDeaths
    from .dockerpool import DockerPool

# One Consul client and one intention writer per hub process and Consul identity, so every
# spawner's intention changes are coalesced together.
_shared_clients: dict[tuple, tuple[ConsulClient, IntentionWriter]] = {}
# One task per shared client that closes it when the hub shuts down (JupyterHub cancels every
# task of its loop then: shutdown_cancel_tasks).
_client_closers: set[asyncio.Task] = set()
# Background teardowns still retrying; kept referenced so they are not garbage collected.
_pending_teardowns: set[asyncio.Task] = set()
# (Consul address, hub instance) whose hub token passed check_hub_token in this process.
_hub_token_ok: set[tuple[str, str]] = set()
# (Consul address, destination) whose protocol was found http-like, for L7 intentions.
_l7_ready: set[tuple[str, str]] = set()
# One orphan sweep per hub process and hub instance (keyed with the loop, as the clients).
_orphan_sweeps: dict[tuple, asyncio.Task] = {}
# One Docker client (built on a thread of its pool) and a few threads per spawner class, for
# the sidecars.
_sidecar_dockers: dict[type, DockerPool] = {}
# Per spawner class, the threads on which readiness commands wait in their sidecars.
_sidecar_ready_waits: dict[type, DockerPool] = {}
# One watcher of Docker's events for dead sidecars per spawner class (daemon) and hub instance.
_sidecar_deaths: dict[tuple, SidecarDeaths] = {}


# The hub's JWT signing keys by file path, read once (off the event loop) per process.
_signers: dict[str, Signer] = {}


async def signer_for(key_file: str) -> Signer:
    """The signing key in ``key_file``, read on a thread the first time it is needed."""
    if not key_file:
        raise SigningKeyError(
            "no JWT signing key: set c.ConsulSpawner.jwt_signing_key_file (or $CONSULSPAWNER_JWT_KEY_FILE) "
            "to the hub's 0600 key file; README, security model"
        )
    if key_file not in _signers:
        _signers[key_file] = await asyncio.to_thread(Signer.from_file, key_file)
    return _signers[key_file]


def consul_and_writer(
    key: tuple, make_client, hub_instance: str, retry_budget: float, logger: logging.Logger
) -> tuple[ConsulClient, IntentionWriter]:
    """The shared client and writer for ``key`` (which must identify the Consul identity and
    settings), made with ``make_client()`` on first use on the running loop."""
    loop = asyncio.get_running_loop()
    key = (*key, id(loop))
    if key not in _shared_clients:
        client = make_client()
        writer = IntentionWriter(client, hub_instance, retry_budget=retry_budget, logger=logger)
        _shared_clients[key] = (client, writer)
        _client_closers.add(loop.create_task(_close_on_shutdown(client)))
    return _shared_clients[key]


def keep_referenced(task: asyncio.Task) -> None:
    """Hold a background teardown task until it ends (the loop keeps only weak references)."""
    _pending_teardowns.add(task)
    task.add_done_callback(_pending_teardowns.discard)


async def _close_on_shutdown(client: ConsulClient) -> None:
    try:
        await asyncio.get_running_loop().create_future()  # until the hub cancels its tasks
    finally:
        await client.close()
