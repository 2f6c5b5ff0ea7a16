"""Short-lived by construction, on real containers: token rotation, Consul faults at start and
stop (every call failing once), Consul down or slow, and Consul restarted with state kept."""

import asyncio
import json
import logging
import time

import pytest

from .conftest import NOTHING, container_exec, containers_gone, hub_stop, mesh_objects, token_due, wait_for

# The sidecar's upstream listener is bound in the notebook's network namespace (the connectproxy
# sidecar accepts, then dials the upstream; no Trino is needed to prove the listener).
UPSTREAM_PROBE = ("python3", "-c", "import socket;socket.create_connection(('127.0.0.1', 28080), timeout=5).close()")


async def upstream_answers(docker_client, spawner):
    code, _ = container_exec(docker_client, spawner.container_id, *UPSTREAM_PROBE)
    return code == 0


async def test_token_rotation_keeps_the_server_usable_with_one_live_token(
    make_spawner, admin, docker_client, user_name, caplog
):
    spawner = make_spawner(
        user_name, token_rotation_margin=3599, keeper_interval=3600, check_ttl=7200, intention_ttl=7200
    )
    caplog.set_level(logging.INFO, logger="consulspawner.audit")
    await spawner.start()
    name = f"jupyter-{user_name}"
    [first] = (await mesh_objects(admin, name))["tokens"]
    first_sidecar = spawner.sidecar_container_id
    await token_due(spawner)

    # Measure the upstream's gap: probe it from inside the notebook while the keeper rotates.
    gap = await _upstream_gap_during(docker_client, spawner, spawner.keep_now())
    print(f"\nthe upstream was unreachable for {gap:.2f}s during the rotation")
    assert gap < 30
    rotated_at = time.monotonic()
    [second] = (await mesh_objects(admin, name))["tokens"]
    assert second != first and await admin.read_token(first) is None
    assert spawner.mesh_state.token_accessor == second
    assert spawner.sidecar_container_id != first_sidecar
    # The audit trail says both halves of the rotation: the new login and the old token's logout.
    rotation = [
        json.loads(r.getMessage())["event"]
        for r in caplog.records
        if r.name == "consulspawner.audit" and '"cause":"token rotation"' in r.getMessage()
    ]
    assert rotation == ["token-login", "token-logout"]
    await wait_for(lambda: upstream_answers(docker_client, spawner), timeout=30, message="upstream after rotation")
    print(f"\nrotation and upstream back in {time.monotonic() - rotated_at:.1f}s")
    # The new sidecar holds the new token, and only it.
    _, out = container_exec(docker_client, spawner.sidecar_container_id, "cat", "/consul/token")
    assert out == (await admin.read_token(second))["SecretID"]

    await hub_stop(spawner)
    assert await mesh_objects(admin, name) == NOTHING


async def _upstream_gap_during(docker_client, spawner, work):
    """Longest stretch (s) in which the notebook's upstream refused connections while ``work``
    ran (a connection attempt every 50 ms from inside the notebook's network namespace)."""
    probe = docker_client.api.exec_create(
        spawner.container_id,
        [
            "python3",
            "-c",
            "import socket, time\n"
            "gap = worst = 0.0; last_ok = time.monotonic(); end = time.monotonic() + 60\n"
            "while time.monotonic() < end:\n"
            "    try:\n"
            "        socket.create_connection(('127.0.0.1', 28080), timeout=1).close(); now = time.monotonic()\n"
            "        worst = max(worst, now - last_ok); last_ok = now\n"
            "    except OSError:\n"
            "        pass\n"
            "    time.sleep(0.05)\n"
            "    if open('/tmp/stop-probe', 'a') and __import__('os').path.getsize('/tmp/stop-probe'): break\n"
            "print(round(worst, 3))\n",
        ],
    )
    output = asyncio.get_running_loop().run_in_executor(None, docker_client.api.exec_start, probe["Id"])
    await asyncio.sleep(0.5)
    await work
    await asyncio.get_running_loop().run_in_executor(
        None,
        lambda: docker_client.containers.get(spawner.container_id).exec_run(
            ["sh", "-c", "echo stop > /tmp/stop-probe"]
        ),
    )
    return float((await output).decode().strip().splitlines()[-1])


START_CALLS = [
    ("POST", r"^/v1/acl/login$"),
    ("PUT", r"^/v1/agent/service/register$"),
    ("GET", r"^/v1/health/service/"),
    ("GET", r"^/v1/config/service-intentions/"),
    ("PUT", r"^/v1/config$"),
]


@pytest.mark.parametrize(("method", "path"), START_CALLS)
async def test_each_start_call_failing_once_leaves_consul_consistent(
    make_spawner, admin, mesh_consul, docker_client, user_name, method, path
):
    spawner = make_spawner(user_name)
    name = f"jupyter-{user_name}"
    mesh_consul.fail(method, path, status=500, times=1)
    try:
        await spawner.start()
    except RuntimeError as e:
        # Failed: the message names the call, and nothing is left behind.
        assert method in str(e)
        assert await mesh_objects(admin, name) == NOTHING
        await containers_gone(docker_client, name)
        return
    # Retried through: everything is there, complete.
    objects = await mesh_objects(admin, name)
    assert objects["services"] == [name, f"{name}-sidecar-proxy"]
    assert len(objects["tokens"]) == 1 and objects["sources"] == [name]
    await hub_stop(spawner)
    assert await mesh_objects(admin, name) == NOTHING


STOP_CALLS = [
    ("GET", r"^/v1/config/service-intentions/"),
    ("DELETE", r"^/v1/config/service-intentions/"),
    ("PUT", r"^/v1/agent/service/deregister/"),
    ("POST", r"^/v1/acl/logout$"),
]


@pytest.mark.parametrize(("method", "path"), STOP_CALLS)
async def test_each_stop_call_failing_once_is_eventually_done(
    make_spawner, admin, mesh_consul, docker_client, user_name, method, path
):
    spawner = make_spawner(user_name, consul_retry_budget=0.1)
    name = f"jupyter-{user_name}"
    await spawner.start()
    mesh_consul.fail(method, path, status=500, times=1)
    await hub_stop(spawner)
    # The server stopped at once; what Consul refused is retried in the background.
    await containers_gone(docker_client, name)
    await wait_for(lambda: _nothing(admin, name), timeout=60, message="background revocation")
    assert mesh_consul.count(method, path) >= 1


async def test_consul_slow_at_spawn_fails_in_bounded_time_naming_the_call(
    make_spawner, admin, mesh_consul, docker_client, user_name
):
    spawner = make_spawner(user_name, consul_request_timeout=1.0, consul_retry_budget=2.0)
    mesh_consul.hang("PUT", r"^/v1/agent/service/register$", times=100)
    started = time.monotonic()
    with pytest.raises(RuntimeError, match=r"PUT /v1/agent/service/register.*no answer") as raised:
        await spawner.start()
    elapsed = time.monotonic() - started
    print(f"\nspawn failed after {elapsed:.1f}s: {raised.value}")
    assert elapsed < 30
    mesh_consul.clear_faults()
    await wait_for(lambda: _nothing(admin, f"jupyter-{user_name}"), timeout=30, message="rollback")
    await containers_gone(docker_client, f"jupyter-{user_name}")


async def test_consul_down_at_spawn_fails_cleanly(make_spawner, admin, mesh_consul, user_name):
    spawner = make_spawner(user_name, consul_request_timeout=1.0, consul_retry_budget=1.0)
    mesh_consul.stop()
    try:
        with pytest.raises(RuntimeError, match=r"POST /v1/(internal/acl/authorize|acl/login)"):
            await spawner.start()
    finally:
        mesh_consul.restart()
    assert await mesh_objects(admin, f"jupyter-{user_name}") == NOTHING


async def test_consul_down_at_stop_then_back(make_spawner, admin, mesh_consul, docker_client, user_name):
    spawner = make_spawner(user_name, consul_request_timeout=1.0, consul_retry_budget=0.5)
    name = f"jupyter-{user_name}"
    await spawner.start()
    mesh_consul.stop()
    try:
        await hub_stop(spawner)  # must not raise, must not hang on Consul
        await containers_gone(docker_client, name)
    finally:
        mesh_consul.restart()
    await wait_for(lambda: _nothing(admin, name), timeout=90, message="revocation once Consul is back")


async def test_consul_restarted_with_state_kept_running_servers_keep_working(
    make_spawner, admin, mesh_consul, docker_client, user_name
):
    spawner = make_spawner(user_name, keeper_interval=0.5)
    await spawner.start()
    mesh_consul.stop()
    mesh_consul.restart()
    rounds = spawner.keeper_rounds
    await wait_for(lambda: spawner.keeper_rounds > rounds + 1, message="keeper rounds after the restart")
    assert await spawner.poll() is None
    assert await upstream_answers(docker_client, spawner)
    objects = await mesh_objects(admin, f"jupyter-{user_name}")
    assert len(objects["services"]) == 2 and objects["sources"]
    state = json.dumps(spawner.get_state())
    await hub_stop(spawner)
    assert await mesh_objects(admin, f"jupyter-{user_name}") == NOTHING
    assert "SecretID" not in state


async def _nothing(admin, name):
    return await mesh_objects(admin, name) == NOTHING


async def test_a_failed_rotation_keeps_the_server_on_its_old_token_and_is_retried(
    make_spawner, admin, mesh_consul, user_name
):
    """Issue 16: a rotation whose login fails is not recorded; the server stays on its old, still
    valid token (same sidecar), poll says healthy, and the next round rotates."""
    spawner = make_spawner(
        user_name,
        token_rotation_margin=3599,
        keeper_interval=3600,
        check_ttl=7200,
        intention_ttl=7200,
        consul_retry_budget=1,
    )
    await spawner.start()
    name = f"jupyter-{user_name}"
    [first] = (await mesh_objects(admin, name))["tokens"]
    sidecar = spawner.sidecar_container_id
    await token_due(spawner)
    mesh_consul.fail("POST", r"^/v1/acl/login$", status=500, times=1000)
    logins_tried = mesh_consul.attempts.count(("POST", "/v1/acl/login"))
    await spawner.keep_now()
    assert mesh_consul.attempts.count(("POST", "/v1/acl/login")) > logins_tried  # the round did try
    assert spawner.mesh_state.token_accessor == first and spawner.sidecar_container_id == sidecar
    assert (await mesh_objects(admin, name))["tokens"] == [first]
    assert await spawner.poll() is None
    mesh_consul.clear_faults()
    await spawner.keep_now()
    [second] = (await mesh_objects(admin, name))["tokens"]
    assert second != first and spawner.mesh_state.token_accessor == second
    await hub_stop(spawner)
    assert await mesh_objects(admin, name) == NOTHING
