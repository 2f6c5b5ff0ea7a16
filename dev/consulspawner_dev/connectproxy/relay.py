"""The L4 relay: listeners, the inbound TLS handshake, outbound dialing, copying bytes both ways."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import random
import select
import socket
import ssl
import threading
from dataclasses import dataclass, field

from .agent import ConsulHTTPError, ProxyError
from .authorization import HTTP_LIKE
from .certificates import _SPIFFE, serial_of, spiffe_of

log = logging.getLogger("connectproxy")

HANDSHAKE_TIMEOUT = 10.0
CONNECT_TIMEOUT = 5.0
IO_TIMEOUT = 60.0  # a peer that accepts no data for this long is dropped


def _close(*socks) -> None:
    for s in socks:
        if s is None:
            continue
        with contextlib.suppress(OSError, ValueError):
            s.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError, ValueError):
            s.close()


def _recv_now(s: socket.socket) -> bytes | None:
    """What ``s`` has to forward now: bytes, b"" at EOF, None if nothing yet.

    A readable TLS socket need not hold application data: a TLS 1.3 server sends session tickets
    after the handshake, and reading them yields nothing. A blocking recv would then wait (up to
    IO_TIMEOUT) for data while the other side's bytes sit unforwarded in this one thread, so TLS
    reads are made without blocking.
    """
    if not isinstance(s, ssl.SSLSocket):
        return s.recv(65536)
    timeout = s.gettimeout()
    s.setblocking(False)
    try:
        return s.recv(65536)
    except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
        return None
    finally:
        s.settimeout(timeout)


def pump(a: socket.socket, b: socket.socket) -> None:
    """Copy bytes both ways until either side closes (one thread, so TLS objects are never shared)."""
    socks = [a, b]
    try:
        while True:
            ready = [s for s in socks if isinstance(s, ssl.SSLSocket) and s.pending()]
            if not ready:
                ready, _, _ = select.select(socks, [], [], 1.0)
            for s in ready:
                data = _recv_now(s)
                if data is None:
                    continue
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
    draining: bool = False  # no longer allowed: closed when the drain time ends

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


class Relay:
    """Inbound connections (TLS, then L4 authorize or the L7 path) and outbound upstream dials."""

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
