"""A test-only stand-in for a Docker daemon that is slow to answer ``/version`` (what
``docker.APIClient(version="auto")`` asks when it is built), and answers every other request
with Docker's 404 "No such container".

``/version`` is held until the test releases it, or for at most ``hold`` seconds: a request
still held then is answered anyway and recorded in ``released_by_timeout``, so a test whose
event loop was frozen by the request fails instead of hanging.
"""

from __future__ import annotations

import json
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class SlowDocker:
    """Start with ``with SlowDocker().running() as stub``; ``stub.url`` is its ``base_url``."""

    def __init__(self, hold: float = 10.0, fail_versions: int = 0):
        self.hold = hold
        self.version_requested = threading.Event()
        self.released = threading.Event()
        self.released_by_timeout = False
        # The first ``fail_versions`` answers to /version are a 500, as from a daemon starting.
        self.fail_versions = fail_versions
        self.requests: list[str] = []
        self.url = ""

    def release(self) -> None:
        self.released.set()

    @contextmanager
    def running(self):
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                stub.requests.append(self.path)
                if self.path.rstrip("/").endswith("/version"):
                    stub.version_requested.set()
                    if not stub.released.wait(stub.hold):
                        stub.released_by_timeout = True
                    if stub.fail_versions > 0:
                        stub.fail_versions -= 1
                        return self._answer(500, {"message": "daemon is starting"})
                    return self._answer(200, {"ApiVersion": "1.41", "Version": "stub"})
                self._answer(404, {"message": "No such container: stub"})

            def _answer(self, status, body):
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        self.url = f"tcp://127.0.0.1:{server.server_address[1]}"
        try:
            yield self
        finally:
            self.released.set()
            server.shutdown()
            server.server_close()
