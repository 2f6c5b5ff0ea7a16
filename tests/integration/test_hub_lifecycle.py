"""Where the behaviour is JupyterHub's own, with a real hub: a server whose sidecar stays dead
(the hub's poll finds it, skips stop() and runs only the post-stop hook), and a user cancelling
a spawn that is still talking to Consul."""

from .conftest import NOTHING, container_ids, mesh_objects, wait_for


async def _clean(admin, docker_client, user):
    return await mesh_objects(admin, f"jupyter-{user}") == NOTHING and not container_ids(
        docker_client, name=f"^/jupyter-{user}(\\.consul-sidecar)?$"
    )


async def test_a_dead_sidecar_stops_the_server_in_the_hub_and_the_next_spawn_works(
    hub_runner, admin, docker_client, user_name
):
    api = await hub_runner.start()
    await api.spawn(user_name)
    docker_client.api.kill(f"jupyter-{user_name}.consul-sidecar")  # stays dead: Docker restarts crashes only

    # The keeper takes the notebook down with it; the hub's own poll then finds the server gone.
    await wait_for(lambda: api.gone(user_name), timeout=120, interval=1, message="the hub to see the server stopped")
    await wait_for(
        lambda: _clean(admin, docker_client, user_name),
        timeout=60,
        interval=1,
        message="Consul and Docker to hold nothing of the server",
    )

    await api.spawn(user_name)  # the next start works at once: no stale name in the way
    objects = await mesh_objects(admin, f"jupyter-{user_name}")
    assert len(objects["services"]) == 2 and len(objects["tokens"]) == 1 and objects["sources"]


async def test_a_spawn_cancelled_by_the_user_leaves_nothing(hub_runner, admin, mesh_consul, docker_client, user_name):
    api = await hub_runner.start()
    # Consul answers the registration slowly: the spawn is pending, its token and notebook exist.
    mesh_consul.hang("PUT", r"^/v1/agent/service/register$", times=1, seconds=8)
    await api.call("POST", f"/users/{user_name}", ok=(201, 409))
    await api.call("POST", f"/users/{user_name}/server", ok=(201, 202))
    await wait_for(lambda: mesh_consul.count("POST", r"^/v1/acl/login$") >= 1, message="the spawn to log its token in")
    await api.call("DELETE", f"/users/{user_name}/server", ok=(202, 204))  # the user presses cancel

    await wait_for(lambda: api.gone(user_name), timeout=60, interval=1, message="the hub to drop the spawn")
    await wait_for(
        lambda: _clean(admin, docker_client, user_name),
        timeout=90,
        interval=1,
        message="the cancelled spawn to leave nothing behind",
    )
    await api.spawn(user_name)
