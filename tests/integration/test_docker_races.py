"""Docker's own timing, on the real daemon (issue 17): a start while the old container of the
same name is still being removed."""

from .conftest import NOTEBOOK_COMMAND, hub_stop, wait_for

# A layer with many files takes Docker a while to remove, which holds the old name meanwhile.
FILL_THEN_SERVE = (
    "import os; os.makedirs('/tmp/fill'); "
    "[open(f'/tmp/fill/{i}', 'w').close() for i in range(60000)]; print('filled', flush=True); " + NOTEBOOK_COMMAND[2]
)


async def test_a_start_waits_while_the_old_notebook_is_still_being_removed(
    make_spawner, docker_client, images, test_network, user_name
):
    """As after a killed sidecar took its notebook down (auto_remove still at work): the
    next start must not fail with Docker's 409 "container name already in use"."""
    spawner = make_spawner(user_name)
    old = docker_client.api.create_container(
        images["notebook"],
        command=["python3", "-c", FILL_THEN_SERVE],
        name=spawner.container_name,
        host_config=docker_client.api.create_host_config(auto_remove=True, network_mode=test_network["name"]),
    )["Id"]
    docker_client.api.start(old)
    await wait_for(lambda: b"filled" in docker_client.api.logs(old), message="the old notebook to fill its layer")
    docker_client.api.kill(old)
    await wait_for(
        lambda: not docker_client.api.inspect_container(old)["State"]["Running"], message="the old notebook to exit"
    )

    await spawner.start()
    assert await spawner.poll() is None
    await hub_stop(spawner)
