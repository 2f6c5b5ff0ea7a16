"""A real jupyterhub process (with configurable-http-proxy) for end-to-end tests: start it,
stop it gracefully, kill it, start it again on the same database; and a REST client for it."""

import json
import os
import signal
import socket
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path

import aiohttp

from .conftest import SIDECAR_COMMAND, wait_for

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "jupyterhub_config" / "jupyterhub_config.py"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class HubAPI:
    """The hub's REST API as an admin service."""

    def __init__(self, base_url, token):
        self.base = base_url
        self.headers = {"Authorization": f"token {token}"}
        self.session = aiohttp.ClientSession()

    async def call(self, method, path, body=None, ok=(200, 201, 202, 204)):
        async with self.session.request(
            method, f"{self.base}/hub/api{path}", headers=self.headers, json=body
        ) as response:
            text = await response.text()
            assert response.status in ok, f"{method} {path}: {response.status} {text}"
            return json.loads(text) if text else None

    async def server(self, user):
        return (await self.call("GET", f"/users/{user}"))["servers"].get("")

    async def ready(self, user):
        server = await self.server(user)
        return bool(server and server.get("ready"))

    async def gone(self, user):
        return await self.server(user) is None

    async def spawn(self, *users, timeout=180):
        for user in users:
            await self.call("POST", f"/users/{user}", ok=(201, 409))
            await self.call("POST", f"/users/{user}/server", ok=(201, 202))
        for user in users:
            await wait_for(
                lambda user=user: self.ready(user), timeout=timeout, interval=1, message=f"{user}'s server to be ready"
            )

    async def touch(self, user):
        now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        await self.call(
            "POST", f"/users/{user}/activity", {"last_activity": now, "servers": {"": {"last_activity": now}}}
        )


class HubRunner:
    """One hub's working directory (database, cookie secret) across any number of runs."""

    def __init__(self, workdir, mesh_consul, images, network, hub_consul_token, jwt_key_file):
        self.workdir = workdir
        self.token = uuid.uuid4().hex
        # The hub's Consul token (of docker/consul/hub-policy.hcl) reaches it only as a 0600
        # file, as in production: never in its environment, so never in its children's.
        self.consul_token_file = workdir / "hub-consul-token"
        self.consul_token_file.touch(mode=0o600)
        self.consul_token_file.write_text(hub_consul_token)
        self.consul_token = hub_consul_token
        self.proxy_port = free_port()
        self.base_env = {
            **{k: v for k, v in os.environ.items() if k != "CONSUL_HTTP_TOKEN"},
            "CONSUL_HTTP_ADDR": mesh_consul.url,
            "CONSUL_HTTP_TOKEN_FILE": str(self.consul_token_file),
            # The hub's JWT signing key, a 0600 file (the auth method is bootstrapped by the test).
            "CONSULSPAWNER_JWT_KEY_FILE": str(jwt_key_file),
            "CONSULSPAWNER_SIDECAR_CONSUL_ADDR": mesh_consul.url,
            "CONSULSPAWNER_NETWORK": network["name"],
            "CONSULSPAWNER_HUB_IP": network["gateway"],
            "CONSULSPAWNER_HUB_PORT": str(free_port()),
            "CONSULSPAWNER_PROXY_PORT": str(self.proxy_port),
            "CONSULSPAWNER_PROXY_API_PORT": str(free_port()),
            "CONSULSPAWNER_NOTEBOOK_IMAGE": images["notebook"],
            "CONSULSPAWNER_SIDECAR_IMAGE": images["sidecar"],
            "CONSULSPAWNER_SIDECAR_COMMAND": json.dumps(SIDECAR_COMMAND),
            "CONSULSPAWNER_CHECK_INTERVAL": "5",
            "CONSULSPAWNER_ADMIN_SERVICE_TOKEN": self.token,
        }
        self.process = None
        self.api = None
        self.runs = 0

    @property
    def log_path(self):
        return self.workdir / f"jupyterhub-{self.runs}.log"

    def _launch(self, env):
        with open(self.log_path, "wb") as log:
            # Its own session, so the proxy it starts can be killed with it.
            return subprocess.Popen(
                [sys.executable, "-m", "jupyterhub", "-f", str(CONFIG)],
                cwd=self.workdir,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    async def start(self, **extra_env):
        self.runs += 1
        self.process = self._launch({**self.base_env, **extra_env})
        self.api = self.api or HubAPI(f"http://127.0.0.1:{self.proxy_port}", self.token)
        process, log_path = self.process, self.log_path

        async def answers():
            if process.poll() is not None:
                raise AssertionError(f"jupyterhub exited:\n{log_path.read_text()[-4000:]}")
            try:
                await self.api.call("GET", "/", ok=(200,))
                return True
            except (aiohttp.ClientError, AssertionError):
                return False

        await wait_for(answers, timeout=90, interval=0.5, message="jupyterhub to answer")
        return self.api

    def _signal_group(self, signum):
        try:
            os.killpg(self.process.pid, signum)
        except ProcessLookupError:
            pass

    def stop(self):
        """Graceful: SIGTERM to the hub and its proxy; servers keep running (cleanup_servers=False)."""
        if self.process and self.process.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                self.process.wait(timeout=10)

    def kill_hub_only(self):
        """SIGKILL to the hub process alone, as a crash: it cleans nothing up."""
        self.process.kill()
        self.process.wait(timeout=10)

    def proxy_pid(self):
        """The configurable-http-proxy JupyterHub started (it writes the pid into its working
        directory), while that process lives."""
        pid_file = self.workdir / "jupyterhub-proxy.pid"
        try:
            pid = int(pid_file.read_text().strip())
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read()
        except (OSError, ValueError):
            return None
        return pid if b"configurable-http-proxy" in cmdline else None

    def kill_everything(self):
        if self.process:
            self._signal_group(signal.SIGKILL)
        # JupyterHub starts the proxy in a session of its own, so a hub that was SIGKILLed
        # leaves it running outside the hub's process group: kill it by its pid file.
        pid = self.proxy_pid()
        if pid is not None:
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass

    def logs(self):
        return "\n".join(
            f"--- jupyterhub run {i} ---\n{(self.workdir / f'jupyterhub-{i}.log').read_text()[-6000:]}"
            for i in range(1, self.runs + 1)
        )
