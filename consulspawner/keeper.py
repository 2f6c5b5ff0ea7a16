"""The keeper: the one place that refreshes, rotates and reconciles a running server.

Every ``keeper_interval`` (jittered), under the server's lock, it passes the TTL check,
restores a registration Consul lost, extends the intentions at half-life, rotates the token
when due, lowers a sidecar's start CPU weight that was left high, and takes the server down
when its sidecar stays dead. A mixin of ConsulSpawner.
"""

from __future__ import annotations

import asyncio
import random
import time

from sqlalchemy.orm import object_session

from . import audit, metrics
from .consul import ConsulError
from .hubwide import signer_for
from .intentions import IntentionConflict
from .mesh import ServerMesh
from .room import Room
from .uninterrupted import awaited_to_its_answer

# Keeper rounds in a row refused by Consul (not merely unanswered) before the server is taken down.
KEEPER_REFUSALS_LIMIT = 3


def _lasting(error: Exception) -> bool:
    """Whether a keeper round's error will not go away by itself: Consul answered with a
    refusal (4xx), or an intention source is not ours to write."""
    if isinstance(error, ConsulError):
        # (429 is Consul's rate limit: it passes.)
        return error.status is not None and 400 <= error.status < 500 and error.status != 429
    return isinstance(error, IntentionConflict)


# Seconds a stop waits for a cancelled keeper before cancelling it again.
KEEPER_CANCEL_AGAIN = 1.0


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
            # Cancelled again until it ends: a cancellation can be lost on the way (Python
            # 3.11's asyncio.wait_for, in a library, drops one that arrives as the call it
            # waits for finishes), and a keeper that lost it would nap and go on for good.
            while not keeper.done():
                keeper.cancel()
                await asyncio.wait({keeper}, timeout=KEEPER_CANCEL_AGAIN)
            if not keeper.cancelled() and keeper.exception() is not None:
                self.log.warning("The keeper of %s ended with %r", self._log_name, keeper.exception())
        unfinished, self._unfinished_teardown = self._unfinished_teardown, None
        if unfinished is not None:
            try:
                await unfinished
            except Exception as e:
                self.log.warning("An interrupted teardown of %s failed: %s", self._log_name, e)

    async def _keeper_loop(self, reconcile: bool) -> None:
        """The one place that heartbeats, extends, rotates, restores and supervises a running
        server, every ``keeper_interval`` (jittered), under the server's lock."""
        key = id(self)  # for the keeper gauges: which server, never a label
        metrics.keeper_watching(key)
        try:
            await self._keeper_rounds(reconcile, key)
        finally:
            metrics.keeper_done(key)

    async def _keeper_rounds(self, reconcile: bool, key: int) -> None:
        if not reconcile:
            await self._keeper_nap(self._keeper_pause())
        refused = 0  # rounds in a row that Consul answered with a refusal
        while True:
            async with self._lock():
                if self.mesh_state.empty:
                    return
                try:
                    if await self._keep(reconcile):
                        reconcile = False
                    self.keeper_rounds += 1
                    metrics.keeper_round(key, ok=True)
                    refused = 0
                except asyncio.CancelledError:
                    raise
                except Exception as e:
                    # Consul unreachable or slow is not the server's death: the check TTL and
                    # intention expiry leave room for the next round. A refusal that lasts
                    # (a 403 after a policy change, a conflicting intention) is: the server is
                    # no longer kept, so it is taken down and poll says why.
                    metrics.keeper_round(key, ok=False)
                    self.log.warning("Could not refresh %s in the mesh: %s", self._log_name, e)
                    refused = refused + 1 if _lasting(e) else 0
                    if refused >= KEEPER_REFUSALS_LIMIT:
                        await self._fail_server(f"the keeper was refused {refused} rounds in a row: {e}")
                if self.mesh_state.mesh_failure:
                    return
            await self._keeper_nap(self._keeper_pause())  # woken early by the sidecar's death

    def _keeper_pause(self) -> float:
        return random.uniform(0.8, 1.2) * self.keeper_interval

    async def _keep(self, reconcile: bool) -> bool:
        """One round of the keeper; True when a restored server is reconciled."""
        if not await self._container_running(self.container_id or self.container_name):
            return False  # the notebook is gone: poll reports it and JupyterHub stops the server
        plan = self._running_plan()
        mesh = self._mesh(plan)
        if reconcile:
            await self._find_current_sidecar()
        if not await self._sidecar_alive():
            if not reconcile:
                await self._fail_server(f"sidecar {self.sidecar_container_name} stopped and stayed down")
                return False
            self.log.warning("The sidecar of %s is gone; logging in again and restarting it", self._log_name)
            if not await self._rotate_token(mesh):
                return False
        # A weight left high: lowering it failed, or a hub that restarted cannot know.
        self._sidecar_boosted = self._sidecar_boosted or (reconcile and self._start_weight_differs())
        await self._end_start_boost()
        if reconcile or not await self._heartbeat_or_restore(mesh):
            if not await mesh.registered_in_consul():
                self.log.warning("Consul lost %s; registering it again", plan.service_id)
            await mesh.register(await self._mesh_address())
        if reconcile and not await self._token_alive(mesh):
            self.log.warning("The token of %s is gone; logging in again and restarting the sidecar", self._log_name)
            if not await self._rotate_token(mesh):
                return False  # taken down: this round grants nothing after the teardown
        if reconcile or mesh.grant_due():
            await mesh.grant()
        if mesh.token_due(self._rotation_margin(mesh.state.token_lifetime)) and not await self._rotate_token(mesh):
            return False
        if reconcile:
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

    async def _login(self, mesh: ServerMesh) -> str:
        """A new token for this server, by login with a JWT the hub signs (see identity.py)."""
        signer = await signer_for(self.jwt_signing_key_file)
        return await mesh.login(signer, self.auth_method, self.jwt_audience, self.service_prefix)

    async def _token_alive(self, mesh: ServerMesh) -> bool:
        """Whether the current token still works; after a hub restart its secret is read back
        from the sidecar first (the only place it is kept)."""
        state = mesh.state
        secret = state.secrets.get(state.token_accessor)
        if secret:
            return await mesh.token_alive(secret)
        secret = await self._read_sidecar_token(state.service_name or state.service_id)
        if not secret:
            return False
        # Whichever token the sidecar holds is the one the server runs on; Consul says which
        # it is (a hub that died mid-rotation may have saved the other).
        token = await mesh.token_of(secret)
        return token is not None and mesh.adopt_token(token, secret)

    async def _rotate_token(self, mesh: ServerMesh) -> bool:
        """Log in again, restart the sidecar with the new token, wait until it is ready, then
        log the old token out (Consul tokens cannot be extended).

        A rotation that fails is not recorded: the new token (if any) is logged out and the
        server goes back to its old, still valid token, with the sidecar restarted on it if it
        had to be replaced; the next round tries again. Only when the old token cannot carry
        the server either is the server taken down: False then, and the caller must not touch
        Consul for this server again."""
        plan = mesh.need_plan()
        state = mesh.state
        before = (state.token_accessor, state.token_expires_at, state.token_lifetime, list(state.retired_accessors))
        try:
            # Not cut by a cancellation (a stop, the hub's shutdown): the new token's secret is
            # in this process alone until the new sidecar holds it.
            await awaited_to_its_answer(asyncio.ensure_future(self._new_token_into_new_sidecar(mesh)))
            await self._wait_for_sidecar(mesh)
        except Exception as e:
            # Once the login succeeded, the old sidecar may be gone: restarted on the old token.
            return await self._rotation_failed(mesh, before, state.token_accessor != before[0], e)
        if await mesh.logout_retired():
            audit.emit_for("token-logout", plan.owner, trino_user=plan.trino_user, cause="token rotation")
        self._save_state()
        self.log.info("Rotated the Consul token of %s", plan.service_id)
        return True

    async def _new_token_into_new_sidecar(self, mesh: ServerMesh) -> None:
        plan = mesh.need_plan()
        secret = await self._login(mesh)
        audit.emit_for("token-login", plan.owner, trino_user=plan.trino_user, cause="token rotation")
        self._save_state()  # the new accessor is known before anything else can fail
        await self._start_sidecar(plan, secret)
        self._save_state()  # and the sidecar that holds it (a restarted hub reads it back there)

    async def _rotation_failed(self, mesh: ServerMesh, before: tuple, sidecar_replaced: bool, error: Exception) -> bool:
        state = mesh.state
        old_accessor, old_expires, old_lifetime, old_retired = before
        if state.token_accessor and state.token_accessor != old_accessor:
            try:
                await mesh.logout_token(state.token_accessor)
            except ConsulError as e:
                self.log.info("Could not log out the unused new token of %s: %s", self._log_name, e)
        state.token_accessor, state.token_expires_at, state.token_lifetime = old_accessor, old_expires, old_lifetime
        state.retired_accessors = old_retired
        self._save_state()
        old_secret = state.secrets.get(old_accessor)
        usable = bool(old_secret) and old_expires > time.time()
        if usable and sidecar_replaced:
            try:
                await self._start_sidecar(mesh.need_plan(), old_secret)
                await self._wait_for_sidecar(mesh)
            except Exception as e:
                self.log.warning("Could not restart the sidecar of %s on its old token: %s", self._log_name, e)
                usable = False
        if not usable:
            why = "the sidecar could not be restarted on either token" if sidecar_replaced else "the old token expired"
            await self._fail_server(f"token rotation failed and {why}: {error}")
            return False
        self.log.warning(
            "Token rotation of %s failed (%s); it stays on its current token and is retried next round",
            self._log_name,
            error,
        )
        return True
