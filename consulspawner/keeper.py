"""The keeper: the one place that refreshes, rotates and reconciles a running server.

Every ``keeper_interval`` (jittered), under the server's lock, it passes the TTL check,
restores a registration Consul lost, extends the intentions at half-life, rotates the token
when due, and takes the server down when its sidecar stays dead. A mixin of ConsulSpawner.
"""

from __future__ import annotations

import asyncio
import random

from docker.errors import APIError
from sqlalchemy.orm import object_session

from .consul import ConsulError
from .intentions import IntentionConflict
from .mesh import ServerMesh, SidecarNotReady
from .room import Room

# Keeper rounds in a row refused by Consul (not merely unanswered) before the server is taken down.
KEEPER_REFUSALS_LIMIT = 3


def _lasting(error: Exception) -> bool:
    """Whether a keeper round's error will not go away by itself: Consul answered with a
    refusal (4xx), or an intention source is not ours to write."""
    if isinstance(error, ConsulError):
        # (429 is Consul's rate limit: it passes.)
        return error.status is not None and 400 <= error.status < 500 and error.status != 429
    return isinstance(error, IntentionConflict)


class Keeper(Room):
    """A running server's background upkeep (see the module docstring)."""

    async def keep_now(self) -> None:
        """Run one keeper round now, under the server's lock (what the keeper does every
        ``keeper_interval``): heartbeat, restore, extend, rotate when due, supervise."""
        async with self._lock():
            await self._keep(reconcile=False)

    async def forget(self) -> None:
        """Stop this server's keeper and touch nothing else: what a hub process leaves when it
        exits with the server running (``cleanup_servers = False``)."""
        await self._stop_keeper()

    def _start_keeper(self, reconcile: bool = False) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop yet (load_state from a tool): the first poll starts it
        if self._keeper is None or self._keeper.done():
            self._keeper = loop.create_task(self._keeper_loop(reconcile))

    async def _stop_keeper(self) -> None:
        """Cancel the keeper, and let a teardown that a cancelled keeper round or spawn had
        begun finish before anything else touches this server."""
        keeper, self._keeper = self._keeper, None
        if keeper is not None and keeper is not asyncio.current_task():
            keeper.cancel()
            try:
                await keeper
            except (asyncio.CancelledError, Exception):
                pass
        unfinished, self._unfinished_teardown = self._unfinished_teardown, None
        if unfinished is not None:
            try:
                await unfinished
            except Exception as e:
                self.log.warning("An interrupted teardown of %s failed: %s", self._log_name, e)

    async def _keeper_loop(self, reconcile: bool) -> None:
        """The one place that heartbeats, extends, rotates, restores and supervises a running
        server, every ``keeper_interval`` (jittered), under the server's lock."""
        if not reconcile:
            await asyncio.sleep(self._keeper_pause())
        refused = 0  # rounds in a row that Consul answered with a refusal
        while True:
            async with self._lock():
                if self.mesh_state.empty:
                    return
                try:
                    if await self._keep(reconcile):
                        reconcile = False
                    self.keeper_rounds += 1
                    refused = 0
                except asyncio.CancelledError:
                    raise
                except Exception as e:
                    # Consul unreachable or slow is not the server's death: the check TTL and
                    # intention expiry leave room for the next round. A refusal that lasts
                    # (a 403 after a policy change, a conflicting intention) is: the server is
                    # no longer kept, so it is taken down and poll says why.
                    self.log.warning("Could not refresh %s in the mesh: %s", self._log_name, e)
                    refused = refused + 1 if _lasting(e) else 0
                    if refused >= KEEPER_REFUSALS_LIMIT:
                        await self._fail_server(f"the keeper was refused {refused} rounds in a row: {e}")
                if self.mesh_state.mesh_failure:
                    return
            await asyncio.sleep(self._keeper_pause())

    def _keeper_pause(self) -> float:
        return random.uniform(0.8, 1.2) * self.keeper_interval

    async def _keep(self, reconcile: bool) -> bool:
        """One round of the keeper; True when a restored server is reconciled."""
        if not await self._container_running(self.container_id or self.container_name):
            return False  # the notebook is gone: poll reports it and JupyterHub stops the server
        plan = self._running_plan()
        mesh = self._mesh(plan)
        if not await self._sidecar_alive():
            if not reconcile:
                await self._fail_server(f"sidecar {self.sidecar_container_name} stopped and stayed down")
                return False
            self.log.warning("The sidecar of %s is gone; minting a new token and restarting it", self._log_name)
            if not await self._rotate_token(mesh):
                return False
        if reconcile or not await self._heartbeat_or_restore(mesh):
            if not await mesh.registered_in_consul():
                self.log.warning("Consul lost %s; registering it again", plan.service_id)
            await mesh.register(await self._mesh_address())
        if reconcile and not await mesh.token_exists():
            self.log.warning("The token of %s is gone; minting a new one and restarting the sidecar", self._log_name)
            if not await self._rotate_token(mesh):
                return False  # taken down: this round grants nothing after the teardown
        if reconcile or mesh.grant_due():
            await mesh.grant()
        if mesh.token_due(self._rotation_margin) and not await self._rotate_token(mesh):
            return False
        if reconcile:
            await mesh.delete_stale_tokens()
            self.log.info("Reconciled %s with Consul", plan.service_id)
        self._save_state()
        return True

    async def _heartbeat_or_restore(self, mesh: ServerMesh) -> bool:
        """Pass the TTL check; False when Consul no longer has it (the registration was lost)."""
        try:
            await mesh.heartbeat()
            return True
        except ConsulError as e:
            # 404 "Unknown check ID" (Consul's agent/agent_endpoint.go AgentCheckPass).
            if e.status == 404:
                return False
            raise

    async def _fail_server(self, reason: str) -> None:
        """Take the whole server down (notebook included, so nothing runs out of the hub's
        sight), then let poll report it."""
        self.log.error("Taking %s down: %s", self._log_name, reason)
        self.mesh_state.mesh_failure = reason  # poll reports it from now until the hub stops the server
        await self._teardown_to_the_end()
        self._save_state()

    def _save_state(self) -> None:
        """Write state to the hub database now: JupyterHub itself saves it only at start and
        stop, and a rotated token must not be forgotten if the hub restarts before then."""
        if self.orm_spawner is None:
            return
        # The ORM object's own session: Spawner.db is deprecated (and warns on every use).
        session = object_session(self.orm_spawner)
        if session is not None:
            self.orm_spawner.state = self.get_state()
            session.commit()

    async def _rotate_token(self, mesh: ServerMesh) -> bool:
        """Mint a new token, restart the sidecar with it, wait until it is ready, then delete
        the old token (Consul tokens cannot be extended). A rotation that fails takes the
        server down: a server without a working sidecar is not healthy. False then: the caller
        must not touch Consul for this server again."""
        plan = mesh.need_plan()
        secret = await mesh.mint_token()
        self._save_state()  # the new accessor is known before anything else can fail
        try:
            await self._start_sidecar(plan, secret)
            await self._wait_for_sidecar(mesh)
        except (APIError, SidecarNotReady, RuntimeError) as e:
            await self._fail_server(f"token rotation could not restart the sidecar: {e}")
            return False
        await mesh.delete_retired_tokens()
        self._save_state()
        self.log.info("Rotated the Consul token of %s", plan.service_id)
        return True
