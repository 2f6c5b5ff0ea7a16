"""Our only door to Consul: a small async HTTP client of our own, on aiohttp.

Why not py-consul: its high-level API reads ``CONSUL_HTTP_TOKEN`` from the environment over an
explicit token, some calls (``agent.service_definition``) send no token at all, and
``agent.connect.authorize`` uses PUT where Consul accepts only POST; and using only its
transport would mean calling its private methods, which may change in any release. The
endpoints we need are few and documented (developer.hashicorp.com/consul/api-docs), so this
module owns the session, TLS, paths, headers and error mapping: exactly one place where a token
is put on the wire.

Rules this module keeps:

- a token only ever travels in the ``X-Consul-Token`` header, never in a URL, a log line or an
  exception message (error texts are scrubbed of anything shaped like a Consul secret: a UUID,
  whether or not this client has seen it);
- every failure is one exception type, :class:`ConsulError`, naming the call and the status;
- "already gone" (404 on a delete) is an answer, not an error: deletes return False.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import re
import ssl
import time
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import yarl

log = logging.getLogger(__name__)

# Consul's documented blocking-query default is 5 minutes; we never wait that long from a hub.
_BLOCKING_MARGIN = 5.0
_DETAIL_MAX = 300


class ConsulError(Exception):
    """A Consul call failed: which call (method and path), the HTTP status (None when Consul
    was unreachable or too slow) and what Consul said, with secrets removed."""

    def __init__(self, call: str, status: int | None, detail: str):
        self.call = call
        self.status = status
        self.detail = detail
        shown = status if status is not None else "no answer"
        super().__init__(f"Consul call {call} failed ({shown}): {detail}")

    @property
    def retryable(self) -> bool:
        """Transport failures and server errors may pass; 4xx answers will not change."""
        return self.status is None or self.status >= 500 or self.status == 429


@dataclass(frozen=True)
class ConsulResponse:
    status: int
    headers: Mapping[str, str]  # aiohttp's case-insensitive multidict
    body: Any

    @property
    def index(self) -> int:
        return int(self.headers.get("X-Consul-Index", "0") or 0)


# Consul ACL secrets are UUIDs. Redacting by shape catches secrets this process never saw (a
# body echoing someone else's token); accessor IDs in error texts go too, which costs nothing.
_UUID_SHAPE = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
# A JWT (three base64url parts, the first a JSON header: "eyJ"), redacted by shape as well.
_JWT_SHAPE = re.compile(r"eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")


def _redact(text: str, secrets: Iterable[str | None] = ()) -> str:
    """``text`` without anything shaped like a Consul token, nor any of ``secrets`` (a site may
    configure a hub token that is not a UUID)."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "<redacted>")
    return _JWT_SHAPE.sub("<redacted>", _UUID_SHAPE.sub("<redacted>", text))


def _token_gone(error: ConsulError) -> bool:
    """Consul's answer for a token it does not know: 403 "ACL not found" (acl.ErrNotFound,
    from resolving the request's own token) or 404 on lookups by accessor."""
    return error.status == 404 or (error.status == 403 and "acl not found" in error.detail.lower())


def _segment(value: str) -> str:
    """One path segment. py-consul's transport percent-encodes the path itself, so we only
    refuse what would change the path's shape; our IDs are DNS labels and UUIDs anyway."""
    if not value or "/" in value or value in (".", ".."):
        raise ValueError(f"{value!r} cannot be a Consul path segment")
    return value


def parse_address(address: str) -> tuple[str, str, int]:
    """``http(s)://host:port`` or ``host:port`` (as CONSUL_HTTP_ADDR) -> scheme, host, port."""
    if "//" not in address:
        address = "http://" + address
    parsed = urllib.parse.urlsplit(address)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ValueError(f"Consul address {address!r} is not http(s)://host:port")
    try:
        port = parsed.port or (443 if parsed.scheme == "https" else 8500)
    except ValueError as e:
        raise ValueError(f"Consul address {address!r} has an invalid port") from e
    if parsed.username or parsed.password or parsed.query:
        # A token smuggled into the address would end up in logs; refuse it outright.
        raise ValueError("Consul address must not carry credentials or a query string")
    return parsed.scheme, parsed.hostname, port


class ConsulClient:
    """Async access to the Consul agent API for one hub (or janitor) identity.

    ``token`` is the caller's own token (the hub's): it needs ``acl:write`` to mint server
    tokens, ``service:write`` on the managed services and ``intentions:write`` on the
    destinations. Calls made for one server pass that server's token instead.

    The aiohttp session is created lazily inside the running loop, as py-consul requires.
    """

    def __init__(
        self,
        address: str = "http://127.0.0.1:8500",
        token: str | None = None,
        *,
        ca_file: str | None = None,
        client_cert: str | None = None,
        client_key: str | None = None,
        datacenter: str | None = None,
        request_timeout: float = 10.0,
    ):
        self.scheme, self.host, self.port = parse_address(address)
        self._token = token or None
        self._ca_file = ca_file
        self._client_cert = client_cert
        self._client_key = client_key
        self.datacenter = datacenter
        self.request_timeout = request_timeout
        self._session: aiohttp.ClientSession | None = None
        # The configured token, for scrubbing when it is not UUID-shaped; the rest is redacted by shape.
        self._secrets: set[str] = {token} if token else set()

    @property
    def address(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"

    def remember_secret(self, secret: str | None) -> None:
        """Scrub ``secret`` from error texts even if it is not UUID-shaped (a handful at most:
        the hub's own token and per-call tokens; minted secrets are UUIDs and redacted by shape)."""
        if secret and not _UUID_SHAPE.fullmatch(secret):
            self._secrets.add(secret)

    def _ssl_context(self) -> ssl.SSLContext | None:
        if self.scheme != "https":
            return None
        context = ssl.create_default_context(cafile=self._ca_file)
        if self._client_cert:
            context.load_cert_chain(self._client_cert, self._client_key)
        return context

    def _http(self) -> aiohttp.ClientSession:
        # Created inside the running loop: an aiohttp session belongs to the loop that made it.
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(ssl=self._ssl_context() or False)
            self._session = aiohttp.ClientSession(connector=connector)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> ConsulClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- the one request path -------------------------------------------------------------------

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        body: Any = None,
        token: str | None = None,
        anonymous: bool = False,
        timeout: float | None = None,
        ok: Iterable[int] = (200,),
    ) -> ConsulResponse:
        """One HTTP call; raises ConsulError unless the status is in ``ok``. ``anonymous``
        sends no token at all (a login must not carry one)."""
        call = f"{method} {path}"
        token = None if anonymous else token or self._token
        self.remember_secret(token)
        headers = {"X-Consul-Token": token} if token else {}
        query = dict(params or {})
        if self.datacenter and path.startswith(("/v1/catalog", "/v1/health", "/v1/config", "/v1/acl")):
            query.setdefault("dc", self.datacenter)
        data = json.dumps(body) if body is not None else None
        url = yarl.URL(f"{self.address}{urllib.parse.quote(path, safe='/:@')}", encoded=True)
        url = url.with_query({key: str(value) for key, value in query.items()}) if query else url
        deadline = timeout or self.request_timeout
        log.debug("Consul %s %s", method, path)

        async def exchange():
            async with self._http().request(method, url, headers=headers, data=data) as response:
                return response.status, await response.text(), response.headers

        try:
            # asyncio.timeout, not wait_for: Python 3.11's wait_for drops a cancellation that
            # arrives as the call finishes (a stop cancelling the keeper then waits forever).
            async with asyncio.timeout(deadline):
                status, text, response_headers = await exchange()
        except TimeoutError as e:
            raise ConsulError(call, None, f"no answer within {deadline:g}s") from e
        except (aiohttp.ClientError, OSError, ssl.SSLError) as e:
            raise ConsulError(call, None, _redact(f"{type(e).__name__}: {e}", self._secrets)) from e
        if status not in ok:
            detail = _redact(text.strip()[:_DETAIL_MAX], self._secrets) or "(empty body)"
            raise ConsulError(call, status, detail)
        try:
            parsed = json.loads(text) if text.strip() else None
        except json.JSONDecodeError:
            parsed = text
        return ConsulResponse(status, response_headers, parsed)

    async def retrying(self, what, *, budget: float = 15.0, first_delay: float = 0.2, max_delay: float = 3.0):
        """Await ``what()`` until it succeeds, a non-retryable ConsulError, or ``budget`` seconds.

        Jittered exponential backoff (as JupyterHub's ``exponential_backoff``) so a hub with many
        spawners does not hammer a recovering Consul in lockstep.
        """
        deadline = time.monotonic() + budget
        delay = first_delay
        while True:
            try:
                return await what()
            except ConsulError as e:
                remaining = deadline - time.monotonic()
                if not e.retryable or remaining <= 0:
                    raise
                pause = min(random.uniform(0, delay), remaining)
                log.debug("Retrying after %s (%.2fs)", e, pause)
                await asyncio.sleep(pause)
                delay = min(delay * 2, max_delay)

    # -- agent ----------------------------------------------------------------------------------

    async def register_service(self, definition: dict, *, token: str | None = None) -> None:
        """Register (or replace, same ID) a service on the local agent, checks included.

        ``replace-existing-checks`` makes re-registration idempotent: Consul drops checks that
        the new definition no longer has instead of keeping stale ones.
        """
        await self.request(
            "PUT",
            "/v1/agent/service/register",
            params={"replace-existing-checks": "true"},
            body=definition,
            token=token,
        )

    async def deregister_service(self, service_id: str, *, token: str | None = None) -> bool:
        """Deregister a service (its sidecar goes with it); False when it was already gone."""
        path = f"/v1/agent/service/deregister/{_segment(service_id)}"
        response = await self.request("PUT", path, token=token, ok=(200, 404))
        return response.status == 200

    async def agent_service(self, service_id: str, *, token: str | None = None) -> dict | None:
        path = f"/v1/agent/service/{_segment(service_id)}"
        response = await self.request("GET", path, token=token, ok=(200, 404))
        return response.body if response.status == 200 else None

    async def agent_services(self, *, filter_expr: str | None = None) -> dict[str, dict]:
        params = {"filter": filter_expr} if filter_expr else None
        return (await self.request("GET", "/v1/agent/services", params=params)).body or {}

    async def agent_checks(self, *, filter_expr: str | None = None) -> dict[str, dict]:
        params = {"filter": filter_expr} if filter_expr else None
        return (await self.request("GET", "/v1/agent/checks", params=params)).body or {}

    async def pass_ttl(self, check_id: str, note: str = "", *, token: str | None = None) -> None:
        path = f"/v1/agent/check/pass/{_segment(check_id)}"
        await self.request("PUT", path, params={"note": note} if note else None, token=token)

    async def health_service(
        self, name: str, *, passing: bool = False, index: int | None = None, wait: float | None = None
    ) -> tuple[int, list[dict]]:
        """Instances of a service with their checks; a blocking query when ``index`` is given."""
        params: dict[str, Any] = {}
        if passing:
            params["passing"] = "1"
        timeout = None
        if index is not None:
            params["index"] = index
            if wait is not None:
                params["wait"] = f"{max(1, int(wait))}s"
                timeout = wait + _BLOCKING_MARGIN
        path = f"/v1/health/service/{_segment(name)}"
        response = await self.request("GET", path, params=params, timeout=timeout)
        return response.index, response.body or []

    async def catalog_services(self) -> dict[str, list[str]]:
        return (await self.request("GET", "/v1/catalog/services")).body or {}

    # -- login identities (JWT auth method) -----------------------------------------------------

    async def login(self, auth_method: str, bearer_jwt: str, meta: dict[str, str]) -> dict:
        """Exchange a JWT for a token at ``auth_method`` (``POST /v1/acl/login``, docs:
        api-docs/acl#login-to-auth-method). Sent with no token: the HTTP handler passes none
        (agent/acl_endpoint.go ACLLogin) and the ACL.Login RPC refuses one. ``meta`` becomes the token's Description
        (agent/consul/auth/login.go BuildTokenDescription). The answer holds the SecretID:
        callers keep it out of logs."""
        body = {"AuthMethod": auth_method, "BearerToken": bearer_jwt, "Meta": meta}
        self.remember_secret(bearer_jwt)
        return (await self.request("POST", "/v1/acl/login", body=body, anonymous=True)).body

    async def logout(self, secret: str) -> bool:
        """Destroy a login-made token with its own secret (``POST /v1/acl/logout``); False when
        it was already gone (expired, logged out, or deleted)."""
        try:
            await self.request("POST", "/v1/acl/logout", token=secret)
        except ConsulError as e:
            if _token_gone(e):
                return False
            raise
        return True

    async def token_self(self, secret: str) -> dict | None:
        """The token ``secret`` names (``GET /v1/acl/token/self``), None when Consul no longer
        knows it. Nomad's TokenPreflightCheck: a fresh token may not have reached the server
        that answers, so callers retry a None for a few seconds before believing it."""
        try:
            return (await self.request("GET", "/v1/acl/token/self", token=secret)).body
        except ConsulError as e:
            if _token_gone(e):
                return None
            raise

    async def acl_authorize(self, checks: list[dict[str, str]]) -> list[bool]:
        """What this client's token may do (``POST /v1/internal/acl/authorize``, at most 64
        checks: agent/acl_endpoint.go ACLAuthorize), e.g. ``{"Resource": "acl", "Access":
        "write"}``; one bool per check, in order."""
        answers = (await self.request("POST", "/v1/internal/acl/authorize", body=checks)).body or []
        return [bool(answer.get("Allow")) for answer in answers]

    # -- config entries -------------------------------------------------------------------------

    async def get_config(self, kind: str, name: str) -> dict | None:
        path = f"/v1/config/{kind}/{_segment(name)}"
        response = await self.request("GET", path, ok=(200, 404))
        return response.body if response.status == 200 else None

    async def list_config(self, kind: str) -> list[dict]:
        return (await self.request("GET", f"/v1/config/{kind}")).body or []

    async def set_config(self, entry: dict, *, cas: int | None = None) -> bool:
        """Write a config entry; with ``cas`` only if its ModifyIndex still matches (0: create
        only). Consul answers ``true``/``false``; False means someone else wrote first."""
        params = {"cas": cas} if cas is not None else None
        response = await self.request("PUT", "/v1/config", params=params, body=entry)
        return response.body is True

    async def delete_config(self, kind: str, name: str, *, cas: int | None = None) -> bool:
        path = f"/v1/config/{kind}/{_segment(name)}"
        params = {"cas": cas} if cas is not None else None
        response = await self.request("DELETE", path, params=params, ok=(200, 404))
        if response.status == 404:
            return False
        body = response.body
        # With cas Consul answers {"Deleted": bool} (newer) or a bare bool; without, an empty object.
        if isinstance(body, dict) and "Deleted" in body:
            return bool(body["Deleted"])
        return body is not False
