"""Readiness and status: the admin endpoint on a unix socket (never TCP), and its probe."""

from __future__ import annotations

import http.server
import json
import logging
import os
import random
import socket
import socketserver
from typing import TYPE_CHECKING

from .agent import ProxyError

if TYPE_CHECKING:
    from .proxy import ConnectProxy

log = logging.getLogger("connectproxy")

DEFAULT_ADMIN_SOCKET = "/consul/admin.sock"


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


def admin_get(path: str, resource: str = "/ready", timeout: float = 3.0) -> tuple[int, str]:
    """(HTTP status, body) of GET ``resource`` on the admin socket; (0, reason) if it does not answer."""
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(timeout)
    try:
        s.connect(path)
        s.sendall(b"GET %s HTTP/1.0\r\nHost: admin\r\n\r\n" % resource.encode())
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


def probe_ready(path: str, timeout: float = 3.0) -> tuple[int, str]:
    """(HTTP status, body) of GET /ready on the admin socket; (0, reason) if it does not answer."""
    return admin_get(path, "/ready", timeout)


def listening_ports(proc_net: str = "/proc/net") -> set[int]:
    """TCP ports in LISTEN state in this network namespace (/proc/net/tcp and tcp6, state 0A)."""
    ports: set[int] = set()
    for name in ("tcp", "tcp6"):
        try:
            with open(os.path.join(proc_net, name), encoding="ascii") as f:
                next(f, None)
                for line in f:
                    fields = line.split()
                    if len(fields) > 3 and fields[3] == "0A":
                        ports.add(int(fields[1].rsplit(":", 1)[1], 16))
        except OSError:
            continue
    return ports


def unbound_listeners(path: str, timeout: float = 3.0) -> list[str] | None:
    """The proxy's listeners no socket of this network namespace listens on; None if /status fails.

    Envoy's /ready says LIVE once initialization ends, and initialization can end on the initial
    fetch timeout (15 s) before the listeners exist (source/server/server.cc, init manager;
    ``initial_fetch_timeout`` in config_source.proto): LIVE alone does not prove the upstream
    listener. The probe therefore also checks the sockets, as the notebook would meet them.
    """
    status, body = admin_get(path, "/status", timeout)
    if status != 200:
        return None
    try:
        listeners = json.loads(body).get("listeners") or []
    except ValueError:
        return None
    bound = listening_ports()
    return [
        f"{item.get('kind')} listener {item.get('host')}:{item.get('port')} is not bound"
        for item in listeners
        if int(item.get("port") or 0) not in bound
    ]
