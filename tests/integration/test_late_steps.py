"""Steps that arrive late, fail once, or run side by side, on the real Docker daemon against the
fake Consul agent holding the shipped hub policy (issue 17)."""

import asyncio
import copy
import json
import re
from types import SimpleNamespace

import pytest
from docker.errors import APIError

from consulspawner.spawner import ConsulSpawner

from .conftest import NOTHING, container_ids, containers_gone, hub_stop, mesh_objects, wait_for


def fail_docker_once(spawner, method):
    """Make the next DockerSpawner call ``method`` of ``spawner`` fail as the daemon would."""
    original = spawner.docker
    failed = []

    def docker(name, *args, **kwargs):
        if name == method and not failed:
            failed.append(name)
            raise APIError(f"injected failure of {method}")
        return original(name, *args, **kwargs)

    spawner.docker = docker
    return failed


async def test_a_server_the_keeper_took_down_stays_failed_until_its_notebook_is_gone(
    make_spawner, admin, docker_client, user_name
):
    spawner = make_spawner(user_name, keeper_interval=0.5)
    await spawner.start()
    name = f"jupyter-{user_name}"
    failed = fail_docker_once(spawner, "stop")
    docker_client.containers.get(spawner.sidecar_container_id).stop(timeout=1)
    await wait_for(lambda: failed, message="the keeper to try to stop the notebook")
    await wait_for(lambda: spawner._keeper is None or spawner._keeper.done(), message="the keeper to exit")
    assert container_ids(docker_client, id=spawner.container_id), "the injected failure left the notebook running"

    status = await spawner.poll()
    assert status is not None and "stopped and stayed down" in status
    # ... and a restarted hub, from the database, says so too.
    saved = json.loads(json.dumps(spawner.get_state()))
    assert "stayed down" in saved["consul"]["mesh_failure"]

    await hub_stop(spawner)  # poll says failed: JupyterHub skips stop() and runs the hook
    await containers_gone(docker_client, name)
    assert await mesh_objects(admin, name) == NOTHING


async def test_a_reconcile_that_tears_the_server_down_grants_nothing_after(
    make_spawner, admin, docker_client, user_name
):
    first = make_spawner(user_name)
    await first.start()
    state = json.loads(json.dumps(first.get_state()))
    await first.forget()  # the old hub process is gone...
    await admin.delete_token(state["consul"]["token_accessor"])  # ... and so is the token
    name = f"jupyter-{user_name}"

    # The restarted hub's repair (a new token, a new sidecar) fails: the sidecar exits at once.
    second = make_spawner(user_name, sidecar_command=["sh", "-c", "exit 3"])
    second.load_state(state)
    await wait_for(lambda: second.mesh_state.mesh_failure, message="the keeper to take the server down")
    await wait_for(lambda: second._keeper is None or second._keeper.done(), message="the keeper to exit")
    assert await mesh_objects(admin, name) == NOTHING, "an intention no state records outlives the server"
    assert "removed from the service mesh" in await second.poll()
    await hub_stop(second)
    await containers_gone(docker_client, name)


async def test_state_written_by_an_earlier_release_is_still_revoked(make_spawner, admin, docker_client, user_name):
    first = make_spawner(user_name)
    await first.start()
    name = f"jupyter-{user_name}"
    # State as release 1 wrote it: no version, no hub_instance.
    v1 = json.loads(json.dumps(first.get_state()))
    v1["consul"] = {k: v for k, v in v1["consul"].items() if k not in ("hub_instance", "version")}
    await first.forget()

    second = make_spawner(user_name)
    await asyncio.to_thread(second.load_state, v1)  # as a tool would, so no keeper round repairs it first
    assert second.mesh_state.hub_instance == second.hub_instance
    await second.stop()
    await second.run_post_stop_hook()
    assert await mesh_objects(admin, name) == NOTHING
    assert second.get_state().get("consul") is None
    await containers_gone(docker_client, name)


def instances(services, name):
    """The incarnations registered under the service name ``name``."""
    return {s["Meta"].get("incarnation") for s in services.values() if s.get("Service") == name}


async def test_a_late_deregister_of_the_old_server_never_removes_the_next_one(
    make_spawner, admin, mesh_consul, docker_client, user_name
):
    name = f"jupyter-{user_name}"
    deregister = r"^/v1/agent/service/deregister/"
    old = make_spawner(user_name, consul_request_timeout=2)
    await old.start()
    # The stop's deregister reaches the agent but is held there; the spawner gives up on it
    # and its background retry deregisters the old server.
    mesh_consul.hang("PUT", deregister, times=1)
    await hub_stop(old)
    await wait_for(lambda: mesh_consul.count("PUT", deregister) >= 1, message="the background deregister")

    new = make_spawner(user_name)  # a new Spawner object (as after a hub restart): a new lock
    await new.start()
    incarnation = new.mesh_state.incarnation
    assert instances(await admin.agent_services(), name) == {incarnation}

    # Every deregister the old server sent, the held one included, names the old start alone.
    sent = [path.rsplit("/", 1)[1] for method, path in mesh_consul.attempts if re.search(deregister, path)]
    assert len(sent) >= 2 and new.mesh_state.service_id not in sent, sent
    mesh_consul.clear_faults()  # the held deregister lands now, late
    assert await new.poll() is None
    assert instances(await admin.agent_services(), name) == {incarnation}, "the late deregister removed the new server"
    await hub_stop(new)
    assert await mesh_objects(admin, name) == NOTHING
    await containers_gone(docker_client, name)


def killed_mid_spawn(first):
    """What a hub killed mid-spawn leaves: everything of ``first`` running, no state saved."""
    return first.mesh_state.incarnation, first.sidecar_container_id


async def test_a_stop_without_state_removes_what_a_killed_hub_left(make_spawner, admin, docker_client, user_name):
    first = make_spawner(user_name)
    await first.start()
    _, sidecar = killed_mid_spawn(first)
    await first.forget()  # the hub died before it saved the state

    second = make_spawner(user_name)  # the restarted hub: no state for this server
    await second.stop()
    await second.run_post_stop_hook()
    name = f"jupyter-{user_name}"
    assert await mesh_objects(admin, name) == NOTHING
    await wait_for(lambda: not container_ids(docker_client, id=sidecar), message="the sidecar left behind to go")
    await containers_gone(docker_client, name)


async def test_the_hub_sweeps_orphans_when_it_starts_not_at_the_first_spawn(
    make_spawner, admin, docker_client, user_name
):
    first = make_spawner(user_name)
    await first.start()
    _, sidecar = killed_mid_spawn(first)
    await first.forget()

    # The restarted hub builds its spawners (init_spawners); nobody spawns anything.
    users: dict = {}
    config = copy.deepcopy(first.config)
    config.ConsulSpawner.orphan_sweep_delay = 0.5
    user = SimpleNamespace(name=user_name, url=f"/user/{user_name}/", escaped_name=user_name, id=1, settings={})
    user.settings["users"] = users
    second = ConsulSpawner(
        user=user, hub=first.hub, config=config, api_token="x" * 32, oauth_client_id=f"jupyterhub-user-{user_name}"
    )
    users[user_name] = SimpleNamespace(name=user_name, spawners={"": second})
    name = f"jupyter-{user_name}"
    await wait_for(lambda: _nothing(admin, name), message="the hub start's orphan sweep")
    await wait_for(lambda: not container_ids(docker_client, id=sidecar), message="the orphaned sidecar to go")
    await hub_stop(second)
    await containers_gone(docker_client, name)


async def _nothing(admin, name):
    return await mesh_objects(admin, name) == NOTHING


async def test_a_cancelled_start_says_so_and_is_undone(make_spawner, admin, docker_client, user_name, caplog):
    spawner = make_spawner(user_name)
    starting = asyncio.ensure_future(spawner.start())
    await wait_for(lambda: len(spawner._progress_events) >= 2, message="the start to be under way")
    starting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await starting
    messages = [r.getMessage() for r in caplog.records if "Start of" in r.getMessage()]
    assert messages and all("cancelled" in m and "()" not in m for m in messages), messages
    name = f"jupyter-{user_name}"
    await wait_for(lambda: _nothing(admin, name), message="the cancelled start to be undone")
    await containers_gone(docker_client, name)


async def test_a_keeper_that_keeps_being_refused_reports_the_server_failed(
    make_spawner, admin, mesh_consul, docker_client, user_name
):
    spawner = make_spawner(user_name, keeper_interval=0.3)
    await spawner.start()
    # A policy change: Consul now refuses the heartbeat every round (a 403 is never retried).
    mesh_consul.fail("PUT", r"^/v1/agent/check/pass/", status=403, times=10_000, body="Permission denied")
    status = await wait_for(spawner.poll, message="poll to report the server failed")
    assert "rounds in a row" in status and "403" in status
    mesh_consul.clear_faults()
    await hub_stop(spawner)
    name = f"jupyter-{user_name}"
    assert await mesh_objects(admin, name) == NOTHING
    await containers_gone(docker_client, name)


async def test_with_consul_hung_a_stop_takes_one_request_timeout_plus_dockers_stop(
    make_spawner, admin, mesh_consul, docker_client, user_name
):
    timeout = 4.0
    spawner = make_spawner(user_name, consul_request_timeout=timeout)
    await spawner.start()
    for method, path in (
        ("PUT", r"^/v1/config$"),
        ("DELETE", r"^/v1/config/"),
        ("PUT", r"^/v1/agent/service/deregister/"),
        ("DELETE", r"^/v1/acl/token/"),
    ):
        mesh_consul.hang(method, path, times=10_000)
    loop = asyncio.get_running_loop()
    began = loop.time()
    await hub_stop(spawner)
    took = loop.time() - began
    # One shared budget for every Consul step of the stop, not one per phase (revoke, then the
    # rest): the notebook's own stop is quick here (it exits on SIGTERM).
    assert took < 2 * timeout, f"the stop took {took:.1f}s with Consul hung"
    mesh_consul.clear_faults()  # the background teardown finishes the job
    name = f"jupyter-{user_name}"
    await wait_for(lambda: _nothing(admin, name), timeout=90, message="the background teardown")
    await containers_gone(docker_client, name)
