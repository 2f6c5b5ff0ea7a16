"""End to end: a real jupyterhub process with ConsulSpawner, configurable-http-proxy and
jupyterhub-idle-culler. Two users spawn through the REST API; the culler stops the idle one and
everything of theirs leaves Consul, while the active user's stay."""

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import uuid
from datetime import datetime, timezone
from pathlib import Path

import aiohttp
import pytest

from ..conftest import MASTER_TOKEN
from .conftest import DEVSIDECAR_COMMAND, NOTHING, mesh_objects, wait_for

REPO = Path(__file__).resolve().parents[2]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Hub:
    """A running jupyterhub and an admin API session on it."""

    def __init__(self, base_url, token):
        self.base = base_url
        self.headers = {"Authorization": f"token {token}"}
        self.session = aiohttp.ClientSession()

    async def call(self, method, path, body=None, ok=(200, 201, 202, 204)):
        async with self.session.request(method, f"{self.base}/hub/api{path}", headers=self.headers,
                                        json=body) as response:
            text = await response.text()
            assert response.status in ok, f"{method} {path}: {response.status} {text}"
            return json.loads(text) if text else None

    async def server(self, user):
        return (await self.call("GET", f"/users/{user}"))["servers"].get("")

    async def touch(self, user):
        now = datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")
        await self.call("POST", f"/users/{user}/activity",
                        {"last_activity": now, "servers": {"": {"last_activity": now}}})


def launch_hub(workdir, env, log_path):
    config = REPO / "jupyterhub_config" / "jupyterhub_config.py"
    with open(log_path, "wb") as log:
        return subprocess.Popen([sys.executable, "-m", "jupyterhub", "-f", str(config)],
                                cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT)


@pytest.fixture
async def hub(tmp_path, images, test_network, mesh_consul, request):
    if not shutil.which("configurable-http-proxy"):
        pytest.fail("configurable-http-proxy is not installed: scripts/test.sh installs it with npm")
    proxy_port, token = free_port(), uuid.uuid4().hex
    env = {
        **os.environ,
        "CONSUL_HTTP_ADDR": mesh_consul.url,
        "CONSUL_HTTP_TOKEN": MASTER_TOKEN,
        "CONSULSPAWNER_SIDECAR_CONSUL_ADDR": mesh_consul.url,
        "CONSULSPAWNER_NETWORK": test_network["name"],
        "CONSULSPAWNER_HUB_IP": test_network["gateway"],
        "CONSULSPAWNER_HUB_PORT": str(free_port()),
        "CONSULSPAWNER_PROXY_PORT": str(proxy_port),
        "CONSULSPAWNER_PROXY_API_PORT": str(free_port()),
        "CONSULSPAWNER_NOTEBOOK_IMAGE": images["notebook"],
        "CONSULSPAWNER_SIDECAR_IMAGE": images["sidecar"],
        "CONSULSPAWNER_SIDECAR_COMMAND": json.dumps(DEVSIDECAR_COMMAND),
        "CONSULSPAWNER_CULL_TIMEOUT": "30",
        "CONSULSPAWNER_CULL_EVERY": "5",
        "CONSULSPAWNER_CHECK_INTERVAL": "5",
        "CONSULSPAWNER_ADMIN_SERVICE_TOKEN": token,
    }
    log_path = tmp_path / "jupyterhub.log"
    process = launch_hub(tmp_path, env, log_path)
    api = Hub(f"http://127.0.0.1:{proxy_port}", token)

    async def hub_answers():
        if process.poll() is not None:
            raise AssertionError(f"jupyterhub exited:\n{log_path.read_text()[-4000:]}")
        try:
            await api.call("GET", "/", ok=(200,))
            return True
        except (aiohttp.ClientError, AssertionError):
            return False

    try:
        await wait_for(hub_answers, timeout=90, interval=0.5, message="jupyterhub to answer")
        yield api
    finally:
        await api.session.close()
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
        failed = getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed
        if failed:
            print(f"\n--- jupyterhub log ---\n{log_path.read_text()[-8000:]}")


async def test_culler_removes_the_idle_users_mesh_and_keeps_the_active_one(hub, admin, user_name):
    idle, active = f"{user_name}idle", f"{user_name}busy"
    for user in (idle, active):
        await hub.call("POST", f"/users/{user}")
        await hub.call("POST", f"/users/{user}/server")
    for user in (idle, active):
        await wait_for(lambda user=user: _ready(hub, user), timeout=180, interval=1, message=f"{user}'s server")

    for user in (idle, active):
        objects = await mesh_objects(admin, f"jupyter-{user}")
        assert objects["services"] == [f"jupyter-{user}", f"jupyter-{user}-sidecar-proxy"]
        assert len(objects["tokens"]) == 1 and objects["sources"] == [f"jupyter-{user}"]

    async def keep_busy():
        while True:
            await hub.touch(active)
            await asyncio.sleep(2)

    busy = asyncio.create_task(keep_busy())
    try:
        await wait_for(lambda: _gone(hub, idle), timeout=180, interval=1, message="the culler to stop the idle server")
        await wait_for(lambda: _mesh_empty(admin, f"jupyter-{idle}"), timeout=60, message="idle user's mesh to go")
        assert await hub.server(active) is not None
        objects = await mesh_objects(admin, f"jupyter-{active}")
        assert len(objects["services"]) == 2 and len(objects["tokens"]) == 1 and objects["sources"]
    finally:
        busy.cancel()

    await hub.call("DELETE", f"/users/{active}/server")
    await wait_for(lambda: _gone(hub, active), timeout=120, interval=1, message="the active server to stop")
    assert await mesh_objects(admin, f"jupyter-{active}") == NOTHING


async def _ready(hub, user):
    server = await hub.server(user)
    return bool(server and server.get("ready"))


async def _gone(hub, user):
    return await hub.server(user) is None


async def _mesh_empty(admin, service):
    return await mesh_objects(admin, service) == NOTHING
