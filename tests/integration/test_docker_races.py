"""Docker's own timing, on the real daemon (issue 17): a start while the old container of the
same name is still being removed, a sidecar's death as Docker reports it, a slow stop beside
another user's calls."""

import asyncio
import contextlib
import os
import threading

import pytest
import requests

from consulspawner import hubwide

from .conftest import (
    NOTEBOOK_COMMAND,
    NOTHING,
    container_ids,
    hub_stop,
    mesh_objects,
    sidecar_create_held,
    token_due,
    wait_for,
)

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


async def test_a_killed_sidecar_is_acted_on_long_before_the_keepers_next_round(
    make_spawner, admin, docker_client, user_name
):
    """Docker's die event wakes the keeper (issue 17, item 10): with rounds two minutes apart,
    the server is reported down well before the next round could have seen it."""
    spawner = make_spawner(user_name, keeper_interval=120, check_ttl=600, intention_ttl=600)
    await spawner.start()
    await wait_for(lambda: spawner._keeper is not None, message="the keeper to start")
    docker_client.api.kill(spawner.sidecar_container_id)  # Docker does not restart what was killed on purpose

    status = await wait_for(spawner.poll, timeout=30, message="poll to report the server dead")
    assert "sidecar" in str(status)
    await hub_stop(spawner)
    assert await mesh_objects(admin, f"jupyter-{user_name}") == NOTHING


async def test_a_sidecar_the_spawner_replaced_itself_does_not_wake_the_keeper(make_spawner, docker_client, user_name):
    """A rotation replaces the sidecar on purpose: the old one's die event is not a death of
    this server's sidecar, so the napping keeper sleeps on (with the new sidecar watched) and
    runs no extra round (one ran before and, with a margin that makes every token due, rotated
    again at once)."""
    spawner = make_spawner(
        user_name, token_rotation_margin=3599, keeper_interval=3600, check_ttl=7200, intention_ttl=7200
    )
    await spawner.start()
    old_sidecar = spawner.sidecar_container_id
    deaths_key = (type(spawner), spawner.hub_instance)
    await wait_for(
        lambda: old_sidecar in getattr(hubwide._sidecar_deaths.get(deaths_key), "_waiters", {}),
        message="the keeper to nap watching its sidecar",
    )
    deaths = hubwide._sidecar_deaths[deaths_key]
    await token_due(spawner)
    await spawner.keep_now()  # rotates: a new sidecar, the old one stopped and removed
    new_sidecar = spawner.sidecar_container_id
    assert new_sidecar != old_sidecar

    def napping_on_the_new_sidecar():
        with deaths._lock:
            watched = spawner.sidecar_container_id in deaths._waiters
            return old_sidecar not in deaths._waiters and old_sidecar not in deaths._died and watched

    await wait_for(napping_on_the_new_sidecar, message="the keeper to take note of the old sidecar's die event")
    assert spawner.keeper_rounds == 0 and spawner.sidecar_container_id == new_sidecar
    await hub_stop(spawner)


async def test_a_slow_notebook_stop_does_not_hold_other_users_docker_calls(
    make_spawner, docker_client, images, user_name
):
    """Docker's stop waits its 10 s for a notebook that ignores SIGTERM (PID 1 without a
    handler); another user's spawn must not queue behind it on DockerSpawner's one thread."""
    ignores_sigterm = [
        "python3",
        "-c",
        "import http.server; http.server.ThreadingHTTPServer(('', 8888), "
        "http.server.SimpleHTTPRequestHandler).serve_forever()",
    ]
    slow = make_spawner(user_name, cmd=ignores_sigterm)
    await slow.start()
    notebook, sidecar = slow.container_id, slow.sidecar_container_id
    other = make_spawner(user_name + "b")

    stopping = asyncio.ensure_future(slow.stop())
    # The sidecar's removal runs beside the notebook's stop: once it is gone, the stop is asked.
    await wait_for(lambda: not container_ids(docker_client, id=sidecar), message="the sidecar to be removed")
    await other.docker("inspect_image", images["notebook"])
    assert docker_client.api.inspect_container(notebook)["State"]["Running"], (
        "another user's Docker call waited for the slow stop"
    )
    await stopping


async def test_a_rotation_the_daemon_drops_after_the_old_sidecar_is_gone_takes_the_server_down(
    make_spawner, admin, docker_client, user_name
):
    """docker-py raises requests' own errors when the daemon's connection drops (not APIError):
    a rotation must not let them escape with the old sidecar removed and the server kept."""
    spawner = make_spawner(user_name)
    await spawner.start()
    pool = hubwide._sidecar_dockers[type(spawner)]

    class DropsCreate:
        def __init__(self, client):
            self._client = client

        def __getattr__(self, name):
            if name == "create_container":
                raise requests.exceptions.ConnectionError("Connection aborted (test)")
            return getattr(self._client, name)

    real = pool.client
    pool.client = lambda: DropsCreate(real())  # type: ignore[method-assign]
    try:
        async with spawner._lock():
            await spawner._rotate_token(spawner._mesh(spawner._running_plan()))
    finally:
        del pool.client
    assert "create_container" in spawner.mesh_state.mesh_failure
    status = await wait_for(spawner.poll, message="poll to report the server down")
    assert "sidecar" in str(status)
    await hub_stop(spawner)
    assert await mesh_objects(admin, f"jupyter-{user_name}") == NOTHING


async def test_a_stop_that_cancels_a_rotation_mid_create_still_removes_the_new_sidecar(
    make_spawner, admin, docker_client, user_name
):
    """The sidecar's Docker calls run on threads, which no cancellation stops: a stop that
    cancels the keeper while Docker is still creating the rotation's new sidecar must not
    finish before that create has answered, or the container lands after the teardown looked
    for it by name and stays (seen in CI: the new sidecar, created and never started, left)."""
    spawner = make_spawner(user_name, token_rotation_margin=3599, keeper_interval=0.2)
    await spawner.start()
    with sidecar_create_held(spawner, hold=5) as held:  # the stop gets its chance to run first
        await wait_for(held.creating.is_set, message="the keeper's rotation to create the new sidecar")
        await hub_stop(spawner)
        held.released.set()
        await wait_for(held.created.is_set, message="Docker's create to answer")
    assert not container_ids(docker_client, name=spawner.sidecar_container_name), "the new sidecar was left"
    assert await mesh_objects(admin, f"jupyter-{user_name}") == NOTHING


async def test_a_spawn_cancelled_mid_notebook_create_leaves_no_notebook(make_spawner, admin, docker_client, user_name):
    """As for the sidecar: a spawn cancelled (start_timeout, the user's cancel) while Docker is
    still creating the notebook must record it, so the teardown removes it."""
    spawner = make_spawner(user_name)
    creating, released, created = threading.Event(), threading.Event(), threading.Event()
    real_docker = spawner._docker

    def slow_create(method, *args, **kwargs):
        if method != "create_container":
            return real_docker(method, *args, **kwargs)
        creating.set()
        released.wait(timeout=5)  # the cancellation and the stop get their chance first
        try:
            return real_docker(method, *args, **kwargs)
        finally:
            created.set()

    spawner._docker = slow_create
    starting = asyncio.ensure_future(spawner.start())
    try:
        await wait_for(creating.is_set, message="the spawn to create the notebook")
        starting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await starting
        await hub_stop(spawner)
        released.set()
        await wait_for(created.is_set, message="Docker's create to answer")
    finally:
        released.set()
    assert not container_ids(docker_client, name=spawner.container_name), "the notebook was left"
    assert await mesh_objects(admin, f"jupyter-{user_name}") == NOTHING


async def test_a_notebook_that_fails_to_start_while_its_sidecar_is_made_leaves_no_sidecar(
    make_spawner, admin, docker_client, user_name
):
    """The sidecar is created while the notebook starts. A notebook whose start fails (here:
    its command does not exist) sends the spawn to its teardown while Docker still creates the
    sidecar: the teardown must wait for that create, or the sidecar lands after it and stays."""
    spawner = make_spawner(user_name, cmd=["/no/such/notebook"])
    await spawner._inspect("no-such-container")  # (the sidecars' Docker pool now exists)
    with sidecar_create_held(spawner, hold=30) as held:
        starting = asyncio.ensure_future(spawner.start())
        await wait_for(held.creating.is_set, message="the spawn to create the sidecar")
        await wait_for(
            lambda: not container_ids(docker_client, name=spawner.container_name),
            message="the failed notebook to be removed by the teardown",
        )
        held.released.set()
        with pytest.raises(RuntimeError, match="no/such/notebook"):
            await starting
    await wait_for(held.created.is_set, message="Docker's create to answer")
    assert not container_ids(docker_client, name=spawner.sidecar_container_name), "the sidecar was left"
    assert await mesh_objects(admin, f"jupyter-{user_name}") == NOTHING


def sidecar_restarted(docker_client, spawner, old_pid):
    state = docker_client.api.inspect_container(spawner.sidecar_container_id)["State"]
    return state["Running"] and state["Pid"] not in (0, old_pid)


async def crash_sidecar(docker_client, spawner):
    """Kill the sidecar's process (a crash, not `docker kill`: the restart policy applies)
    and wait until Docker restarted it."""
    pid = docker_client.api.inspect_container(spawner.sidecar_container_id)["State"]["Pid"]
    os.kill(pid, 9)
    await wait_for(lambda: sidecar_restarted(docker_client, spawner, pid), message="Docker to restart the sidecar")


async def test_sidecar_crashes_further_apart_than_the_window_never_add_up(make_spawner, docker_client, user_name):
    """Docker never resets RestartCount (issue 17): with a budget of one crash per 2 s, two
    crashes 2 s apart leave the server running; two within 2 s take it down."""
    spawner = make_spawner(user_name, keeper_interval=1, sidecar_restart_attempts=1, sidecar_restart_window=2)
    await spawner.start()
    loop = asyncio.get_running_loop()
    for _ in range(2):
        crashed = loop.time()
        await crash_sidecar(docker_client, spawner)
        rounds = spawner.keeper_rounds
        await wait_for(
            lambda: loop.time() > crashed + 2.5 and spawner.keeper_rounds >= rounds + 2,  # noqa: B023
            message="the window to pass and two keeper rounds",
        )
    assert await spawner.poll() is None

    # Two crashes within the window: Docker restarts the sidecar after the first; after the
    # second the keeper (woken by the die event) takes the server down.
    await crash_sidecar(docker_client, spawner)
    os.kill(docker_client.api.inspect_container(spawner.sidecar_container_id)["State"]["Pid"], 9)
    status = await wait_for(spawner.poll, message="poll to report the server down")
    assert "sidecar" in str(status)
    await hub_stop(spawner)
