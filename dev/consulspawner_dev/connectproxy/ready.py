"""``sidecar-ready``: whether the proxy in this container is ready, asked on its admin socket.

Standard library only and no package-relative import: the image runs this file as a script
(``python3 -S -P .../connectproxy/ready.py``) so that a probe does not import the whole proxy
(ssl, asyncio, http.server: about 0.1 s of CPU per probe, against 0.01 s for this file).

ConsulSpawner runs it with ``docker exec`` and ``SIDECAR_READY_WAIT=<seconds>`` in its
environment: the probe then waits inside the sidecar, asking the socket every 50 ms, up to that
long, so a spawn makes one exec instead of one per attempt. Without it, it answers at once.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time

DEFAULT_ADMIN_SOCKET = "/consul/admin.sock"
# How often a waiting probe asks the admin socket: a unix-socket round trip, no process started.
ASK_EVERY = 0.05


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


def check(admin_socket: str) -> tuple[bool, str]:
    """(ready, what to print): /ready says LIVE and every listener /status reports is bound."""
    status, body = probe_ready(admin_socket)
    if status != 200:
        return False, body or str(status)
    missing = unbound_listeners(admin_socket)
    if missing is None or missing:
        return False, "; ".join(missing or ["the admin endpoint did not answer /status"])
    return True, body


def wait_from_environment(environ: dict[str, str]) -> float:
    """``SIDECAR_READY_WAIT`` in seconds; 0 (answer at once) when unset or not a number."""
    try:
        wait = float(environ.get("SIDECAR_READY_WAIT") or 0)
    except ValueError:
        return 0.0
    return wait if 0 < wait < float("inf") else 0.0


def main(argv: list[str] | None = None, environ: dict[str, str] | None = None) -> int:
    """Exit 0 once ready (within ``SIDECAR_READY_WAIT`` seconds), else 1 with the reason."""
    argv = list(sys.argv[1:] if argv is None else argv)
    admin_socket = DEFAULT_ADMIN_SOCKET
    if argv[:1] in (["-h"], ["--help"]):
        print(
            "usage: sidecar-ready [-admin-socket PATH]\n"
            "Exit 0 if the proxy's /ready says LIVE and every listener it reports is bound;\n"
            f"waits up to $SIDECAR_READY_WAIT seconds for that. Default socket: {DEFAULT_ADMIN_SOCKET}"
        )
        return 0
    if len(argv) == 2 and argv[0] in ("-admin-socket", "--admin-socket"):
        admin_socket = argv[1]
    elif argv:
        print(f"sidecar-ready: unexpected arguments {argv!r}", file=sys.stderr)
        return 2
    deadline = time.monotonic() + wait_from_environment(os.environ if environ is None else environ)
    while True:
        ready, message = check(admin_socket)
        if ready or time.monotonic() >= deadline:
            print(message)
            return 0 if ready else 1
        time.sleep(ASK_EVERY)


if __name__ == "__main__":
    sys.exit(main())
