#!/usr/bin/env python3
"""Development stand-in for a Consul Connect sidecar proxy (standard library only).

It runs in the notebook container's network namespace, like ``consul connect envoy`` would::

    python3 devsidecar.py -sidecar-for <service-id> [-http-addr host:port] [-token-file PATH]

It reads its registration (``GET /v1/agent/service/<service-id>-sidecar-proxy``, token only in
the ``X-Consul-Token`` header), opens the public listener on ``0.0.0.0:<Port>`` (the port that
Consul's TCP check dials) and one listener per ``Proxy.Upstreams[i]`` on
``LocalBindAddress:LocalBindPort``, then follows changes to the registration with hash-based
blocking queries. SIGTERM and SIGINT stop it cleanly (exit status 0).

There is no data path yet: every connection is handed to ``answer_http``, which replies with a
small JSON document naming the listener. Pass another ``handler`` to ``Sidecar`` to replace it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import ssl
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger("devsidecar")

DEFAULT_HTTP_ADDR = "127.0.0.1:8500"
# Written once every listener is bound, removed first at start (a restarted container keeps its
# files): the image's ``sidecar-ready`` tests for it, as ConsulSpawner's readiness command.
READY_FILE = "/tmp/devsidecar.ready"


@dataclass(frozen=True)
class ListenerSpec:
    """What one listener is: where it binds and what it stands for."""

    kind: str  # "public" or "upstream"
    host: str
    port: int
    name: str  # destination service (public) or upstream destination name

    def describe(self, proxy_id: str) -> dict:
        info = {"sidecar": proxy_id, "listener": self.kind, "port": self.port}
        info["service" if self.kind == "public" else "upstream"] = self.name
        return info


# A connection handler gets the accepted socket and the listener's description. It owns the
# socket for the duration of the call; the caller closes it afterwards.
Handler = Callable[[socket.socket, dict], None]


def answer_http(conn: socket.socket, info: dict) -> None:
    """Placeholder data path: read one request head, answer 200 with the listener's identity."""
    conn.settimeout(5)
    data = b""
    try:
        while b"\r\n\r\n" not in data and len(data) < 65536:
            chunk = conn.recv(4096)
            if not chunk:
                break
            data += chunk
    except OSError:
        pass  # a bare TCP probe (Consul's TCP check) connects and closes: nothing to answer
    if not data:
        return
    body = json.dumps(info).encode()
    head = (
        f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    try:
        conn.sendall(head + body)
    except OSError:
        pass


class Listener:
    """One listening socket with an accept thread; each connection gets its own thread."""

    def __init__(self, spec: ListenerSpec, proxy_id: str, handler: Handler):
        self.spec = spec
        self.info = spec.describe(proxy_id)
        self.handler = handler
        self.sock = socket.socket(socket.AF_INET6 if ":" in spec.host else socket.AF_INET)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.sock.bind((spec.host, spec.port))
            self.sock.listen(64)
        except OSError:
            self.sock.close()
            raise
        self.thread = threading.Thread(target=self._accept_loop, daemon=True)
        self.thread.start()

    def _accept_loop(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            self.handler(conn, dict(self.info))
        except Exception:
            log.exception("handler failed on %s listener %s:%d", self.spec.kind, self.spec.host, self.spec.port)
        finally:
            conn.close()

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


def listener_specs(registration: dict) -> set[ListenerSpec]:
    """The listeners a sidecar registration asks for."""
    proxy = registration.get("Proxy") or {}
    specs = {ListenerSpec("public", "0.0.0.0", int(registration["Port"]), proxy.get("DestinationServiceName", ""))}
    for upstream in proxy.get("Upstreams") or []:
        if not upstream.get("LocalBindPort"):
            log.warning(
                "upstream %s has no LocalBindPort (unix sockets are not supported); skipped",
                upstream.get("DestinationName"),
            )
            continue
        specs.add(
            ListenerSpec(
                "upstream",
                upstream.get("LocalBindAddress") or "127.0.0.1",
                int(upstream["LocalBindPort"]),
                upstream.get("DestinationName", ""),
            )
        )
    return specs


class NotRegistered(Exception):
    pass


class ConsulAgent:
    """The one Consul call the sidecar needs. The token never leaves the request header."""

    def __init__(self, http_addr: str, token: str | None, cafile: str | None = None):
        self.base = normalize_http_addr(http_addr)
        self._token = token
        self._ssl = ssl.create_default_context(cafile=cafile) if self.base.startswith("https:") else None

    def service(self, service_id: str, hash_: str | None = None, wait: float = 0) -> tuple[dict, str]:
        """GET /v1/agent/service/<id>, optionally blocking until its content hash changes."""
        url = f"{self.base}/v1/agent/service/{urllib.parse.quote(service_id, safe='')}"
        timeout = 10.0
        if hash_:
            url += "?" + urllib.parse.urlencode({"hash": hash_, "wait": f"{int(wait)}s"})
            timeout += wait * 1.1  # Consul adds up to wait/16 of jitter
        request = urllib.request.Request(url)
        if self._token:
            request.add_header("X-Consul-Token", self._token)
        try:
            with urllib.request.urlopen(request, timeout=timeout, context=self._ssl) as response:
                body = json.load(response)
                return body, response.headers.get("X-Consul-ContentHash") or body.get("ContentHash", "")
        except urllib.error.HTTPError as e:
            if e.code == 404:
                raise NotRegistered(f"{service_id} is not registered with the agent at {self.base}") from None
            raise OSError(f"agent at {self.base} answered {e.code} {e.reason} for {service_id}") from None
        except urllib.error.URLError as e:
            raise OSError(f"cannot reach the agent at {self.base}: {e.reason}") from None


def normalize_http_addr(addr: str) -> str:
    """'host:port', 'http://host:port' or 'https://host:port' -> URL without trailing slash."""
    addr = addr.strip()
    if "://" not in addr:
        addr = "http://" + addr
    return addr.rstrip("/")


def read_token(token_file: str | None) -> str | None:
    """-token-file, else CONSUL_HTTP_TOKEN_FILE, else CONSUL_HTTP_TOKEN (like Consul's own CLI)."""
    path = token_file or os.environ.get("CONSUL_HTTP_TOKEN_FILE")
    if path:
        with open(path, encoding="utf-8") as f:
            token = f.read().strip()
        if token:
            return token
    return os.environ.get("CONSUL_HTTP_TOKEN") or None


class Sidecar:
    def __init__(self, agent: ConsulAgent, proxy_id: str, handler: Handler = answer_http):
        self.agent = agent
        self.proxy_id = proxy_id
        self.handler = handler
        self.stop = threading.Event()
        self.listeners: dict[ListenerSpec, Listener] = {}
        self._lock = threading.Lock()

    def wait_for_registration(self, timeout: float) -> tuple[dict, str]:
        deadline = time.monotonic() + timeout
        delay = 0.2
        while True:
            try:
                return self.agent.service(self.proxy_id)
            except (NotRegistered, OSError, ValueError) as e:
                last = e
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.stop.is_set():
                raise NotRegistered(f"sidecar registration {self.proxy_id} not found within {timeout:g}s: {last}")
            log.info("waiting for registration %s (%s)", self.proxy_id, last)
            if self.stop.wait(min(delay, remaining)):
                raise NotRegistered(f"stopped while waiting for registration {self.proxy_id}")
            delay = min(delay * 2, 2.0)

    def apply(self, registration: dict, *, strict: bool) -> None:
        """Open and close listeners to match the registration. strict: a bind failure raises."""
        wanted = listener_specs(registration)
        with self._lock:
            for spec in set(self.listeners) - wanted:
                self.listeners.pop(spec).close()
                log.info("closed %s listener %s:%d (%s)", spec.kind, spec.host, spec.port, spec.name)
            for spec in sorted(wanted - set(self.listeners), key=lambda s: (s.kind, s.port)):
                try:
                    self.listeners[spec] = Listener(spec, self.proxy_id, self.handler)
                except OSError as e:
                    message = f"cannot listen on {spec.host}:{spec.port} for {spec.kind} {spec.name}: {e}"
                    if strict:
                        raise OSError(message) from None
                    log.error("%s (will retry on the next change)", message)
                    continue
                log.info("listening: %s %s on %s:%d", spec.kind, spec.name, spec.host, spec.port)

    def follow(self, content_hash: str, interval: float) -> None:
        """Re-read the registration: a blocking query that returns when it changes."""
        while not self.stop.is_set():
            started = time.monotonic()
            try:
                registration, new_hash = self.agent.service(self.proxy_id, content_hash, interval)
            except NotRegistered:
                log.warning("registration %s is gone; keeping the current listeners", self.proxy_id)
                new_hash = content_hash
            except (OSError, ValueError) as e:
                log.warning("cannot re-read registration %s: %s", self.proxy_id, e)
                new_hash = content_hash
            else:
                if new_hash != content_hash:
                    log.info("registration %s changed", self.proxy_id)
                    self.apply(registration, strict=False)
            # Never spin: an agent without blocking support (or an error) answers at once.
            if new_hash == content_hash:
                self.stop.wait(max(0.0, interval - (time.monotonic() - started)))
            content_hash = new_hash

    def close(self) -> None:
        with self._lock:
            for listener in self.listeners.values():
                listener.close()
            self.listeners.clear()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="devsidecar",
        description="Development stand-in for a Consul Connect sidecar proxy.",
        allow_abbrev=False,
    )
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "-sidecar-for",
        "--sidecar-for",
        dest="sidecar_for",
        metavar="SERVICE_ID",
        help="ID of the service this proxy is the sidecar of",
    )
    which.add_argument(
        "-proxy-id",
        "--proxy-id",
        dest="proxy_id",
        metavar="PROXY_ID",
        help="ID of the proxy service itself (<service-id>-sidecar-proxy)",
    )
    parser.add_argument(
        "-http-addr",
        "--http-addr",
        dest="http_addr",
        default=os.environ.get("CONSUL_HTTP_ADDR") or DEFAULT_HTTP_ADDR,
        help="Consul agent address (default: $CONSUL_HTTP_ADDR or %(default)s)",
    )
    parser.add_argument(
        "-token-file",
        "--token-file",
        dest="token_file",
        help="file holding the ACL token (default: $CONSUL_HTTP_TOKEN_FILE, then $CONSUL_HTTP_TOKEN)",
    )
    parser.add_argument(
        "-ca-file",
        "--ca-file",
        dest="ca_file",
        default=os.environ.get("CONSUL_CACERT"),
        help="CA bundle for an https agent address (default: $CONSUL_CACERT)",
    )
    parser.add_argument(
        "-register-timeout",
        "--register-timeout",
        dest="register_timeout",
        type=float,
        default=60.0,
        help="seconds to wait for the registration (default %(default)s)",
    )
    parser.add_argument(
        "-refresh",
        "--refresh",
        dest="refresh",
        type=float,
        default=10.0,
        help="seconds between re-reads of the registration (default %(default)s)",
    )
    args = parser.parse_args(argv)
    if args.sidecar_for is not None:
        args.proxy_id = f"{args.sidecar_for}-sidecar-proxy"
    return args


def _mark_ready(ready: bool) -> None:
    try:
        if ready:
            with open(READY_FILE, "w") as f:
                f.write("LIVE\n")
        else:
            os.unlink(READY_FILE)
    except OSError:
        pass  # not writable (tests on the host) or already gone


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format="%(asctime)s devsidecar %(levelname)s %(message)s"
    )
    args = parse_args(argv)
    try:
        token = read_token(args.token_file)
    except OSError as e:
        log.error("cannot read the token file: %s", e)
        return 1
    sidecar = Sidecar(ConsulAgent(args.http_addr, token, args.ca_file), args.proxy_id)
    _mark_ready(False)

    def on_signal(signum, _frame):
        log.info("received %s, stopping", signal.Signals(signum).name)
        sidecar.stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    log.info(
        "sidecar %s starting (agent %s, token %s)",
        args.proxy_id,
        sidecar.agent.base,
        "set" if token else "not set",
    )
    try:
        registration, content_hash = sidecar.wait_for_registration(args.register_timeout)
        if sidecar.stop.is_set():
            return 0
        sidecar.apply(registration, strict=True)
    except NotRegistered as e:
        if sidecar.stop.is_set():
            return 0
        log.error("%s", e)
        return 1
    except OSError as e:
        log.error("%s", e)
        sidecar.close()
        return 1

    threading.Thread(target=sidecar.follow, args=(content_hash, args.refresh), daemon=True).start()
    _mark_ready(True)
    sidecar.stop.wait()
    _mark_ready(False)
    sidecar.close()
    log.info("sidecar %s stopped", args.proxy_id)
    return 0


if __name__ == "__main__":
    sys.exit(main())
