"""Readiness and status: the admin endpoint on a unix socket (never TCP); its probe is ready.py."""

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
