"""The fake agent's HTTP API: routing, blocking queries and the handlers of each endpoint.

Routing mirrors Consul's ``net/http`` mux (``agent/http_register.go``): exact patterns and
prefix patterns ending in ``/``, longest match wins; a known path with a method it does not
declare answers 405 ``method X not allowed`` with an ``Allow`` header, an unknown ``/v1/`` path
404 ``Invalid URL path: not a recognized HTTP API endpoint`` (``agent/http.go`` ``wrap`` and
``Index``). Errors are plain text bodies; successes are JSON. The ACL endpoints' handlers are in
:mod:`.http_acl`.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from aiohttp import web

from .acl import ConsulError
from .godur import DurationError, parse_duration
from .http_acl import AclRoutes
from .http_acl import json_response as _json_response
from .http_acl import request_token as _token
from .http_acl import text_response as _text_response
from .state import CRITICAL, State

if TYPE_CHECKING:
    from .server import FakeConsul

# agent/structs: defaultQueryTime 5m, maxQueryTime 10m; a random wait/16 is added as jitter.
DEFAULT_WAIT = 300.0
MAX_WAIT = 600.0


class _Fault:
    def __init__(
        self, method: str, pattern: str, status: int, times: int, body: str, hang: bool, seconds, delay: bool = False
    ):
        self.method = (method or "*").upper()
        self.regex = re.compile(pattern)
        self.status = status
        self.remaining = times
        self.body = body
        self.hang = hang  # hold the request BEFORE the handler runs (Consul is slow to get to it)
        self.delay = delay  # run the handler, THEN hold the answer (Consul committed, answers late)
        self.seconds = seconds
        self.released = threading.Event()

    def matches(self, method: str, path: str) -> bool:
        return self.remaining > 0 and self.method in ("*", method) and bool(self.regex.search(path))


# How often a parked blocking query looks whether its client is still connected.
CLIENT_POLL = 0.25


def _filtered_header(token: str, body) -> dict:
    """X-Consul-Results-Filtered-By-ACLs: "true" when ACLs removed results, never for a request
    without a token (agent/http.go setResultsFilteredByACLs; agent/consul/rpc.go
    maskResultsFilteredByACLs; agent/agent_endpoint.go AgentServices "only if the user is
    authenticated (to prevent information leaking)")."""
    if token and getattr(body, "filtered_by_acls", False):
        return {"X-Consul-Results-Filtered-By-ACLs": "true"}
    return {}


def _client_gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


class App(AclRoutes):
    """Request dispatch for one running server; state lives in :class:`State` and outlives it."""

    def __init__(self, fake: FakeConsul):
        self.fake = fake
        self.state: State = fake.state
        routes: list[tuple[str, list[str], Callable]] = [
            ("/v1/agent/self", ["GET"], self.agent_self),
            ("/v1/agent/services", ["GET"], self.agent_services),
            ("/v1/agent/service/", ["GET"], self.agent_service),
            ("/v1/agent/checks", ["GET"], self.agent_checks),
            ("/v1/agent/check/pass/", ["PUT"], self.check_pass),
            ("/v1/agent/check/warn/", ["PUT"], self.check_warn),
            ("/v1/agent/check/fail/", ["PUT"], self.check_fail),
            ("/v1/agent/service/register", ["PUT"], self.service_register),
            ("/v1/agent/service/deregister/", ["PUT"], self.service_deregister),
            ("/v1/agent/connect/authorize", ["POST"], self.connect_authorize),
            ("/v1/agent/connect/ca/roots", ["GET"], self.ca_roots),
            ("/v1/agent/connect/ca/leaf/", ["GET"], self.ca_leaf),
            ("/v1/connect/ca/roots", ["GET"], self.ca_roots),
            ("/v1/catalog/services", ["GET"], self.catalog_services),
            ("/v1/catalog/service/", ["GET"], self.catalog_service),
            ("/v1/health/service/", ["GET"], self.health_service),
            ("/v1/health/connect/", ["GET"], self.health_connect),
            ("/v1/health/checks/", ["GET"], self.health_checks),
            ("/v1/config", ["PUT"], self.config_apply),
            ("/v1/config/", ["GET", "DELETE"], self.config),
            ("/v1/connect/intentions", ["GET", "POST"], self.intentions),
            ("/v1/connect/intentions/match", ["GET"], self.intentions_match),
            ("/v1/connect/intentions/check", ["GET"], self.intentions_check),
            ("/v1/connect/intentions/exact", ["GET", "PUT", "DELETE"], self.intentions_exact),
            *self.acl_routes(self),
            ("/v1/status/leader", ["GET"], self.status_leader),
            ("/v1/status/peers", ["GET"], self.status_peers),
            ("/_fake/advance", ["POST"], self.fake_advance),
            ("/_fake/fault", ["POST", "DELETE"], self.fake_fault),
            ("/_fake/state", ["GET"], self.fake_state),
        ]
        self.exact = {p: (m, h) for p, m, h in routes if not p.endswith("/")}
        self.prefixes = sorted(((p, m, h) for p, m, h in routes if p.endswith("/")), key=lambda r: -len(r[0]))

    # ------------------------------------------------------------------ dispatch
    def route(self, path: str):
        if path in self.exact:
            methods, handler = self.exact[path]
            return path, methods, handler
        for prefix, methods, handler in self.prefixes:
            if path.startswith(prefix):
                return prefix, methods, handler
        return None

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        method = request.method
        fake = self.fake
        is_knob = path.startswith("/_fake/")
        if not is_knob:
            fake._record_attempt(method, path)
            fault = fake._take_fault(method, path)
            if fault is not None and not fault.delay:
                if fault.hang:
                    # The agent has the whole request: read (and cache) the body now so that a
                    # client hanging up while it is held cannot take the body with it.
                    await request.read()
                    await self._hang(request, fault)
                else:
                    return _text_response(fault.body, fault.status)
        else:
            fault = None
        headers = {"X-Consul-Default-ACL-Policy": "deny" if self.state.acl_enabled else "allow"}
        found = self.route(path)
        if found is None:
            if path == "/":
                return _text_response(
                    "Consul Agent: UI disabled. To enable, set ui_config.enabled=true in the agent "
                    "configuration and restart.",
                    200,
                )
            if "/v1/" in path:
                return _text_response("Invalid URL path: not a recognized HTTP API endpoint\n", 404)
            return _text_response(
                "Invalid URL path: if attempting to use the HTTP API, ensure the path starts with '/v1/'\n", 404
            )
        pattern, methods, handler = found
        if method == "OPTIONS":
            return web.Response(status=200, headers={"Allow": ",".join(["OPTIONS", *methods])})
        if method not in methods:
            return _text_response(
                f"method {method} not allowed", 405, {"Allow": ",".join(["OPTIONS", *methods]), **headers}
            )
        if is_knob and self.state.acl_enabled:
            authz = self._authz_or_error(request)
            if isinstance(authz, web.Response):
                return authz
            if not authz.management:
                return _text_response("Permission denied", 403)
        try:
            resp = await handler(request, path[len(pattern) :] if pattern.endswith("/") else "")
        except ConsulError as err:
            resp = _text_response(err.text, err.status, {**headers, **err.headers})
        else:
            if not is_knob:
                fake._record_served(method, path)
            for key, value in headers.items():
                resp.headers.setdefault(key, value)
        if fault is not None and fault.delay:
            # The handler ran to completion (state changed, or the error was decided); only the
            # answer is late - as when Consul's raft apply commits but the reply is slow.
            await self._hang(request, fault)
        return resp

    def _authz_or_error(self, request):
        try:
            return self.state.resolve(_token(request))
        except ConsulError as err:
            return _text_response(err.text, err.status)

    async def _hang(self, request: web.Request, fault: _Fault) -> None:
        deadline = None if fault.seconds is None else time.monotonic() + fault.seconds
        while not fault.released.is_set() and not self.fake._stopping.is_set():
            if deadline is not None and time.monotonic() >= deadline:
                return
            await asyncio.sleep(0.02)
        if self.fake._stopping.is_set():
            # "Consul went away": drop the connection without an answer.
            if request.transport is not None:
                request.transport.close()
            raise asyncio.CancelledError

    # ------------------------------------------------------------------ helpers
    @staticmethod
    async def _body(request: web.Request, what: str = "Request decode failed"):
        raw = await request.read()
        if not raw.strip():
            raise ConsulError(400, f"{what}: EOF")
        try:
            return json.loads(raw)
        except ValueError as err:
            raise ConsulError(400, f"{what}: {err}") from None

    @staticmethod
    def _wait_params(request: web.Request) -> tuple[int, float]:
        """agent/http.go parseWait: ?index and ?wait ("Invalid wait time" / "Invalid index")."""
        wait = DEFAULT_WAIT
        if request.query.get("wait"):
            try:
                wait = parse_duration(request.query["wait"])
            except DurationError:
                raise ConsulError(400, "Invalid wait time") from None
            if wait <= 0:
                wait = DEFAULT_WAIT
        index = 0
        if request.query.get("index"):
            try:
                index = int(request.query["index"])
                if index < 0:
                    raise ValueError
            except ValueError:
                raise ConsulError(400, "Invalid index") from None
        wait = min(wait, MAX_WAIT)
        return index, wait + random.uniform(0, wait / 16)

    async def _block(self, request: web.Request, produce: Callable[[], tuple[int, object]]) -> tuple[int, object]:
        """An index-based blocking query: answer when the index passes ?index or ?wait runs out."""
        min_index, wait = self._wait_params(request)
        return await self._block_until(lambda r: min_index == 0 or r[0] > min_index, produce, wait, request)

    async def _block_until(self, done, produce, wait: float, request: web.Request | None = None):
        """Re-run ``produce`` on every state change until ``done`` or the wait runs out.

        Handlers are not cancelled when a client goes away (see FakeConsul._startup), so a
        blocking query also ends once its client has disconnected - nobody would read the answer -
        rather than holding a waiter for up to ten minutes.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while True:
            event = asyncio.Event()
            waiter = (loop, event)
            self.state.add_waiter(waiter)
            try:
                result = produce()
                remaining = deadline - loop.time()
                if done(result) or remaining <= 0 or self.fake._stopping.is_set():
                    return result
                while not event.is_set():
                    remaining = deadline - loop.time()
                    if remaining <= 0 or self.fake._stopping.is_set():
                        break
                    if request is not None and _client_gone(request):
                        return result
                    try:
                        await asyncio.wait_for(event.wait(), min(remaining, CLIENT_POLL))
                    except TimeoutError:
                        pass
            finally:
                self.state.remove_waiter(waiter)

    @staticmethod
    def _meta_headers(index: int) -> dict:
        # setMeta: index, last contact, known leader.
        return {"X-Consul-Index": str(index), "X-Consul-KnownLeader": "true", "X-Consul-LastContact": "0"}

    # ------------------------------------------------------------------ agent
    async def agent_self(self, request, _rest):
        return _json_response(self.state.agent_self(_token(request)))

    async def agent_services(self, request, _rest):
        token = _token(request)
        body = self.state.agent_services(token)
        return _json_response(body, headers=_filtered_header(token, body))

    async def agent_service(self, request, sid):
        """Hash-based blocking (agent.LocalBlockingQuery): block while ContentHash == ?hash."""
        token = _token(request)
        _, wait = self._wait_params(request)
        want = request.query.get("hash", "")
        content_hash, view = await self._block_until(
            lambda r: not want or r[0] != want, lambda: self.state.agent_service(sid, token), wait, request
        )
        return _json_response(view, headers={"X-Consul-ContentHash": content_hash})

    async def agent_checks(self, request, _rest):
        token = _token(request)
        body = self.state.agent_checks(token)
        return _json_response(body, headers=_filtered_header(token, body))

    async def _check_update(self, request, cid, status):
        self.state.check_update(cid, status, request.query.get("note", ""), _token(request))
        return web.Response(status=200)

    async def check_pass(self, request, cid):
        return await self._check_update(request, cid, "passing")

    async def check_warn(self, request, cid):
        return await self._check_update(request, cid, "warning")

    async def check_fail(self, request, cid):
        return await self._check_update(request, cid, CRITICAL)

    async def service_register(self, request, _rest):
        body = await self._body(request)
        if not isinstance(body, dict):
            raise ConsulError(
                400, "Request decode failed: json: cannot unmarshal into Go value of type structs.ServiceDefinition"
            )
        values = request.query.getall("replace-existing-checks", [])
        # AgentRegisterService: present and "" or "true" means replace.
        replace = bool(values) and request.query.get("replace-existing-checks") in ("", "true")
        self.state.register_service(body, _token(request), replace)
        self.fake._kick_checks()
        return web.Response(status=200)

    async def service_deregister(self, request, sid):
        self.state.deregister_service(sid, _token(request))
        return web.Response(status=200)

    async def connect_authorize(self, request, _rest):
        body = await self._body(request)
        return _json_response(self.state.authorize(body, _token(request)), headers={"X-Cache": "MISS"})

    async def ca_roots(self, request, _rest):
        index, body = await self._block(request, self.state.ca_roots)
        return _json_response(body, headers=self._meta_headers(index))

    async def ca_leaf(self, request, service):
        token = _token(request)
        min_index, wait = self._wait_params(request)
        index, body = await self._block_until(
            lambda r: min_index == 0 or r[0] > min_index,
            lambda: self.state.leaf(service, token, revalidate=min_index == 0),
            wait,
            request,
        )
        return _json_response(body, headers={"X-Consul-Index": str(index), "X-Cache": "MISS"})

    # ------------------------------------------------------------------ catalog / health
    async def catalog_services(self, request, _rest):
        token = _token(request)
        index, body = await self._block(request, lambda: self.state.catalog_services(token))
        return _json_response(body, headers={**self._meta_headers(index), **_filtered_header(token, body)})

    async def catalog_service(self, request, name):
        token = _token(request)
        tags = request.query.getall("tag", [])
        index, body = await self._block(request, lambda: self.state.catalog_service(name, token, tags))
        return _json_response(body, headers={**self._meta_headers(index), **_filtered_header(token, body)})

    async def _health(self, request, name, connect):
        token = _token(request)
        tags = request.query.getall("tag", [])
        passing = "passing" in request.query and request.query.get("passing", "").lower() not in ("0", "false")
        index, body = await self._block(
            request, lambda: self.state.health_service(name, token, passing, tags, connect=connect)
        )
        return _json_response(body, headers={**self._meta_headers(index), **_filtered_header(token, body)})

    async def health_service(self, request, name):
        return await self._health(request, name, False)

    async def health_connect(self, request, name):
        return await self._health(request, name, True)

    async def health_checks(self, request, name):
        token = _token(request)
        index, body = await self._block(request, lambda: self.state.health_checks(name, token))
        return _json_response(body, headers={**self._meta_headers(index), **_filtered_header(token, body)})

    # ------------------------------------------------------------------ config entries
    @staticmethod
    def _cas(request) -> int | None:
        if "cas" not in request.query or request.query["cas"] == "":
            return None
        try:
            return int(request.query["cas"])
        except ValueError:
            raise ConsulError(500, f'strconv.ParseUint: parsing "{request.query["cas"]}": invalid syntax') from None

    async def config_apply(self, request, _rest):
        body = await self._body(request, "Request decoding failed")
        return _json_response(self.state.config_apply(body, self._cas(request), _token(request)))

    async def config(self, request, rest):
        parts = rest.split("/", 1)
        token = _token(request)
        if request.method == "DELETE":
            if len(parts) != 2:
                raise ConsulError(404, "Must provide both a kind and name to delete")
            return _json_response(self.state.config_delete(parts[0], parts[1], self._cas(request), token))
        if len(parts) == 2:
            index, body = await self._block(request, lambda: self.state.config_get(parts[0], parts[1], token))
        elif parts[0]:
            index, body = await self._block(request, lambda: self.state.config_list(parts[0], token))
        else:
            raise ConsulError(404, "Must provide either a kind or both kind and name")
        return _json_response(body, headers=self._meta_headers(index))

    # ------------------------------------------------------------------ intentions
    async def intentions(self, request, _rest):
        if request.method == "POST":
            # The legacy ID-based create is deprecated and not modelled by the fake.
            raise ConsulError(500, "legacy intention create is not supported by this fake agent")
        token = _token(request)
        index, body = await self._block(request, lambda: self.state.intention_list(token))
        return _json_response(body, headers=self._meta_headers(index))

    async def intentions_match(self, request, _rest):
        token = _token(request)
        by = request.query.get("by")
        names = request.query.getall("name", [])
        index, body = await self._block(request, lambda: self.state.intention_match(by, names, token))
        return _json_response(body, headers=self._meta_headers(index))

    async def intentions_check(self, request, _rest):
        body = self.state.intention_check(
            request.query.get("source"), request.query.get("destination"), _token(request)
        )
        return _json_response(body)

    async def intentions_exact(self, request, _rest):
        token = _token(request)
        src, dst = request.query.get("source"), request.query.get("destination")
        if request.method == "PUT":
            body = await self._body(request)
            return _json_response(self.state.intention_put_exact(src, dst, body, token))
        if request.method == "DELETE":
            return _json_response(self.state.intention_delete_exact(src, dst, token))
        index, body = await self._block(request, lambda: self.state.intention_get_exact(src, dst, token))
        return _json_response(body, headers=self._meta_headers(index))

    # ------------------------------------------------------------------ status
    async def status_leader(self, request, _rest):
        return _json_response("127.0.0.1:8300")

    async def status_peers(self, request, _rest):
        return _json_response(["127.0.0.1:8300"])

    # ------------------------------------------------------------------ /_fake knobs
    async def fake_advance(self, request, _rest):
        try:
            seconds = float(request.query.get("seconds", "0"))
        except ValueError:
            raise ConsulError(400, "seconds must be a number") from None
        self.fake.advance(seconds)
        return _json_response({"Index": self.state.index, "Now": self.state.now()})

    async def fake_fault(self, request, _rest):
        """POST: JSON {Method, PathRegex, Status, Times, Body, Hang, Delay}; Hang/Delay true (until
        cleared) or seconds. Delay processes the request then holds the answer (delay_response).

        DELETE clears all faults (and releases hung requests).
        """
        if request.method == "DELETE":
            self.fake.clear_faults()
            return _json_response(True)
        body = await self._body(request)
        if not isinstance(body, dict) or not body.get("PathRegex"):
            raise ConsulError(400, "fault needs a JSON object with PathRegex")
        hang = body.get("Hang")
        delay = body.get("Delay")
        if delay is not None and delay is not False:
            self.fake.delay_response(
                body.get("Method") or "*",
                body["PathRegex"],
                None if delay is True else float(delay),
                times=int(body.get("Times", 1)),
            )
        elif hang is not None and hang is not False:
            seconds = None if hang is True else float(hang)
            self.fake.hang(
                body.get("Method") or "*", body["PathRegex"], times=int(body.get("Times", 1)), seconds=seconds
            )
        else:
            self.fake.fail(
                body.get("Method") or "*",
                body["PathRegex"],
                status=int(body.get("Status", 500)),
                times=int(body.get("Times", 1)),
                body=str(body.get("Body", "injected fault")),
            )
        return _json_response(True)

    async def fake_state(self, request, _rest):
        snap = self.fake.snapshot()
        snap["config_entries"] = {f"{k[0]}/{k[1]}": v for k, v in snap["config_entries"].items()}
        return _json_response(snap)
