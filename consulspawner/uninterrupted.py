"""Stretches of work that a cancellation (a stop, JupyterHub's shutdown, start_timeout) must
not cut in the middle, because what they create would then be recorded nowhere."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any


async def awaited_to_its_answer(call: asyncio.Future, record: Callable[[Any], None] | None = None) -> Any:
    """Await ``call`` (a future or task that creates something) to its end even when the
    awaiting task is cancelled meanwhile; ``record`` is handed a successful result before the
    cancellation is raised on.

    A Docker call runs on a thread, which no cancellation stops: without this, a stop that
    cancels a spawn or a keeper round mid-create would tear the server down before Docker
    answered, and the container would land afterwards, recorded nowhere, and stay. Likewise a
    token exists once its login is answered, and its secret only in this process until it is
    in the sidecar. Only short stretches go through here (docker-py's and Consul's own
    timeouts bound them)."""
    cancelled = False
    while not call.done():
        try:
            await asyncio.shield(call)
        except asyncio.CancelledError:
            cancelled = True  # (the call itself is shielded: it goes on)
        except Exception:
            break  # told below
    if record is not None and not call.cancelled() and call.exception() is None:
        record(call.result())
    if cancelled:
        raise asyncio.CancelledError
    return call.result()
