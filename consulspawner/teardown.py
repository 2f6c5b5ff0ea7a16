"""Undoing a server from its state alone: intentions first (access ends before anything else),
then sidecar, notebook, service and token (logged out); what Consul does not finish in time goes on in the
background, guarded by the incarnation; a failed start is undone again a few times later.

A mixin of ConsulSpawner. The steps are :class:`Step` members, run by :func:`undo`.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Awaitable

from dockerspawner import DockerSpawner
from jupyterhub.utils import exponential_backoff

from . import audit, metrics
from .hubwide import keep_referenced
from .mesh import ServerMesh
from .room import Room
from .state import MeshState

# When the rollback of a failed start is repeated, in case a call that timed out lands late (s).
LINGER_DELAYS = (2, 5, 10, 20, 30)


class Step(enum.Enum):
    """One teardown step of :class:`ServerMesh`, by what it undoes."""

    REVOKE = "revoke"
    DEREGISTER = "deregister"
    LOGOUT = "logout"


async def _run(mesh: ServerMesh, step: Step, lock_held: bool) -> None:
    if step is Step.REVOKE:
        with metrics.step("stop", "revoke"):
            await mesh.revoke()
    elif step is Step.DEREGISTER:
        # The service ID is this incarnation's alone (naming.service_id): a deregister of it can
        # never remove a newer start, so a caller in the middle of its own stop skips the read.
        with metrics.step("stop", "deregister"):
            await mesh.deregister(verify=not lock_held)
    else:
        owner, had_token = mesh.state.owner(), bool(mesh.state.token_accessor)
        with metrics.step("stop", "logout"):
            await mesh.logout()
        if had_token:
            audit.emit_for("token-logout", owner, trino_user=mesh.state.trino_user or None, cause="server stopped")


async def undo(mesh: ServerMesh, steps: list[Step], *, lock_held: bool = False) -> list[Exception]:
    """Run teardown steps in order, collecting errors so one failure does not stop the rest.

    ``lock_held``: the caller holds the server's lifecycle lock (see ``ServerMesh.deregister``).
    """
    errors: list[Exception] = []
    for step in steps:
        try:
            await _run(mesh, step, lock_held)
        except Exception as e:
            mesh.log.warning("Could not %s for %s (user %r): %s", step.value, mesh.state.service_id, mesh.user, e)
            errors.append(e)
    return errors


def steps_left(state: MeshState) -> list[Step]:
    """What ``state`` still holds in Consul besides intentions, in teardown order."""
    steps = []
    if state.registered:
        steps.append(Step.DEREGISTER)
    if not state.empty:
        steps.append(Step.LOGOUT)
    return steps


class Teardown(Room):
    """Stop, crash, cull and failed start of one server, from its state alone."""

    log: logging.Logger

    async def _teardown(self, *, stop_notebook: bool, now: bool = False) -> None:
        """Intention first (access ends before anything else), then sidecar, notebook,
        service and tokens, from state alone.

        Bounded: all its Consul steps share one ``consul_request_timeout`` (not one per
        phase), so with Consul hung a stop takes that plus Docker's own stop; what Consul does
        not finish in time goes on in the background, guarded by this incarnation, while the
        containers are removed regardless."""
        state = self.mesh_state
        mesh = self._mesh(None)
        failed: list[Step] = []
        owner, had_anything = state.owner(), not state.empty  # for the audit trail
        if state.token_accessor and state.token_accessor not in state.secrets:
            # A restarted hub: the token's secret lives only in the sidecar; read it back
            # before the sidecar goes, so the token can be logged out rather than left to expire.
            await self._recover_token_secret(state)
        deadline = asyncio.get_running_loop().time() + self.consul_request_timeout
        if state.granted and not await self._bounded(undo(mesh, [Step.REVOKE], lock_held=True), deadline):
            failed.append(Step.REVOKE)
        # Access has ended: the rest goes at once, side by side (the sidecar's Docker calls run
        # on their own thread). The service ID is this incarnation's alone, so deregistering
        # needs no read first; what goes to the background (run later) still verifies it.
        steps = steps_left(state)
        leftovers = [self._bounded(self._leftovers(), deadline)] if state.empty and not state.mesh_failure else []
        if leftovers:
            await self._logout_leftover_token()  # before the sidecar that holds it is removed
        results = await asyncio.gather(
            self._remove_containers(stop_notebook, now),
            *(self._bounded(undo(mesh, [step], lock_held=True), deadline) for step in steps),
            *leftovers,
        )
        results = results[: 1 + len(steps)]
        self.mesh_state = state  # DockerSpawner.stop clears all state; the mesh still holds what is left to undo
        failed += [step for step, ok in zip(steps, results[1:], strict=True) if not ok]
        self._plan = None
        if failed:
            self._defer_teardown(state, failed)
        if had_anything:
            audit.emit_for(
                "teardown",
                owner,
                trino_user=state.trino_user or None,
                cause=f"continuing in the background: {', '.join(s.value for s in failed)}" if failed else "done",
            )
        # A failure the spawner decided on stays reported (poll) until the hub clears the state.
        self.mesh_state = MeshState(mesh_failure=state.mesh_failure)
        self.sidecar_container_id = ""

    async def _leftovers(self) -> list[Exception]:
        try:
            await self._remove_leftovers()
        except Exception as e:
            self.log.warning("Could not look for what an earlier start of %s left: %s", self._log_name, e)
            return [e]
        return []

    async def _remove_containers(self, stop_notebook: bool, now: bool) -> None:
        async def sidecar():
            await self._settle_early_sidecar()  # (a failed start's sidecar still being made)
            try:
                await self._remove_sidecar()
            except Exception as e:
                self.log.warning("Could not remove the sidecar of %s: %s", self._log_name, e)

        async def notebook():
            if stop_notebook and not self.object_id:
                # No state (a hub killed mid-spawn): the notebook is found by its name.
                info = await self._inspect(self.container_name)
                self.object_id = info["Id"] if info else ""
            if stop_notebook and self.object_id:
                try:
                    await DockerSpawner.stop(self, now=now)
                except Exception as e:
                    self.log.warning("Could not stop the notebook of %s: %s", self._log_name, e)

        await asyncio.gather(sidecar(), notebook())

    async def _bounded(self, steps: Awaitable[list[Exception]], deadline: float | None = None) -> bool:
        """Await teardown steps for at most consul_request_timeout, or until ``deadline`` (the
        loop's time) when one is shared by several steps; True when they succeeded."""
        timeout = self.consul_request_timeout
        if deadline is not None:
            timeout = max(0.0, deadline - asyncio.get_running_loop().time())
        try:
            async with asyncio.timeout(timeout):  # (not wait_for: see consul.py)
                errors = await steps
        except TimeoutError:
            self.log.warning(
                "Consul did not finish a teardown step of %s within %gs; continuing in the background",
                self._log_name,
                self.consul_request_timeout,
            )
            return False
        return not errors

    def _defer_teardown(self, state: MeshState, steps: list[Step]) -> None:
        """Keep retrying teardown steps Consul refused or did not answer, with JupyterHub's
        exponential backoff, for ``intention_ttl``; after that the expiry and the janitor take
        over. Each attempt is guarded by the old incarnation (intention sources by their marker,
        the service by its per-start ID, tokens by accessor), so it never touches a newer server of
        the same user; the lock it takes only orders it with this Spawner object's own work (a
        restarted hub's new Spawner has another lock)."""
        state = state.copy()
        client, writer = self._client_and_writer()
        mesh = ServerMesh(client, writer, None, state, retry_budget=0, logger=self.log)
        remaining = list(steps)

        async def attempt() -> bool:
            async with self._lock():
                for step in list(remaining):
                    # Run later, maybe after a new start: the incarnation is verified.
                    if not await self._bounded(undo(mesh, [step])):
                        return False
                    remaining.remove(step)
            return True

        async def retry():
            try:
                await exponential_backoff(
                    attempt,
                    f"Background teardown of {state.service_id} gave up",
                    start_wait=1,
                    max_wait=30,
                    timeout=self.intention_ttl,
                )
                self.log.info(
                    "Background teardown of %s (%s) completed", state.service_id, ", ".join(s.value for s in steps)
                )
            except TimeoutError:
                self.log.error(
                    "Gave up retrying %s for %s; the janitor removes them after expiry",
                    [s.value for s in remaining],
                    state.service_id,
                )

        keep_referenced(asyncio.get_running_loop().create_task(retry()))

    def _linger(self, attempted: MeshState) -> None:
        """After a failed start, undo its incarnation again a few times over the next minute.

        A Consul call that timed out may still be applied later (Consul finishes a request
        whose client left): a registration or token landing after the rollback would outlive
        the failed spawn. Every round is guarded by the incarnation and holds the server's lock,
        so a new start of the same server is never touched."""
        if attempted.empty:
            return
        client, writer = self._client_and_writer()

        async def rounds():
            for delay in LINGER_DELAYS:
                await asyncio.sleep(delay)
                mesh = ServerMesh(client, writer, None, attempted.copy(), retry_budget=0, logger=self.log)
                async with self._lock():
                    await self._bounded(undo(mesh, [Step.REVOKE, Step.DEREGISTER, Step.LOGOUT]))

        keep_referenced(asyncio.get_running_loop().create_task(rounds()))

    async def _teardown_to_the_end(self, *, wait: bool = True) -> None:
        """A teardown no cancellation interrupts (a cancelled spawn, a stop cancelling the
        keeper): whoever runs next on this server waits for it first (``_stop_keeper``)."""
        self._unfinished_teardown = asyncio.ensure_future(self._teardown(stop_notebook=True))
        if wait:
            await asyncio.shield(self._unfinished_teardown)
