"""End to end: a real jupyterhub process with ConsulSpawner, configurable-http-proxy and
jupyterhub-idle-culler. Two users spawn through the REST API; the culler stops the idle one and
everything of theirs leaves Consul, while the active user's stay."""

import asyncio

import pytest

from consulspawner import naming

from .conftest import NOTHING, mesh_objects, wait_for


@pytest.fixture
async def hub(hub_runner):
    return await hub_runner.start(CONSULSPAWNER_CULL_TIMEOUT="30", CONSULSPAWNER_CULL_EVERY="5")


async def test_culler_removes_the_idle_users_mesh_and_keeps_the_active_one(hub, admin, user_name):
    idle, active = f"{user_name}idle", f"{user_name}busy"
    await hub.spawn(idle, active)

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
        await wait_for(lambda: hub.gone(idle), timeout=180, interval=1, message="the culler to stop the idle server")
        await wait_for(lambda: _mesh_empty(admin, f"jupyter-{idle}"), timeout=60, message="idle user's mesh to go")
        assert await hub.server(active) is not None
        objects = await mesh_objects(admin, f"jupyter-{active}")
        assert len(objects["services"]) == 2 and len(objects["tokens"]) == 1 and objects["sources"]
    finally:
        busy.cancel()

    await hub.call("DELETE", f"/users/{active}/server")
    await wait_for(lambda: hub.gone(active), timeout=120, interval=1, message="the active server to stop")
    assert await mesh_objects(admin, f"jupyter-{active}") == NOTHING


async def _mesh_empty(admin, service):
    return await mesh_objects(admin, service) == NOTHING


async def test_named_servers_are_separate_mesh_members(hub_runner, admin, user_name):
    """Each named server is its own service, token and intention source, and stopping one
    leaves the other's."""
    api = await hub_runner.start()
    await api.call("POST", f"/users/{user_name}", ok=(201,))
    for server in ("", "gpu-box"):
        path = f"/users/{user_name}/servers/{server}" if server else f"/users/{user_name}/server"
        await api.call("POST", path, ok=(201, 202))

    async def both_ready():
        servers = (await api.call("GET", f"/users/{user_name}"))["servers"]
        return all(servers.get(name, {}).get("ready") for name in ("", "gpu-box"))

    await wait_for(both_ready, timeout=180, interval=1, message="both servers")
    default, named = naming.service_name(user_name), naming.service_name(user_name, "gpu-box")
    assert default != named
    services = {s["Service"]: s for s in (await admin.agent_services()).values()}
    assert services[named]["Meta"]["hub-server"] == "gpu-box"
    for service in (default, named):
        objects = await mesh_objects(admin, service)
        assert len(objects["services"]) == 2 and len(objects["tokens"]) == 1 and objects["sources"] == [service]

    await api.call("DELETE", f"/users/{user_name}/servers/gpu-box", ok=(202, 204))
    await wait_for(lambda: _mesh_empty(admin, named), timeout=60, message="the named server's mesh to go")
    assert len((await mesh_objects(admin, default))["services"]) == 2
