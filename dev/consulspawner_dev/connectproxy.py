#!/usr/bin/env python3
"""Development stand-in for a Consul Connect sidecar proxy with a real data path (stdlib only).

It is not Envoy. It implements Consul's custom-proxy contract ("Custom Proxy Configuration for
Service Mesh", ``website/content/docs/connect/proxies/integrate.mdx``) closely enough that the
mesh tests and the demo exercise mutual TLS, intentions and revocation for real::

    connectproxy -sidecar-for <service-id> [-token-file PATH] [-http-addr URL] [-ca-file PATH]
                 [-admin-socket /consul/admin.sock] [-reauthorize-interval 5]
    connectproxy ready [-admin-socket /consul/admin.sock]     # exit 0 once the proxy is ready

``-http-addr`` defaults to ``$CONSUL_HTTP_ADDR`` (else 127.0.0.1:8500), ``-ca-file`` to
``$CONSUL_CACERT``; the token comes from ``-token-file``, else ``$CONSUL_HTTP_TOKEN_FILE``, else
``$CONSUL_HTTP_TOKEN``, and is only ever sent in the ``X-Consul-Token`` header.

Configuration. It runs exactly what was registered: ``GET /v1/agent/service/<id>-sidecar-proxy``
(followed with hash-based blocking queries). One listener per ``Proxy.Upstreams[i]`` on
``LocalBindAddress`` (default 127.0.0.1) : ``LocalBindPort``, and the public listener on the
registered ``Port``, bound to ``Proxy.Config.bind_address``, else the registration's
``Address``, else 0.0.0.0 (Consul's ``makePublicListener`` order). Allowed inbound connections
go to ``Proxy.LocalServiceAddress`` (default 127.0.0.1) : ``Proxy.LocalServicePort``.

Certificates. The leaf of the parent service (``/v1/agent/connect/ca/leaf/<DestinationServiceName>``)
and the roots (``/v1/agent/connect/ca/roots``, every root in ``Roots`` is trusted) are kept up to
date with index-based blocking queries; a renewed leaf or rotated root is used for every new
connection without a restart, open connections keep their session. Keys are loaded from
``memfd`` files (never written to disk).

Outbound (upstream listeners). For each accepted connection: healthy mesh endpoints from
``/v1/health/connect/<destination>?passing=1`` (just-in-time, as Consul's built-in proxy does),
TLS with our leaf as client certificate, the server's chain verified against the roots and its
URI SAN required to be ``spiffe://<trust-domain>/ns/default/dc/<dc>/svc/<destination>`` (Envoy's
upstream ``match_subject_alt_names``); then bytes are copied both ways.

Inbound (public listener). A client certificate chaining to the roots is required (no
certificate, or one from another CA: the handshake fails). What happens next depends on the
protocol of our own service: ``Proxy.Config.protocol`` of the registration, else the
``service-defaults`` entry's ``Protocol`` (``/v1/config/service-defaults/<name>``, 404: none),
else ``proxy-defaults/global`` ``Config.protocol``, else ``tcp`` -- all three followed with
blocking queries.

* ``tcp`` (L4): each connection is authorized with ``POST /v1/agent/connect/authorize``
  (``Target`` = our service, ``ClientCertURI``, ``ClientCertSerial``), as the contract asks
  ("called in the connection path for each received connection"); a denied connection is
  closed right after the handshake, before a byte reaches the app. Open connections are
  re-authorized every ``-reauthorize-interval`` seconds (default 5) and at once whenever the
  intentions for our service change (a blocking query on
  ``/v1/connect/intentions/match?by=destination&name=<service>``), and those now denied are
  closed: the contract's second strategy for "persistent TCP connections and intentions".
  5 s bounds how long a revoked analyst keeps a Trino connection if an intention-change
  notification is missed (agent restart, network blip); the authorize call is answered from
  the agent's cache, so a few calls per open connection per interval cost nothing measurable.
* ``http``/``http2``/``grpc`` (L7): as Consul configures Envoy (``agent/xds/rbac.go``): with an
  HTTP protocol the inbound listener has *no* network RBAC filter; the TLS connection is
  accepted and every request goes through the HTTP RBAC filter built from the intentions. So
  the L4 authorize endpoint -- which counts intentions with ``Permissions`` as deny -- is not
  used here; the intentions from the match endpoint are evaluated per request, highest
  precedence first (``IntentionPrecedenceSorter``; the match endpoint already sorts): the
  first intention whose source is the caller (or ``*``) decides -- an L4 one by its ``Action``,
  an L7 one by its first matching permission (``PathExact``/``PathPrefix``/``PathRegex``,
  ``Header`` ``Exact``/``Prefix``/``Suffix``/``Regex``/``Present`` with ``Invert``,
  ``Methods``; all parts of a permission must match; regexes must match the whole value as
  Envoy's RE2 ``safe_regex`` does; paths are compared without the query string) and, when none
  matches, the default. Without a matching intention the default applies. This is what
  ``makeRBACRules`` compiles to (lower-precedence intentions for the same source are NOT-ed
  out, unmatched L7 requests fall through to the default action). The default is the agent's
  ``X-Consul-Default-ACL-Policy`` header ("This is also the default intention enforcement
  action if no intention matches", api-docs/api-structure). A denied request is answered
  ``403`` with the body ``RBAC: access denied`` (Envoy's RBAC filter) and the connection stays
  usable. An absent header never matches ``Exact``/``Prefix``/``Suffix``/``Regex``, inverted or
  not (Envoy's ``HeaderUtility::matchHeaders``). Like Envoy (``SANITIZE_SET``), the request
  reaches the app with ``X-Forwarded-Client-Cert: By=<our SPIFFE ID>;Hash=<sha256 of the peer
  certificate>;Subject="";URI=<peer SPIFFE ID>`` replacing whatever the caller sent.

Readiness. Like Envoy's admin ``/ready``: ``GET /ready`` answers ``200 LIVE`` once the
listeners are bound and the leaf and roots are loaded, else ``503`` with the state. The admin
endpoint (``/ready``, ``/status`` as JSON) listens ONLY on a unix socket (``-admin-socket``,
default ``/consul/admin.sock``, mode 0600), never on TCP: the notebook container shares the
sidecar's network namespace, so any TCP port, even on 127.0.0.1, would be reachable from the
notebook, while a filesystem socket in the sidecar's own mount namespace is not.
``connectproxy ready -admin-socket PATH`` is the probe (``docker exec``, HEALTHCHECK).

Failure. SIGTERM/SIGINT stop it cleanly (exit 0). A token Consul refuses (``403 ACL not
found``) is fatal at start and later (exit 1): a sidecar whose token was deleted must not keep
serving on cached credentials. Other agent errors are retried with back-off while the last
known configuration keeps serving ("fail static", as the contract recommends).

In-process use (tests)::

    proxy = ConnectProxy(Agent(url, token), "jupyter-alice-sidecar-proxy", admin_socket=path)
    proxy.start(timeout=30)    # raises ProxyError if it cannot become ready
    ...
    proxy.stop()
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.server
import json
import logging
import os
import random
import re
import select
import signal
import socket
import socketserver
import ssl
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field

log = logging.getLogger("connectproxy")

DEFAULT_HTTP_ADDR = "127.0.0.1:8500"
DEFAULT_ADMIN_SOCKET = "/consul/admin.sock"
DEFAULT_REAUTHORIZE_INTERVAL = 5.0
BLOCKING_WAIT = 30.0  # seconds per blocking query (Consul's default is 5 min; shorter wakes for stop)
HANDSHAKE_TIMEOUT = 10.0
CONNECT_TIMEOUT = 5.0
IO_TIMEOUT = 60.0  # a peer that accepts no data for this long is dropped
HTTP_LIKE = {"http", "http2", "grpc"}
MAX_HEAD = 64 * 1024
RBAC_DENIED = b"RBAC: access denied"
_SPIFFE = re.compile(r"^spiffe://(?P<host>[^/]+)(?:/ap/[^/]+)?/ns/(?P<ns>[^/]+)/dc/(?P<dc>[^/]+)/svc/(?P<svc>[^/]+)$")


class ProxyError(Exception):
    """The proxy cannot run (bad configuration, refused token, unbindable port)."""


class ConsulHTTPError(Exception):
    def __init__(self, status: int, text: str, path: str):
        super().__init__(f"{status} {text.strip()} ({path})")
        self.status = status
        self.text = text


class TokenRefused(ProxyError):
    """The agent does not know our token: 403 "ACL not found"."""


def _check_refused(err: ConsulHTTPError) -> None:
    if err.status == 403 and "ACL not found" in err.text:
        raise TokenRefused(f"the Consul agent refused the proxy's token: {err}") from None


# ---------------------------------------------------------------------------------------- agent
class Agent:
    """The Consul HTTP calls the proxy makes. The token never leaves the X-Consul-Token header."""

    def __init__(self, http_addr: str, token: str | None = None, ca_file: str | None = None):
        addr = http_addr.strip()
        if "://" not in addr:
            addr = "http://" + addr
        self.base = addr.rstrip("/")
        self._token = token
        self._ssl = ssl.create_default_context(cafile=ca_file) if self.base.startswith("https:") else None

    def call(
        self, method: str, path: str, query: dict | None = None, body=None, timeout: float = 10.0
    ) -> tuple[object, dict]:
        """JSON body and headers; ConsulHTTPError for an HTTP error, OSError if unreachable."""
        url = self.base + path + ("?" + urllib.parse.urlencode(query) if query else "")
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(url, data=data, method=method)
        if self._token:
            request.add_header("X-Consul-Token", self._token)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=timeout, context=self._ssl) as response:
                raw = response.read()
                return (json.loads(raw) if raw.strip() else None), dict(response.headers.items())
        except urllib.error.HTTPError as e:
            text = e.read().decode("utf-8", "replace")
            e.close()
            raise ConsulHTTPError(e.code, text, path) from None
        except urllib.error.URLError as e:
            raise OSError(f"cannot reach the Consul agent at {self.base}: {e.reason}") from None
        except (TimeoutError, ValueError) as e:
            raise OSError(f"bad answer from the Consul agent at {self.base}{path}: {e}") from None

    def blocking(self, path: str, index: int | None, wait: float = BLOCKING_WAIT, query: dict | None = None):
        """(body or None on 404, index, headers) of an index-based blocking query."""
        q = dict(query or {})
        if index:
            q.update(index=str(index), wait=f"{int(wait)}s")
        try:
            body, headers = self.call("GET", path, q, timeout=10.0 + wait * 1.1)
        except ConsulHTTPError as e:
            _check_refused(e)
            if e.status == 404:
                return None, index or 0, {}
            raise
        lowered = {k.lower(): v for k, v in headers.items()}
        try:
            new_index = int(lowered.get("x-consul-index") or 0)
        except ValueError:
            new_index = 0
        return body, new_index, lowered


# ---------------------------------------------------------------------------------------- certs
def _memfile(data: str) -> str:
    """A path holding ``data`` that never touches a filesystem (memfd), else a private temp file."""
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("connectproxy", 0)
        os.write(fd, data.encode())
        return f"/proc/self/fd/{fd}"
    fd, path = tempfile.mkstemp(prefix="connectproxy-")
    os.write(fd, data.encode())
    os.close(fd)
    return path


def _release(path: str) -> None:
    if path.startswith("/proc/self/fd/"):
        with contextlib.suppress(OSError):
            os.close(int(path.rsplit("/", 1)[1]))
    else:
        with contextlib.suppress(OSError):
            os.unlink(path)


def spiffe_of(peercert: dict) -> str:
    for kind, value in peercert.get("subjectAltName") or ():
        if kind == "URI" and value.startswith("spiffe://"):
            return value
    return ""


def serial_of(peercert: dict) -> str:
    """connect.EncodeSerialNumber: colon-separated lower-case hex of the serial's bytes."""
    n = int(peercert.get("serialNumber") or "0", 16)
    raw = n.to_bytes(max(1, (n.bit_length() + 7) // 8), "big")
    return ":".join(f"{b:02x}" for b in raw)


@dataclass
class Material:
    """One generation of leaf + roots, and the TLS contexts built from them."""

    leaf: dict
    roots: dict
    server: ssl.SSLContext
    client: ssl.SSLContext

    @property
    def trust_domain(self) -> str:
        return self.roots.get("TrustDomain") or ""

    @property
    def active_root_id(self) -> str:
        return self.roots.get("ActiveRootID") or ""


def build_material(leaf: dict, roots: dict) -> Material:
    cadata = "".join(
        (r.get("RootCert") or "") + "".join(r.get("IntermediateCerts") or []) for r in roots.get("Roots") or []
    )
    if not cadata:
        raise ProxyError("the Connect CA has no roots")
    cert_path = _memfile(leaf["CertPEM"])
    key_path = _memfile(leaf["PrivateKeyPEM"])
    try:
        server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        for ctx in (server, client):
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            ctx.load_cert_chain(cert_path, key_path)
            ctx.load_verify_locations(cadata=cadata)
            ctx.verify_mode = ssl.CERT_REQUIRED
        client.check_hostname = False  # identity is the SPIFFE URI SAN, checked after the handshake
    finally:
        _release(cert_path)
        _release(key_path)
    return Material(leaf=leaf, roots=roots, server=server, client=client)


# ---------------------------------------------------------------------------------------- L7 RBAC
@dataclass
class Request:
    method: str
    path: str  # without the query string
    headers: list[tuple[str, str]]

    def header(self, name: str) -> str | None:
        """All values of a header joined with ',' (Envoy's getAllOfHeaderAsString); None if absent."""
        values = [v for k, v in self.headers if k.lower() == name.lower()]
        return ",".join(values) if values else None


def header_matches(rule: dict, request: Request) -> bool:
    name = (rule.get("Name") or "").lower()
    value = request.method if name == ":method" else request.path if name == ":path" else request.header(name)
    invert = bool(rule.get("Invert"))
    if value is None:
        # Envoy: an absent header only matches a Present rule, through its inversion.
        return bool(rule.get("Present")) and invert
    if rule.get("Exact"):
        hit = value == rule["Exact"]
    elif rule.get("Regex"):
        hit = re.fullmatch(rule["Regex"], value) is not None
    elif rule.get("Prefix"):
        hit = value.startswith(rule["Prefix"])
    elif rule.get("Suffix"):
        hit = value.endswith(rule["Suffix"])
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


# ---------------------------------------------------------------------------------------- HTTP
class Stream:
    """Buffered reads on a socket for HTTP/1.x framing."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buf = b""

    def _fill(self) -> bool:
        chunk = self.sock.recv(65536)
        if not chunk:
            return False
        self.buf += chunk
        return True

    def head(self) -> bytes | None:
        """Bytes up to and including the blank line; None on a clean EOF before any byte."""
        while b"\r\n\r\n" not in self.buf:
            if len(self.buf) > MAX_HEAD:
                raise ValueError("HTTP head too large")
            if not self._fill():
                if self.buf:
                    raise ValueError("connection closed inside an HTTP head")
                return None
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        return head + b"\r\n\r\n"

    def line(self) -> bytes:
        while b"\r\n" not in self.buf:
            if len(self.buf) > MAX_HEAD:
                raise ValueError("HTTP line too long")
            if not self._fill():
                raise ValueError("connection closed inside a chunk")
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line + b"\r\n"

    def exactly(self, n: int, sink) -> None:
        while n > 0:
            if not self.buf and not self._fill():
                raise ValueError("connection closed inside a body")
            piece, self.buf = self.buf[:n], self.buf[n:]
            n -= len(piece)
            sink(piece)

    def chunked(self, sink) -> None:
        while True:
            size_line = self.line()
            sink(size_line)
            size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                while True:  # trailers, then the blank line
                    trailer = self.line()
                    sink(trailer)
                    if trailer == b"\r\n":
                        return
            self.exactly(size + 2, sink)

    def until_close(self, sink) -> None:
        if self.buf:
            sink(self.buf)
            self.buf = b""
        while True:
            chunk = self.sock.recv(65536)
            if not chunk:
                return
            sink(chunk)


def parse_head(head: bytes) -> tuple[str, list[tuple[str, str]]]:
    lines = head.decode("latin-1").split("\r\n")
    headers = []
    for line in lines[1:]:
        if not line:
            continue
        if ":" not in line:
            raise ValueError(f"bad header line {line!r}")
        k, v = line.split(":", 1)
        headers.append((k.strip(), v.strip()))
    return lines[0], headers


def _get(headers: list[tuple[str, str]], name: str) -> str | None:
    for k, v in headers:
        if k.lower() == name:
            return v
    return None


def body_framing(headers: list[tuple[str, str]]) -> tuple[str, int]:
    te = (_get(headers, "transfer-encoding") or "").lower()
    if "chunked" in te:
        return "chunked", 0
    cl = _get(headers, "content-length")
    if cl is not None:
        return "length", int(cl)
    return "none", 0


def wants_close(version: str, headers: list[tuple[str, str]]) -> bool:
    conn = (_get(headers, "connection") or "").lower()
    return "close" in conn or (version == "HTTP/1.0" and "keep-alive" not in conn)


# ---------------------------------------------------------------------------------------- plumbing
def _close(*socks) -> None:
    for s in socks:
        if s is None:
            continue
        with contextlib.suppress(OSError, ValueError):
            s.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError, ValueError):
            s.close()


def pump(a: socket.socket, b: socket.socket) -> None:
    """Copy bytes both ways until either side closes (one thread, so TLS objects are never shared)."""
    socks = [a, b]
    try:
        while True:
            ready = [s for s in socks if isinstance(s, ssl.SSLSocket) and s.pending()]
            if not ready:
                ready, _, _ = select.select(socks, [], [], 1.0)
            for s in ready:
                data = s.recv(65536)
                if not data:
                    return
                (b if s is a else a).sendall(data)
    except (OSError, ValueError):
        return
    finally:
        _close(a, b)


@dataclass(frozen=True)
class ListenerSpec:
    kind: str  # "public" or "upstream"
    host: str
    port: int
    destination: str  # upstream destination name ("" for public)


@dataclass(eq=False)
class Inbound:
    """An open inbound connection, for re-authorization."""

    source_uri: str
    serial: str
    mode: str  # "tcp" or "http"
    socks: list = field(default_factory=list)

    def close(self) -> None:
        _close(*self.socks)


class Listener:
    def __init__(self, spec: ListenerSpec, handle):
        self.spec = spec
        family = socket.AF_INET6 if ":" in spec.host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.sock.bind((spec.host, spec.port))
            self.sock.listen(128)
        except OSError as e:
            self.sock.close()
            raise ProxyError(
                f"cannot listen on {spec.host}:{spec.port} ({spec.kind} {spec.destination}): {e}"
            ) from None
        self.handle = handle
        threading.Thread(target=self._accept, name=f"accept-{spec.port}", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            self.handle(conn, self.spec)
        except Exception:
            log.exception("connection on %s:%d failed", self.spec.host, self.spec.port)
            _close(conn)

    def close(self) -> None:
        _close(self.sock)


def listener_specs(registration: dict) -> set[ListenerSpec]:
    proxy = registration.get("Proxy") or {}
    config = proxy.get("Config") or {}
    host = config.get("bind_address") or registration.get("Address") or "0.0.0.0"
    port = int(config.get("bind_port") or registration.get("Port") or 0)
    specs = {ListenerSpec("public", host, port, "")} if port else set()
    for up in proxy.get("Upstreams") or []:
        if (up.get("DestinationType") or "service") != "service":
            log.warning("upstream %s: only service upstreams are supported; skipped", up.get("DestinationName"))
            continue
        if not up.get("LocalBindPort"):
            log.warning("upstream %s has no LocalBindPort (sockets unsupported); skipped", up.get("DestinationName"))
            continue
        specs.add(
            ListenerSpec(
                "upstream", up.get("LocalBindAddress") or "127.0.0.1", int(up["LocalBindPort"]), up["DestinationName"]
            )
        )
    return specs


# ---------------------------------------------------------------------------------------- admin
class _AdminServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


def _admin_handler(proxy: ConnectProxy):
    class Handler(http.server.BaseHTTPRequestHandler):
        server_version = "connectproxy"

        def address_string(self):
            return "admin-socket"

        def log_message(self, fmt, *args):
            log.debug("admin: " + fmt, *args)

        def do_GET(self):
            if self.path == "/ready":
                state = proxy.state
                status, body = (200, "LIVE\n") if state == "LIVE" else (503, state + "\n")
                ctype = "text/plain"
            elif self.path == "/status":
                status, body, ctype = 200, json.dumps(proxy.status(), indent=2) + "\n", "application/json"
            else:
                status, body, ctype = 404, "not found\n", "text/plain"
            data = body.encode()
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return Handler


def _bind_admin(path: str, proxy: ConnectProxy) -> _AdminServer:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    if os.path.lexists(path):
        import stat

        if not stat.S_ISSOCK(os.lstat(path).st_mode):
            raise ProxyError(f"admin socket path {path} exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX)
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)  # stale, from a proxy that died
        else:
            raise ProxyError(f"another proxy answers on the admin socket {path}")
        finally:
            probe.close()
    # Bind under a temporary name, restrict it, then move it into place: never world-reachable.
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.{random.randrange(1 << 30)}")
    server = _AdminServer(tmp, _admin_handler(proxy), bind_and_activate=True)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    server.server_address = path
    return server


def probe_ready(path: str, timeout: float = 3.0) -> tuple[int, str]:
    """(HTTP status, body) of GET /ready on the admin socket; (0, reason) if it does not answer."""
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(timeout)
    try:
        s.connect(path)
        s.sendall(b"GET /ready HTTP/1.0\r\nHost: admin\r\n\r\n")
        data = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    except OSError as e:
        return 0, str(e)
    finally:
        s.close()
    head, _, body = data.partition(b"\r\n\r\n")
    try:
        status = int(head.split(b" ", 2)[1])
    except (IndexError, ValueError):
        return 0, "bad answer"
    return status, body.decode(errors="replace").strip()


# ---------------------------------------------------------------------------------------- proxy
class ConnectProxy:
    def __init__(
        self,
        agent: Agent,
        proxy_id: str,
        admin_socket: str | None = DEFAULT_ADMIN_SOCKET,
        reauthorize_interval: float = DEFAULT_REAUTHORIZE_INTERVAL,
        blocking_wait: float = BLOCKING_WAIT,
    ):
        self.agent = agent
        self.proxy_id = proxy_id
        self.admin_socket = admin_socket
        self.reauthorize_interval = reauthorize_interval
        self.blocking_wait = blocking_wait
        self.state = "PRE_INITIALIZING"
        self.exit_code = 0
        self.stopped = threading.Event()
        self._done = threading.Event()
        self._lock = threading.RLock()
        self._reauth_now = threading.Event()
        self.registration: dict = {}
        self.service = ""
        self.self_uri = ""
        self.material: Material | None = None
        self._leaf: dict | None = None
        self._roots: dict | None = None
        self.intentions: list[dict] = []
        self.default_allow = False
        self._proto_sources: dict[str, str | None] = {"registration": None, "service": None, "proxy": None}
        self.listeners: dict[ListenerSpec, Listener] = {}
        self.inbound: set[Inbound] = set()
        self._admin: _AdminServer | None = None
        self.counters = {"authorize": 0, "denied_connections": 0, "closed_on_reauthorize": 0, "denied_requests": 0}

    # ------------------------------------------------------------------ lifecycle
    def start(self, timeout: float = 60.0) -> ConnectProxy:
        """Load everything, bind, start the watches; ready when this returns. ProxyError otherwise."""
        try:
            if self.admin_socket:
                admin = self._admin = _bind_admin(self.admin_socket, self)
                threading.Thread(target=admin.serve_forever, args=(0.1,), name="admin", daemon=True).start()
            self.state = "INITIALIZING"
            registration, content_hash = self._wait_for_registration(timeout)
            self._set_registration(registration)
            roots, roots_index, _ = self.agent.blocking("/v1/agent/connect/ca/roots", None)
            leaf, leaf_index, _ = self.agent.blocking(self._leaf_path(), None)
            if not roots or not leaf:
                raise ProxyError("the agent has no Connect CA roots or leaf certificate for " + self.service)
            self._set_certs(leaf=leaf, roots=roots)
            ixns, ixn_index, headers = self.agent.blocking(self._intentions_path(), None, query=self._intentions_q())
            self._set_intentions(ixns, headers)
            sd, sd_index, _ = self.agent.blocking(f"/v1/config/service-defaults/{self._q(self.service)}", None)
            pd, pd_index, _ = self.agent.blocking("/v1/config/proxy-defaults/global", None)
            self._set_protocol("service", (sd or {}).get("Protocol"))
            self._set_protocol("proxy", ((pd or {}).get("Config") or {}).get("protocol"))
            self._apply_listeners(registration, strict=True)
            if self.stopped.is_set():
                raise ProxyError("stopped while starting")
        except ConsulHTTPError as e:
            self.stop()
            _check_refused(e)
            raise ProxyError(f"Consul agent error: {e}") from None
        except OSError as e:
            self.stop()
            raise ProxyError(str(e)) from None
        except BaseException:
            self.stop()
            raise
        watches = [
            ("registration", self._watch_registration, content_hash),
            ("roots", self._watch_roots, roots_index),
            ("leaf", self._watch_leaf, leaf_index),
            ("intentions", self._watch_intentions, ixn_index),
            ("service-defaults", self._watch_service_defaults, sd_index),
            ("proxy-defaults", self._watch_proxy_defaults, pd_index),
        ]
        for name, fn, index in watches:
            threading.Thread(target=self._watch_loop, args=(name, fn, index), name=f"watch-{name}", daemon=True).start()
        threading.Thread(target=self._reauthorize_loop, name="reauthorize", daemon=True).start()
        self.state = "LIVE"
        log.info(
            "proxy %s for %s is LIVE: %s",
            self.proxy_id,
            self.service,
            ", ".join(f"{s.kind} {s.destination or self.service} on {s.host}:{s.port}" for s in self.listeners),
        )
        return self

    def stop(self, exit_code: int | None = None) -> None:
        """Close listeners, connections and the admin socket (idempotent, any thread)."""
        with self._lock:
            first = not self.stopped.is_set()
            if first and exit_code is not None:
                self.exit_code = exit_code
            self.state = "DRAINING" if self.state == "LIVE" else self.state
            self.stopped.set()
        self._reauth_now.set()
        if not first:
            self._done.wait(30)
            return
        try:
            with self._lock:
                for listener in self.listeners.values():
                    listener.close()
                self.listeners.clear()
                conns, self.inbound = list(self.inbound), set()
            for conn in conns:
                conn.close()
            admin, self._admin = self._admin, None
            if admin is not None:
                admin.shutdown()
                admin.server_close()
                with contextlib.suppress(OSError):
                    os.unlink(self.admin_socket)
        finally:
            self._done.set()

    def wait(self) -> int:
        """Block until stop() has finished; the exit status (0, or 1 after a fatal error)."""
        self._done.wait()
        return self.exit_code

    def status(self) -> dict:
        with self._lock:
            material = self.material
            return {
                "state": self.state,
                "proxy_id": self.proxy_id,
                "service": self.service,
                "protocol": self.protocol,
                "active_root_id": material.active_root_id if material else "",
                "leaf_serial": material.leaf.get("SerialNumber", "") if material else "",
                "leaf_index": material.leaf.get("ModifyIndex", 0) if material else 0,
                "listeners": [
                    {"kind": s.kind, "host": s.host, "port": s.port, "destination": s.destination}
                    for s in self.listeners
                ],
                "open_inbound": len(self.inbound),
                "intentions": len(self.intentions),
                "default_allow": self.default_allow,
                "counters": dict(self.counters),
            }

    # ------------------------------------------------------------------ configuration
    @staticmethod
    def _q(name: str) -> str:
        return urllib.parse.quote(name, safe="")

    def _leaf_path(self) -> str:
        return f"/v1/agent/connect/ca/leaf/{self._q(self.service)}"

    @staticmethod
    def _intentions_path() -> str:
        return "/v1/connect/intentions/match"

    def _intentions_q(self) -> dict:
        return {"by": "destination", "name": self.service}

    @property
    def protocol(self) -> str:
        for source in ("registration", "service", "proxy"):
            value = self._proto_sources.get(source)
            if value:
                return str(value).lower()
        return "tcp"

    def _set_protocol(self, source: str, value) -> None:
        before = self.protocol
        self._proto_sources[source] = value or None
        if self.protocol != before:
            log.info("protocol of %s is now %s", self.service, self.protocol)
            self._reauth_now.set()  # connections opened in the other mode get closed

    def _wait_for_registration(self, timeout: float) -> tuple[dict, str]:
        deadline = time.monotonic() + timeout
        delay = 0.1
        path = f"/v1/agent/service/{self._q(self.proxy_id)}"
        while True:
            try:
                body, headers = self.agent.call("GET", path)
                lowered = {k.lower(): v for k, v in headers.items()}
                return body, lowered.get("x-consul-contenthash") or body.get("ContentHash", "")
            except ConsulHTTPError as e:
                _check_refused(e)
                if e.status != 404:
                    raise
                last = f"{self.proxy_id} is not registered"
            except OSError as e:
                last = str(e)
            if time.monotonic() >= deadline or self.stopped.is_set():
                raise ProxyError(f"no registration {self.proxy_id} within {timeout:g}s: {last}")
            log.info("waiting for %s (%s)", self.proxy_id, last)
            self.stopped.wait(delay)
            delay = min(delay * 2, 2.0)

    def _set_registration(self, registration: dict) -> None:
        if registration.get("Kind") != "connect-proxy":
            raise ProxyError(f"{self.proxy_id} is not a connect-proxy service (Kind {registration.get('Kind')!r})")
        proxy = registration.get("Proxy") or {}
        service = proxy.get("DestinationServiceName") or ""
        if not service:
            raise ProxyError(f"{self.proxy_id} has no Proxy.DestinationServiceName")
        if self.service and service != self.service:
            log.error("registration now names %s instead of %s; ignoring the change", service, self.service)
            return
        with self._lock:
            self.registration = registration
            self.service = service
        self._set_protocol("registration", (proxy.get("Config") or {}).get("protocol"))

    def _set_certs(self, leaf: dict | None = None, roots: dict | None = None) -> None:
        with self._lock:
            self._leaf = leaf or self._leaf
            self._roots = roots or self._roots
            material = build_material(self._leaf, self._roots)
            self.material = material
            self.self_uri = material.leaf.get("ServiceURI") or ""
        log.info("certificates: leaf %s, active root %s", material.leaf.get("SerialNumber"), material.active_root_id)

    def _set_intentions(self, body, headers: dict) -> None:
        policy = (headers.get("x-consul-default-acl-policy") or "").lower()
        with self._lock:
            self.intentions = list((body or {}).get(self.service) or [])
            if policy in ("allow", "deny"):
                self.default_allow = policy == "allow"
        self._reauth_now.set()

    def _apply_listeners(self, registration: dict, strict: bool) -> None:
        wanted = listener_specs(registration)
        with self._lock:
            if self.stopped.is_set():
                return
            for spec in set(self.listeners) - wanted:
                self.listeners.pop(spec).close()
                log.info("closed %s listener %s:%d", spec.kind, spec.host, spec.port)
            for spec in sorted(wanted - set(self.listeners), key=lambda s: (s.kind, s.port)):
                handle = self._handle_inbound if spec.kind == "public" else self._handle_outbound
                try:
                    self.listeners[spec] = Listener(spec, handle)
                except ProxyError:
                    if strict:
                        raise
                    log.exception("listener not opened (will retry on the next registration change)")

    # ------------------------------------------------------------------ watches
    def _watch_loop(self, name: str, fn, index) -> None:
        delay = 0.5
        while not self.stopped.is_set():
            started = time.monotonic()
            try:
                new_index = fn(index)
            except TokenRefused as e:
                log.error("%s; stopping", e)
                self.stop(exit_code=1)
                return
            except Exception as e:  # keep serving the last known state
                if self.stopped.is_set():
                    return
                log.warning("watch %s: %s (retrying in %.1fs)", name, e, delay)
                self.stopped.wait(delay)
                delay = min(delay * 2, 10.0)
                continue
            delay = 0.5
            if new_index == index and time.monotonic() - started < 0.05:
                self.stopped.wait(0.5)  # an agent that does not block: never spin
            index = new_index

    def _watch_registration(self, content_hash: str) -> str:
        path = f"/v1/agent/service/{self._q(self.proxy_id)}"
        query = {"hash": content_hash, "wait": f"{int(self.blocking_wait)}s"} if content_hash else None
        try:
            body, headers = self.agent.call("GET", path, query, timeout=10 + self.blocking_wait * 1.1)
        except ConsulHTTPError as e:
            _check_refused(e)
            if e.status == 404:
                log.warning("registration %s is gone; keeping the current listeners", self.proxy_id)
                self.stopped.wait(self.blocking_wait / 6)
                return content_hash
            raise
        new_hash = {k.lower(): v for k, v in headers.items()}.get("x-consul-contenthash") or ""
        if new_hash and new_hash != content_hash and not self.stopped.is_set():
            log.info("registration %s changed", self.proxy_id)
            self._set_registration(body)
            self._apply_listeners(body, strict=False)
        return new_hash or content_hash

    def _watch_roots(self, index: int) -> int:
        body, new_index, _ = self.agent.blocking("/v1/agent/connect/ca/roots", index, self.blocking_wait)
        if body and new_index != index and not self.stopped.is_set():
            self._set_certs(roots=body)
        return new_index

    def _watch_leaf(self, index: int) -> int:
        body, new_index, _ = self.agent.blocking(self._leaf_path(), index, self.blocking_wait)
        if body and new_index != index and not self.stopped.is_set():
            self._set_certs(leaf=body)
        return new_index

    def _watch_intentions(self, index: int) -> int:
        body, new_index, headers = self.agent.blocking(
            self._intentions_path(), index, self.blocking_wait, query=self._intentions_q()
        )
        if new_index != index and not self.stopped.is_set():
            self._set_intentions(body, headers)
        return new_index

    def _watch_service_defaults(self, index: int) -> int:
        path = f"/v1/config/service-defaults/{self._q(self.service)}"
        body, new_index, _ = self.agent.blocking(path, index, self.blocking_wait)
        self._set_protocol("service", (body or {}).get("Protocol"))
        return new_index

    def _watch_proxy_defaults(self, index: int) -> int:
        body, new_index, _ = self.agent.blocking("/v1/config/proxy-defaults/global", index, self.blocking_wait)
        self._set_protocol("proxy", ((body or {}).get("Config") or {}).get("protocol"))
        return new_index

    # ------------------------------------------------------------------ authorization
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
                log.info("closing connection from %s: %s", conn.source_uri, reason)
                self.counters["closed_on_reauthorize"] += 1
                self._forget(conn)
                conn.close()

    def _remember(self, conn: Inbound) -> bool:
        with self._lock:
            if self.stopped.is_set():
                return False
            self.inbound.add(conn)
            return True

    def _forget(self, conn: Inbound) -> None:
        with self._lock:
            self.inbound.discard(conn)

    # ------------------------------------------------------------------ inbound
    def _local_app(self) -> tuple[str, int]:
        proxy = self.registration.get("Proxy") or {}
        port = int(proxy.get("LocalServicePort") or 0)
        if not port:
            raise ProxyError(f"{self.proxy_id} has no Proxy.LocalServicePort")
        return proxy.get("LocalServiceAddress") or "127.0.0.1", port

    def _handle_inbound(self, raw: socket.socket, spec: ListenerSpec) -> None:
        material = self.material
        raw.settimeout(HANDSHAKE_TIMEOUT)
        try:
            tls = material.server.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError) as e:
            # Consul's TCP check connects and hangs up: an EOF before any handshake is not news.
            quiet = isinstance(e, (ssl.SSLEOFError, ConnectionResetError, BrokenPipeError))
            log.log(logging.DEBUG if quiet else logging.INFO, "inbound TLS handshake refused: %s", e)
            _close(raw)
            return
        peer = tls.getpeercert() or {}
        uri = spiffe_of(peer)
        m = _SPIFFE.match(uri)
        if not m:
            log.info("inbound certificate without a service SPIFFE ID refused: %r", uri)
            _close(tls)
            return
        tls.settimeout(IO_TIMEOUT)
        if self.protocol in HTTP_LIKE:
            conn = Inbound(uri, serial_of(peer), "http", [tls])
            if not self._remember(conn):
                _close(tls)
                return
            try:
                self._serve_http(tls, conn, m.group("svc"), hashlib.sha256(tls.getpeercert(True)).hexdigest())
            finally:
                self._forget(conn)
                conn.close()
            return
        serial = serial_of(peer)
        allowed, reason = self.authorize(uri, serial)
        if not allowed:
            self.counters["denied_connections"] += 1
            log.info("inbound connection from %s denied: %s", uri, reason)
            _close(tls)
            return
        try:
            app = socket.create_connection(self._local_app(), timeout=CONNECT_TIMEOUT)
        except (OSError, ProxyError) as e:
            log.warning("local app unreachable: %s", e)
            _close(tls)
            return
        app.settimeout(IO_TIMEOUT)
        conn = Inbound(uri, serial, "tcp", [tls, app])
        if not self._remember(conn):
            _close(tls, app)
            return
        try:
            pump(tls, app)
        finally:
            self._forget(conn)

    def _serve_http(self, tls: ssl.SSLSocket, conn: Inbound, source: str, peer_hash: str) -> None:
        client = Stream(tls)
        app: socket.socket | None = None
        app_stream: Stream | None = None
        try:
            while not self.stopped.is_set():
                head = client.head()
                if head is None:
                    return
                request_line, headers = parse_head(head)
                parts = request_line.split(" ")
                if len(parts) != 3:
                    raise ValueError(f"bad request line {request_line!r}")
                method, target, version = parts
                path = urllib.parse.urlsplit(target).path or "/"
                framing, length = body_framing(headers)
                with self._lock:
                    intentions, default_allow = self.intentions, self.default_allow
                allowed, reason = evaluate(intentions, source, Request(method, path, headers), default_allow)
                close_after = wants_close(version, headers)
                if not allowed:
                    self.counters["denied_requests"] += 1
                    log.info("request %s %s from %s denied: %s", method, path, conn.source_uri, reason)
                    self._drain_body(client, framing, length)
                    tls.sendall(
                        b"HTTP/1.1 403 Forbidden\r\ncontent-length: %d\r\ncontent-type: text/plain\r\n%s\r\n%s"
                        % (len(RBAC_DENIED), b"connection: close\r\n" if close_after else b"", RBAC_DENIED)
                    )
                    if close_after:
                        return
                    continue
                if app is None:
                    app = socket.create_connection(self._local_app(), timeout=CONNECT_TIMEOUT)
                    app.settimeout(IO_TIMEOUT)
                    conn.socks.append(app)
                    app_stream = Stream(app)
                xfcc = f'By={self.self_uri};Hash={peer_hash};Subject="";URI={conn.source_uri}'
                kept = [(k, v) for k, v in headers if k.lower() != "x-forwarded-client-cert"]
                kept.append(("X-Forwarded-Client-Cert", xfcc))
                out = request_line + "\r\n" + "".join(f"{k}: {v}\r\n" for k, v in kept) + "\r\n"
                app.sendall(out.encode("latin-1"))
                self._copy_body(client, framing, length, app.sendall)
                if self._relay_response(app_stream, tls, method) or close_after:
                    return
        except (OSError, ValueError) as e:
            log.debug("http connection from %s ended: %s", conn.source_uri, e)
        except ProxyError as e:
            log.warning("%s", e)
        finally:
            _close(app)

    @staticmethod
    def _copy_body(stream: Stream, framing: str, length: int, sink) -> None:
        if framing == "chunked":
            stream.chunked(sink)
        elif framing == "length":
            stream.exactly(length, sink)

    def _drain_body(self, stream: Stream, framing: str, length: int) -> None:
        self._copy_body(stream, framing, length, lambda _piece: None)

    def _relay_response(self, app: Stream, client: socket.socket, method: str) -> bool:
        """Copy one response; True if the connection must close afterwards."""
        while True:
            head = app.head()
            if head is None:
                raise ValueError("the app closed the connection without answering")
            status_line, headers = parse_head(head)
            client.sendall(head)
            version, _, rest = status_line.partition(" ")
            status = int(rest.split(" ", 1)[0])
            if 100 <= status < 200 and status != 101:
                continue  # interim answer; the final one follows
            break
        if method == "HEAD" or status in (204, 304) or status == 101:
            return status == 101 or wants_close(version, headers)
        framing, length = body_framing(headers)
        if framing == "none":
            app.until_close(client.sendall)
            return True
        self._copy_body(app, framing, length, client.sendall)
        return wants_close(version, headers)

    # ------------------------------------------------------------------ outbound
    def _handle_outbound(self, app: socket.socket, spec: ListenerSpec) -> None:
        try:
            upstream = self._dial(spec.destination)
        except (OSError, ConsulHTTPError, ProxyError) as e:
            log.warning("upstream %s unavailable: %s", spec.destination, e)
            _close(app)
            return
        app.settimeout(IO_TIMEOUT)
        upstream.settimeout(IO_TIMEOUT)
        pump(app, upstream)

    def endpoints(self, destination: str) -> list[tuple[str, int]]:
        body, _ = self.agent.call("GET", f"/v1/health/connect/{self._q(destination)}", {"passing": "1"})
        out = []
        for entry in body or []:
            svc = entry.get("Service") or {}
            addr = svc.get("Address") or (entry.get("Node") or {}).get("Address") or ""
            if addr and svc.get("Port"):
                out.append((addr, int(svc["Port"])))
        return out

    def _dial(self, destination: str) -> ssl.SSLSocket:
        endpoints = self.endpoints(destination)
        if not endpoints:
            raise ProxyError(f"no healthy mesh endpoint for {destination}")
        random.shuffle(endpoints)
        material = self.material
        errors = []
        for addr, port in endpoints:
            raw = None
            try:
                raw = socket.create_connection((addr, port), timeout=CONNECT_TIMEOUT)
                raw.settimeout(HANDSHAKE_TIMEOUT)
                tls = material.client.wrap_socket(raw)
            except (OSError, ssl.SSLError) as e:
                _close(raw)
                errors.append(f"{addr}:{port}: {e}")
                continue
            uri = spiffe_of(tls.getpeercert() or {})
            m = _SPIFFE.match(uri)
            if not m or m.group("svc") != destination or m.group("host") != material.trust_domain:
                _close(tls)
                errors.append(f"{addr}:{port}: presented {uri or 'no SPIFFE ID'}, not {destination}")
                continue
            return tls
        raise ProxyError("; ".join(errors))


# ---------------------------------------------------------------------------------------- CLI
def read_token(token_file: str | None) -> str | None:
    path = token_file or os.environ.get("CONSUL_HTTP_TOKEN_FILE")
    if path:
        with open(path, encoding="utf-8") as f:
            token = f.read().strip()
        if token:
            return token
    return os.environ.get("CONSUL_HTTP_TOKEN") or None


def _flag(parser: argparse.ArgumentParser, name: str, **kw) -> None:
    parser.add_argument(f"-{name}", f"--{name}", dest=name.replace("-", "_"), **kw)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="connectproxy",
        description="Development stand-in for a Consul Connect sidecar proxy (mTLS, intentions, L7 RBAC).",
        allow_abbrev=False,
    )
    which = parser.add_mutually_exclusive_group(required=True)
    _flag(which, "sidecar-for", metavar="SERVICE_ID", help="ID of the service this proxy is the sidecar of")
    _flag(which, "proxy-id", metavar="PROXY_ID", help="ID of the proxy service itself (<service-id>-sidecar-proxy)")
    _flag(
        parser,
        "http-addr",
        default=os.environ.get("CONSUL_HTTP_ADDR") or DEFAULT_HTTP_ADDR,
        help="Consul agent address (default: $CONSUL_HTTP_ADDR or %(default)s)",
    )
    _flag(parser, "token-file", help="file with the ACL token (default: $CONSUL_HTTP_TOKEN_FILE, $CONSUL_HTTP_TOKEN)")
    _flag(
        parser, "ca-file", default=os.environ.get("CONSUL_CACERT"), help="CA bundle for https (default $CONSUL_CACERT)"
    )
    _flag(parser, "admin-socket", default=DEFAULT_ADMIN_SOCKET, help="unix socket of the admin endpoint (%(default)s)")
    _flag(
        parser,
        "reauthorize-interval",
        type=float,
        default=DEFAULT_REAUTHORIZE_INTERVAL,
        help="seconds between re-authorizations of open L4 connections (default %(default)s)",
    )
    _flag(parser, "register-timeout", type=float, default=60.0, help="seconds to wait for the registration")
    args = parser.parse_args(argv)
    if args.sidecar_for is not None:
        args.proxy_id = f"{args.sidecar_for}-sidecar-proxy"
    if args.reauthorize_interval <= 0:
        parser.error("-reauthorize-interval must be positive")
    return args


def ready_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="connectproxy ready", description="Exit 0 if the proxy is ready.")
    _flag(parser, "admin-socket", default=DEFAULT_ADMIN_SOCKET, help="unix socket of the admin endpoint (%(default)s)")
    args = parser.parse_args(argv)
    status, body = probe_ready(args.admin_socket)
    print(body or status)
    return 0 if status == 200 else 1


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "ready":
        return ready_main(argv[1:])
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format="%(asctime)s connectproxy %(levelname)s %(message)s"
    )
    args = parse_args(argv)
    try:
        token = read_token(args.token_file)
    except OSError as e:
        log.error("cannot read the token file: %s", e)
        return 1
    proxy = ConnectProxy(
        Agent(args.http_addr, token, args.ca_file),
        args.proxy_id,
        admin_socket=args.admin_socket,
        reauthorize_interval=args.reauthorize_interval,
    )

    signalled = threading.Event()

    def on_signal(signum, _frame):
        log.info("received %s, stopping", signal.Signals(signum).name)
        signalled.set()
        threading.Thread(target=proxy.stop, daemon=True).start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log.info("proxy %s starting (agent %s, token %s)", args.proxy_id, proxy.agent.base, "set" if token else "not set")
    try:
        proxy.start(timeout=args.register_timeout)
    except ProxyError as e:
        if signalled.is_set() and not isinstance(e, TokenRefused):
            return 0  # asked to stop before it was ready
        log.error("%s", e)
        return 1
    code = proxy.wait()
    log.info("proxy %s stopped (exit %d)", args.proxy_id, code)
    return code


if __name__ == "__main__":
    sys.exit(main())
