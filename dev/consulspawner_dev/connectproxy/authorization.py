"""Authorization: Consul's intention decision (L4 and per request, L7) and the L4 authorize call.

L4: ``POST /v1/agent/connect/authorize`` per connection and on every re-authorization round.
L7: the intentions from the match endpoint evaluated per request, as ``agent/xds/rbac.go``
``makeRBACRules`` compiles them for Envoy's HTTP RBAC filter.
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass

from .agent import ConsulHTTPError, TokenRefused, _check_refused

log = logging.getLogger("connectproxy")

HTTP_LIKE = {"http", "http2", "grpc"}


@dataclass
class Request:
    method: str
    path: str  # without the query string
    headers: list[tuple[str, str]]

    def header(self, name: str) -> str | None:
        """All values of a header joined with ',' (Envoy's getAllOfHeaderAsString); None if absent."""
        values = [v for k, v in self.headers if k.lower() == name.lower()]
        return ",".join(values) if values else None


def _wire(value: str) -> bytes:
    """The bytes a header value had on the wire (parse_head decodes latin-1, one char per byte)."""
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        return value.encode()  # built in a test from text that was never on the wire


def header_matches(rule: dict, request: Request) -> bool:
    name = (rule.get("Name") or "").lower()
    value = request.method if name == ":method" else request.path if name == ":path" else request.header(name)
    invert = bool(rule.get("Invert"))
    if value is None:
        # Envoy: an absent header only matches a Present rule, through its inversion.
        return bool(rule.get("Present")) and invert
    # Envoy matches header bytes (HeaderUtility::matchHeaders on absl::string_view): the request's
    # bytes as they came (latin-1 keeps them 1:1) against the intention's UTF-8 bytes, so a value
    # a client sent latin-1 encoded never equals the same text written in the intention.
    wire = _wire(value)
    if rule.get("Exact"):
        hit = wire == rule["Exact"].encode()
    elif rule.get("Regex"):
        hit = re.fullmatch(rule["Regex"].encode(), wire) is not None
    elif rule.get("Prefix"):
        hit = wire.startswith(rule["Prefix"].encode())
    elif rule.get("Suffix"):
        hit = wire.endswith(rule["Suffix"].encode())
    elif rule.get("Present"):
        hit = True
    else:
        return False  # Consul rejects such a rule; rbac.go skips it -- here it never matches
    return hit != invert


def permission_matches(perm: dict, request: Request) -> bool:
    http = perm.get("HTTP")
    if not http:
        return True  # rbac.go convertPermission: no HTTP part is "any"
    if http.get("PathExact") and request.path != http["PathExact"]:
        return False
    if http.get("PathPrefix") and not request.path.startswith(http["PathPrefix"]):
        return False
    if http.get("PathRegex") and re.fullmatch(http["PathRegex"], request.path) is None:
        return False
    for rule in http.get("Header") or []:
        if not header_matches(rule, request):
            return False
    methods = http.get("Methods") or []
    return not methods or request.method.upper() in {m.upper() for m in methods}


def source_matches(ixn: dict, source: str) -> bool:
    if ixn.get("SourcePeer") or (ixn.get("SourceType") or "consul") != "consul":
        return False
    return ixn.get("SourceName") in (source, "*") and ixn.get("SourceNS", "default") in ("default", "*")


def evaluate(intentions: list[dict], source: str, request: Request | None, default_allow: bool) -> tuple[bool, str]:
    """Consul's intention decision for ``source``; ``request`` None means L4 (L7 counts as deny)."""
    ordered = sorted(intentions, key=lambda i: -int(i.get("Precedence") or 0))  # stable: keeps API order
    for ixn in ordered:
        if not source_matches(ixn, source):
            continue
        label = f"{ixn.get('SourceName')} => {ixn.get('DestinationName')}"
        perms = ixn.get("Permissions") or []
        if not perms:
            return ixn.get("Action") == "allow", f"L4 intention {label}: {ixn.get('Action')}"
        if request is None:
            return False, f"L7 intention {label} on a non-HTTP service counts as deny"
        for i, perm in enumerate(perms):
            if permission_matches(perm, request):
                return perm.get("Action") == "allow", f"L7 intention {label}, permission {i}: {perm.get('Action')}"
        return default_allow, f"L7 intention {label}: no permission matched, default"
    return default_allow, "no intention matched, default"


class Authorizer:
    """The proxy's L4 authorization: per connection, and again for every open connection.

    A connection the intentions no longer allow is drained, not cut: with Envoy the changed
    intentions arrive as a listener update (LDS), and the connections of the replaced filter
    chain are drained for ``--drain-time-s`` (600 s by default; ``drain_strategy`` gradual only
    spreads HTTP connection closes, a TCP proxy connection lives to the end of the drain time),
    then closed (source/server/listener_manager_impl.cc ``drainFilterChains``,
    source/server/options_impl.cc). New connections are refused at once (the new RBAC filter).
    """

    def _drain(self, conn, reason: str) -> None:
        with self._lock:
            if conn.draining or self.stopped.is_set():
                return
            conn.draining = True
            self.counters["drained"] += 1
        log.info("draining connection from %s for %gs: %s", conn.source_uri, self.drain_time, reason)

        def close() -> None:
            self.counters["closed_on_reauthorize"] += 1
            log.info("drain time over: closing connection from %s", conn.source_uri)
            self._forget(conn)
            conn.close()

        timer = threading.Timer(self.drain_time, close)
        timer.daemon = True
        timer.start()

    def authorize(self, uri: str, serial: str) -> tuple[bool, str]:
        """POST /v1/agent/connect/authorize; an error denies (fail closed)."""
        self.counters["authorize"] += 1
        try:
            body, _ = self.agent.call(
                "POST",
                "/v1/agent/connect/authorize",
                body={"Target": self.service, "ClientCertURI": uri, "ClientCertSerial": serial},
            )
        except ConsulHTTPError as e:
            _check_refused(e)
            return False, f"authorize failed: {e}"
        except OSError as e:
            return False, f"authorize failed: {e}"
        return bool((body or {}).get("Authorized")), str((body or {}).get("Reason") or "")

    def _reauthorize_loop(self) -> None:
        while not self.stopped.is_set():
            self._reauth_now.wait(self.reauthorize_interval)
            self._reauth_now.clear()
            if self.stopped.is_set():
                return
            try:
                self.reauthorize()
            except TokenRefused as e:
                log.error("%s; stopping", e)
                self.stop(exit_code=1)
                return

    def reauthorize(self) -> None:
        with self._lock:
            conns = list(self.inbound)
            mode = "http" if self.protocol in HTTP_LIKE else "tcp"
        decisions: dict[tuple[str, str], tuple[bool, str]] = {}
        for conn in conns:
            if conn.mode != mode:
                reason = f"protocol changed to {self.protocol}"
                allowed = False
            elif conn.mode == "http":
                continue  # every request is checked
            else:
                key = (conn.source_uri, conn.serial)
                if key not in decisions:
                    decisions[key] = self.authorize(*key)
                allowed, reason = decisions[key]
            if not allowed:
                self._drain(conn, reason)
