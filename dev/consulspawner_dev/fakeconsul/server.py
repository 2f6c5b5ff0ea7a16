"""The fake agent's HTTP server (aiohttp) and the :class:`FakeConsul` handle tests use.

Request dispatch and the endpoints' handlers are in :mod:`.http_api` and :mod:`.http_acl`; the
state they read and change in :mod:`.state`.
"""

from __future__ import annotations

import asyncio
import copy
import re
import threading

from aiohttp import web

from .http_api import App, _Fault
from .state import State


class FakeConsul:
    """A fake Consul agent serving Consul's HTTP API from a background thread.

    State (services, checks, config entries, tokens, CA) survives ``stop()``/``restart()`` so
    tests can simulate an agent outage; ``advance()`` moves the fake clock that TTL checks,
    token expiry and critical-service reaping run on.
    """

    def __init__(
        self,
        acl_master_token: str | None = None,
        datacenter: str = "dc1",
        host: str = "127.0.0.1",
        port: int = 0,
        reap_interval: float = 0.5,
        check_interval_override: float | None = None,
        default_intention_allow: bool | None = None,
        check_initial_stagger: bool = False,
    ):
        """``check_interval_override`` replaces every interval check's interval (tests that are
        not about intervals); ``check_initial_stagger`` delays each TCP check's first run by a
        random fraction of its interval, as Consul does, instead of running it at once."""
        self.host = host
        self.port = port
        self.reap_interval = reap_interval
        self.state = State(
            datacenter=datacenter,
            acl_master_token=acl_master_token,
            default_intention_allow=default_intention_allow,
            check_interval_override=check_interval_override,
            check_initial_stagger=check_initial_stagger,
        )
        self._faults: list[_Fault] = []
        self._faults_lock = threading.Lock()
        self._requests: list[tuple[str, str]] = []
        self._attempts: list[tuple[str, str]] = []
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._closed = False

    # ------------------------------------------------------------------ lifecycle
    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> FakeConsul:
        """Serve in a background thread; returns once the socket is listening."""
        if self._closed:
            raise RuntimeError("FakeConsul was closed")
        if self._thread is not None:
            return self
        self._stopping.clear()
        ready = threading.Event()
        errors: list[BaseException] = []
        self._thread = threading.Thread(target=self._serve, args=(ready, errors), name="fakeconsul", daemon=True)
        self._thread.start()
        ready.wait()
        if errors:
            self._thread.join()
            self._thread = None
            raise errors[0]
        return self

    def _serve(self, ready: threading.Event, errors: list) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._startup())
        except BaseException as err:
            errors.append(err)
            ready.set()
            loop.close()
            return
        ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(self._shutdown())
            loop.close()

    async def _startup(self) -> None:
        app = web.Application(client_max_size=16 * 1024 * 1024)
        dispatcher = App(self)
        app.router.add_route("*", "/{tail:.*}", dispatcher.dispatch)
        # No handler cancellation: Consul's HTTP handlers run to completion when the client goes
        # away (agent/http.go wraps the handler without aborting it on disconnect, and a raft
        # apply that has started commits regardless), so a write whose client timed out still
        # happens. Blocking queries end on their own once their client is gone (_block_until).
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=False, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        await site.start()
        if self.port == 0:
            sock = site._server.sockets[0]
            self.port = sock.getsockname()[1]
        self._pass_task = asyncio.ensure_future(self._pass_loop())
        self._tcp_tasks: set = set()

    async def _shutdown(self) -> None:
        self._pass_task.cancel()
        for task in list(self._tcp_tasks):
            task.cancel()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _pass_loop(self) -> None:
        while True:
            self._run_due(self.state.run_pass())
            await asyncio.sleep(self.reap_interval)

    def _run_due(self, due) -> None:
        for cid, addr, timeout in due:
            task = asyncio.ensure_future(self._tcp_check(cid, addr, timeout))
            self._tcp_tasks.add(task)
            task.add_done_callback(self._tcp_tasks.discard)

    def _kick_checks(self) -> None:
        """Run newly due TCP checks now rather than at the next pass (must be on the loop)."""
        self._run_due(self.state.run_pass())

    async def _tcp_check(self, cid: str, addr: str, timeout: float) -> None:
        host, _, port = addr.rpartition(":")
        host = host.strip("[]")
        try:
            _reader, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)), timeout)
        except (TimeoutError, OSError, ValueError) as err:
            reason = "i/o timeout" if isinstance(err, asyncio.TimeoutError) else "connect: connection refused"
            self.state.set_tcp_result(cid, False, f"dial tcp {addr}: {reason}")
            return
        writer.close()
        self.state.set_tcp_result(cid, True, f"TCP connect {addr}: Success")

    def stop(self) -> None:
        """Stop serving (connections refused from now on) but keep all state."""
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        self._stopping.set()
        self.state.notify()
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        self._thread = None
        self._loop = None

    def restart(self) -> FakeConsul:
        """Serve again on the same host:port with the state kept."""
        self.stop()
        return self.start()

    def close(self) -> None:
        """Stop for good."""
        self.stop()
        self._closed = True

    def __enter__(self) -> FakeConsul:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ clock
    def advance(self, seconds: float) -> None:
        """Move the fake clock forward and run a check/reaper pass at once."""
        due = self.state.advance(seconds)
        loop = self._loop
        if due and loop is not None:
            try:
                loop.call_soon_threadsafe(self._run_due, due)
            except RuntimeError:
                pass

    # ------------------------------------------------------------------ Connect CA
    def rotate_ca(self, keep_old: bool = True) -> str:
        """Rotate the Connect CA to a new root of the same trust domain; the new root's ID.

        See :meth:`State.rotate_ca`: the old root stays inactive (``keep_old``) and cross-signs
        the new one, ``ActiveRootID`` changes, the roots index and every cached leaf's index are
        bumped (leaves re-issued under the new root) and blocked queries wake up.
        """
        return self.state.rotate_ca(keep_old=keep_old)

    # ------------------------------------------------------------------ faults
    def fail(
        self, method: str, path_regex: str, status: int = 500, times: int = 1, body: str = "injected fault"
    ) -> None:
        """Answer the next ``times`` matching requests with ``status`` and ``body``."""
        with self._faults_lock:
            self._faults.append(_Fault(method, path_regex, status, times, body, False, None))

    def hang(self, method: str, path_regex: str, times: int = 1, seconds: float | None = None) -> None:
        """Hold the next ``times`` matching requests for ``seconds`` (None: until cleared/stopped).

        The request has reached the agent: once released it is processed, even if its client
        gave up meanwhile (as Consul does). ``stop()`` drops held requests unprocessed.
        """
        with self._faults_lock:
            self._faults.append(_Fault(method, path_regex, 0, times, "", True, seconds))

    def delay_response(self, method: str, path_regex: str, seconds: float | None, times: int = 1) -> None:
        """Let the next ``times`` matching requests be fully processed, then hold their answers.

        Models "Consul commits but answers late": the state change (or the error) is decided at
        once and visible to other clients, while the caller waits ``seconds`` (None: until
        ``clear_faults()``/``stop()``) for its answer - and may time out without ever seeing it.
        Contrast :meth:`hang`, which holds the request before anything is processed.
        """
        with self._faults_lock:
            self._faults.append(_Fault(method, path_regex, 0, times, "", False, seconds, delay=True))

    def clear_faults(self) -> None:
        with self._faults_lock:
            for fault in self._faults:
                fault.released.set()
            self._faults.clear()

    def _take_fault(self, method: str, path: str) -> _Fault | None:
        with self._faults_lock:
            for fault in self._faults:
                if fault.matches(method, path):
                    fault.remaining -= 1
                    return fault
        return None

    # ------------------------------------------------------------------ observation
    def _record_attempt(self, method: str, path: str) -> None:
        with self._faults_lock:
            self._attempts.append((method, path))

    def _record_served(self, method: str, path: str) -> None:
        with self._faults_lock:
            self._requests.append((method, path))

    @property
    def requests(self) -> list[tuple[str, str]]:
        """(method, path) of requests answered by a real handler, in order (faulted ones excluded)."""
        with self._faults_lock:
            return list(self._requests)

    @property
    def attempts(self) -> list[tuple[str, str]]:
        """(method, path) of every request received, including faulted and hung ones."""
        with self._faults_lock:
            return list(self._attempts)

    @property
    def secret_reads(self) -> list[dict]:
        """Every SecretID the fake handed out: ``{"reader", "accessor", "operation"}`` in order.

        ``reader`` is the AccessorID of the request's token ("" for a login, which has none),
        ``accessor`` the token whose secret was in the answer, ``operation`` one of token-write,
        token-read, token-list, token-self, login. Redacted answers are not recorded.
        """
        with self.state.lock:
            return [dict(r) for r in self.state.secret_reads]

    def count(self, method: str, path_regex: str) -> int:
        """How many served requests match ``method`` ("*" for any) and ``path_regex``."""
        regex = re.compile(path_regex)
        method = (method or "*").upper()
        return sum(1 for m, p in self.requests if method in ("*", m) and regex.search(p))

    def snapshot(self) -> dict:
        """A deep copy of the state (see State.snapshot for the shape)."""
        return copy.deepcopy(self.state.snapshot())
