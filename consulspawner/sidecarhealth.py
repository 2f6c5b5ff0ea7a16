"""A server's sidecar alive and ready: the readiness command run in it, its liveness and
restart budget, and Docker's word on its death (the keeper's nap).

A mixin of ConsulSpawner, on top of :class:`~.sidecar.SidecarContainer` (its Docker client and
recorded container).
"""

from __future__ import annotations

import asyncio
import time

from docker.errors import APIError
from jupyterhub.utils import exponential_backoff

from .dockerevents import SidecarDeaths
from .dockerpool import DockerPool, DockerUnreachable
from .hubwide import _sidecar_deaths, _sidecar_ready_waits
from .mesh import ServerMesh, SidecarNotReady
from .sidecar import LABEL_PREFIX, SidecarContainer

# How long a sidecar that is neither running nor being restarted by Docker may stay so before the
# keeper calls it dead (Docker's restart backoff starts at 100 ms).
SIDECAR_DOWN_GRACE = 3.0
# The readiness command may wait inside the sidecar until the proxy is ready, up to the seconds
# in this variable (the images in docker/ do): one exec per spawn instead of one process started
# per try, which under many spawns at once took the CPU the proxies needed to become ready.
READY_WAIT_ENV = "SIDECAR_READY_WAIT"
# At most this long in one exec, so that a notebook dying meanwhile is noticed soon after.
READY_WAIT_PER_EXEC = 5.0
# Threads for those waits (each blocks in exec_start while its command waits), apart from the
# sidecars' few threads that every other call of theirs needs: servers spawning at once.
READY_WAIT_THREADS = 32
# What Docker gives a container without CpuShares (a sidecar_cpu_shares of 0).
DOCKER_DEFAULT_CPU_SHARES = 1024


class SidecarHealth(SidecarContainer):
    """Readiness and liveness of the sidecar container of one server."""

    def sidecar_ready_wait(self, method, *args, **kwargs):
        """A Docker call that blocks while a readiness command waits in the sidecar, on threads
        (and a client) of its own: a few servers waiting never hold up the others' calls."""
        cls = type(self)
        if cls not in _sidecar_ready_waits:
            _sidecar_ready_waits[cls] = DockerPool(
                lambda: {**self._sidecar_client_kwargs(), "max_pool_size": READY_WAIT_THREADS},
                f"consulspawner-ready-{cls.__name__}",
                threads=READY_WAIT_THREADS,
            )
        return _sidecar_ready_waits[cls].call(method, *args, **kwargs)

    # -- readiness and liveness -----------------------------------------------------------------

    async def _wait_for_sidecar(self, mesh: ServerMesh) -> None:
        """Until the sidecar says it is ready (``sidecar_ready_command``), or, without one, until
        its Consul checks pass; failing fast if the sidecar or the notebook dies."""
        if not self.sidecar_ready_command:
            await mesh.wait_until_ready(self.sidecar_ready_timeout, self._sidecar_and_notebook_running)
            await self._end_start_boost()
            return
        self._last_probe_output = ""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.sidecar_ready_timeout

        async def ready() -> bool:
            wait = min(READY_WAIT_PER_EXEC, max(0.0, deadline - loop.time()))
            if await self._probe_sidecar_ready(wait):
                return True
            # Not ready yet: only now ask whether it (or the notebook) died meanwhile.
            if not await self._sidecar_and_notebook_running():
                raise SidecarNotReady(f"sidecar {self.sidecar_container_name} stopped before it became ready")
            return False

        try:
            # A command that waits (READY_WAIT_ENV) is run once per READY_WAIT_PER_EXEC; one that
            # answers at once is run again first after 0.05 s on average, growing to 0.5 s (full
            # jitter up to 1 s): three Docker calls and a process started in the sidecar each.
            await exponential_backoff(
                ready, "", start_wait=0.1, scale_factor=1.5, max_wait=1.0, timeout=self.sidecar_ready_timeout
            )
        except TimeoutError:
            raise SidecarNotReady(
                f"sidecar {self.sidecar_container_name} not ready after {self.sidecar_ready_timeout:g}s: "
                f"{self._last_probe_output}"
            ) from None
        self.log.info("Sidecar %s is ready", self.sidecar_container_name)
        await self._end_start_boost()

    async def _end_start_boost(self) -> None:
        """Lower the sidecar's CPU weight from sidecar_start_cpu_shares to sidecar_cpu_shares
        (its boot is done; what it uses from now on is its user's traffic). A failure leaves
        the server up: it is logged, once as a warning, and the keeper tries again each round."""
        if not self._sidecar_boosted or not self.sidecar_container_id:
            return
        shares = self.sidecar_cpu_shares or DOCKER_DEFAULT_CPU_SHARES
        try:
            await self.sidecar_docker("update_container", self.sidecar_container_id, cpu_shares=shares)
        except (APIError, DockerUnreachable) as e:
            told, self._boost_failure_told = self._boost_failure_told, True
            (self.log.debug if told else self.log.warning)(
                "Docker update_container (CPU weight %d) of sidecar %s failed: %s; the keeper tries again",
                shares,
                self.sidecar_container_name,
                e,
            )
            return
        self._sidecar_boosted = False

    async def _probe_sidecar_ready(self, wait: float = 0.0) -> bool:
        """Run ``sidecar_ready_command`` in the sidecar once, letting it wait up to ``wait``
        seconds for readiness; False unless it exits 0. Docker refuses an exec into a container
        that is not running (409 or 500, at create or start): that is "not ready" too, and the
        caller's liveness check says whether it died (an exec ends when its container dies)."""
        try:
            created = await self.sidecar_docker(
                "exec_create",
                self.sidecar_container_id,
                self.sidecar_ready_command,
                stdout=True,
                stderr=True,
                environment={READY_WAIT_ENV: f"{wait:.1f}"},
            )
            output = await self.sidecar_ready_wait("exec_start", created["Id"])
            self._last_probe_output = output.decode(errors="replace").strip()[-200:]
            return (await self.sidecar_docker("exec_inspect", created["Id"]))["ExitCode"] == 0
        except APIError as e:
            self._last_probe_output = f"docker exec refused: {e.explanation or e}"
            return False

    async def _sidecar_and_notebook_running(self) -> bool:
        """Both run, and the sidecar has not used up its restart budget (Docker restarts it
        without a count, and calls a container in its restart backoff running)."""
        info = await self._inspect(self.sidecar_container_id)
        if not info or not info["State"]["Running"] or self._restarted_too_often(info.get("RestartCount") or 0):
            return False
        return await self._container_running(self.container_id)

    async def _sidecar_alive(self) -> bool:
        """Running or being restarted by Docker's policy; a sidecar that stays down for a few
        seconds is dead (stopped, killed, or out of restarts)."""

        async def verdict() -> str | None:
            info = await self._inspect(self.sidecar_container_id)
            if info is None:
                return "gone"
            if self._restarted_too_often(info.get("RestartCount") or 0):
                return "crashing"
            state = info["State"]
            return "alive" if state.get("Running") or state.get("Restarting") else None

        try:
            # Every 0.5 s on average, for SIDECAR_DOWN_GRACE.
            found = await exponential_backoff(
                verdict, "", start_wait=1.0, scale_factor=1, max_wait=1.0, timeout=SIDECAR_DOWN_GRACE
            )
        except TimeoutError:
            return False
        if found == "crashing":
            self.log.warning(
                "The sidecar of %s crashed more than %d times in %gs",
                self._log_name,
                self.sidecar_restart_attempts,
                self.sidecar_restart_window,
            )
        return found == "alive"

    def _restarted_too_often(self, restart_count: int) -> bool:
        """Record Docker's restart count now; True when it grew by more than
        ``sidecar_restart_attempts`` within ``sidecar_restart_window``."""
        now = time.monotonic()
        marks = [(at, count) for at, count in self._restart_marks if now - at <= self.sidecar_restart_window]
        marks.append((now, restart_count))
        self._restart_marks = marks
        return restart_count - min(count for _, count in marks) > self.sidecar_restart_attempts

    # -- Docker's word on a death -----------------------------------------------------------------

    async def _keeper_nap(self, seconds: float) -> None:
        """Sleep until the keeper's next round, or less: until Docker reports this server's
        sidecar dead (its ``die`` event), so the round that acts on it runs at once. A sidecar
        the spawner replaced itself meanwhile (a rotation, ``keep_now``) dying is no death of
        this server's sidecar: the nap goes on, watching the new one."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while (remaining := deadline - loop.time()) > 0:
            sidecar = self.sidecar_container_id
            if not sidecar:
                await asyncio.sleep(remaining)
                return
            if not await self._sidecar_death_within(sidecar, remaining):
                return
            async with self._lock():  # a replacement in progress (under the lock) ends first
                replaced = self.sidecar_container_id != sidecar
            if not replaced:
                self.log.info("Docker reports the sidecar of %s died; checking it now", self._log_name)
                return

    async def _sidecar_death_within(self, sidecar: str, seconds: float) -> bool:
        """Whether Docker reports ``sidecar``'s ``die`` event within ``seconds``."""
        key = (type(self), self.hub_instance)
        if key not in _sidecar_deaths:
            labels = [f"{LABEL_PREFIX}.role=sidecar", f"{LABEL_PREFIX}.hub-instance={self.hub_instance}"]
            _sidecar_deaths[key] = SidecarDeaths(self._sidecar_client_kwargs, labels, self.log)
        deaths = _sidecar_deaths[key]
        woken = asyncio.Event()
        deaths.wake_on_death(sidecar, woken)
        try:
            async with asyncio.timeout(seconds):  # (not wait_for: see consul.py)
                await woken.wait()
            # Forgotten once acted on: a sidecar Docker restarts keeps its ID, and must not wake
            # every later nap.
            deaths.forget(sidecar)
            return True
        except TimeoutError:
            return False
        finally:
            deaths.forget(sidecar, death=False)
