"""One real JupyterHub (with configurable-http-proxy) for figure 1 (a), driven by its REST API."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import common

CONFIG = Path(__file__).resolve().parent / "hub_config.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class BenchHub:
    def __init__(self, kind: str, images: dict, gateway: str, consul_url: str, identity: dict | None = None):
        self.kind = kind
        self.workdir = Path(tempfile.mkdtemp(prefix=f"csbench-hub-{kind}-"))
        self.token = uuid.uuid4().hex
        self.proxy_port = free_port()
        self.env = {
            **os.environ,
            # This checkout's code, whatever an editable install elsewhere points at.
            "PYTHONPATH": os.pathsep.join(filter(None, [str(common.REPO), os.environ.get("PYTHONPATH")])),
            "CSBENCH_SPAWNER": kind,
            "CSBENCH_PROXY_PORT": str(self.proxy_port),
            "CSBENCH_HUB_IP": gateway,
            "CSBENCH_HUB_PORT": str(free_port()),
            "CSBENCH_PROXY_API_PORT": str(free_port()),
            "CSBENCH_NETWORK": common.NETWORK,
            "CSBENCH_NOTEBOOK_IMAGE": images["CONSULSPAWNER_NOTEBOOK_IMAGE"],
            "CSBENCH_SIDECAR_IMAGE": images["CONSULSPAWNER_SIDECAR_IMAGE"],
            "CSBENCH_SIDECAR_COMMAND": json.dumps(common.SIDECAR_COMMAND),
            "CSBENCH_CONSUL": consul_url,
            # The hub's identity: a hub-policy token and the JWT signing key (common.hub_identity).
            "CSBENCH_CONSUL_TOKEN": (identity or {}).get("consul_token", ""),
            "CONSULSPAWNER_JWT_KEY_FILE": str((identity or {}).get("jwt_signing_key_file", "")),
            "CSBENCH_ADMIN_TOKEN": self.token,
        }
        self.process = None

    def call(self, method: str, path: str, ok=(200, 201, 202, 204)):
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.proxy_port}/hub/api{path}",
            method=method,
            headers={"Authorization": f"token {self.token}"},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                status, text = response.status, response.read().decode()
        except urllib.error.HTTPError as e:
            status, text = e.code, e.read().decode()
        if status not in ok:
            raise RuntimeError(f"{method} {path}: {status} {text[:300]}")
        return json.loads(text) if text.strip() else None

    def start(self) -> None:
        with open(self.workdir / "jupyterhub.log", "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "jupyterhub", "-f", str(CONFIG)],
                cwd=self.workdir,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 90
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"jupyterhub exited: {self.log_tail()}")
            try:
                self.call("GET", "/")
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)

    def log_tail(self) -> str:
        try:
            return (self.workdir / "jupyterhub.log").read_text()[-3000:]
        except OSError:
            return "(no log)"

    def server(self, user: str):
        return (self.call("GET", f"/users/{user}") or {}).get("servers", {}).get("")

    def spawn(self, user: str, timeout: float = 180, poll: float = 0.02) -> float:
        """POST the server, wait until the hub calls it ready; seconds taken."""
        self.call("POST", f"/users/{user}", ok=(201, 409))
        started = time.perf_counter()
        self.call("POST", f"/users/{user}/server", ok=(201, 202))
        while not ((server := self.server(user)) and server.get("ready")):
            if time.perf_counter() - started > timeout:
                raise TimeoutError(f"{self.kind}: {user}'s server not ready after {timeout}s:\n{self.log_tail()}")
            time.sleep(poll)
        return time.perf_counter() - started

    def spawn_following_progress(self, user: str, timeout: float = 180) -> float:
        """POST the server and follow its progress event stream, as the spawn page in a browser
        does (one streaming request, no polling), until the hub sends ready; seconds taken."""
        self.call("POST", f"/users/{user}", ok=(201, 409))
        started = time.perf_counter()
        self.call("POST", f"/users/{user}/server", ok=(201, 202))
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.proxy_port}/hub/api/users/{user}/server/progress",
            headers={"Authorization": f"token {self.token}", "Accept": "text/event-stream"},
        )
        with urllib.request.urlopen(request, timeout=timeout) as stream:
            for raw in stream:
                line = raw.decode().strip()
                if not line.startswith("data:"):
                    continue
                event = json.loads(line[len("data:") :])
                if event.get("ready"):
                    return time.perf_counter() - started
                if event.get("failed"):
                    raise RuntimeError(f"{self.kind}: {user}'s spawn failed: {event.get('message')}")
        raise RuntimeError(f"{self.kind}: {user}'s progress stream ended before ready:\n{self.log_tail()}")

    def stop(self, user: str, timeout: float = 180, poll: float = 0.02) -> float:
        """DELETE the server, wait until the hub has no server for the user; seconds taken."""
        started = time.perf_counter()
        self.call("DELETE", f"/users/{user}/server", ok=(202, 204))
        while self.server(user) is not None:
            if time.perf_counter() - started > timeout:
                raise TimeoutError(f"{self.kind}: {user}'s server not gone after {timeout}s")
            time.sleep(poll)
        return time.perf_counter() - started

    def spawn_and_stop(self, user: str, timeout: float = 180) -> tuple[float, float]:
        return self.spawn(user, timeout), self.stop(user, timeout)

    def close(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        pid_file = self.workdir / "jupyterhub-proxy.pid"
        try:
            os.kill(int(pid_file.read_text().strip()), signal.SIGKILL)
        except (OSError, ValueError):
            pass
        shutil.rmtree(self.workdir, ignore_errors=True)
