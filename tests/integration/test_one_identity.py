"""One server, one identity (issue 8), on real containers and the fake agent: every finding
the review reproduced, as a test that failed on the code before incarnations and the keeper.

Each server start is an incarnation; deferred deletions are guarded by it; poll only reads; one
keeper per server does all repair work under the server's lock; a dead sidecar takes its
notebook with it; stop is bounded when Consul hangs.
"""

import asyncio
import json
import os
import time

import pytest
from traitlets import TraitError

from consulspawner import ownership, sidecarhealth
from consulspawner import spawner as spawner_module
from consulspawner.consul import ConsulClient
from consulspawner.entries import KIND, L7
from consulspawner_dev.bootstrap import bootstrap_identity
from consulspawner_dev.fakeconsul import FakeConsul

from ..conftest import MASTER_TOKEN
from .conftest import (
    NOTHING,
    container_ids,
    containers_gone,
    hub_stop,
    mesh_objects,
    policy_token,
    service_named,
    sidecar_create_held,
    token_due,
    wait_for,
)

DEST = "trino-coordinator"


def notebook_ids(docker_client, user_name):
    """Running notebook containers of this user (a stopped one may linger while auto_remove works)."""
    return container_ids(docker_client, name=f"^/jupyter-{user_name}$", status="running")


def sidecar_state(docker_client, spawner):
    return docker_client.api.inspect_container(spawner.sidecar_container_id)["State"]


async def background_teardowns_done():
    return not spawner_module._pending_teardowns


async def test_a_crashed_sidecar_is_restarted_by_docker(make_spawner, admin, docker_client, user_name):
    spawner = make_spawner(user_name, keeper_interval=1)
    await spawner.start()
    first_pid = sidecar_state(docker_client, spawner)["Pid"]
    os.kill(first_pid, 9)  # a crash, not a `docker kill`: the restart policy applies

    await wait_for(
        lambda: (
            sidecar_state(docker_client, spawner)["Pid"] not in (0, first_pid)
            and sidecar_state(docker_client, spawner)["Running"]
        ),
        message="the sidecar restarted by Docker",
    )
    assert docker_client.api.inspect_container(spawner.sidecar_container_id)["RestartCount"] >= 1
    # Several keeper rounds later the server is still whole.
    rounds = spawner.keeper_rounds
    await wait_for(lambda: spawner.keeper_rounds >= rounds + 3, message="three more keeper rounds")
    assert await spawner.poll() is None
    assert notebook_ids(docker_client, user_name)
    await hub_stop(spawner)
    assert await mesh_objects(admin, f"jupyter-{user_name}") == NOTHING


async def test_a_killed_sidecar_takes_its_notebook_down_and_the_next_start_works(
    make_spawner, admin, docker_client, user_name
):
    spawner = make_spawner(user_name, keeper_interval=1)
    await spawner.start()
    docker_client.api.kill(spawner.sidecar_container_id)  # Docker does not restart what was killed on purpose

    status = await wait_for(spawner.poll, message="poll to report the server dead")
    assert "sidecar" in str(status)
    # Reported dead only once the notebook is gone: nothing runs out of the hub's sight.
    assert not notebook_ids(docker_client, user_name)
    await hub_stop(spawner)  # JupyterHub skips stop() here and runs only the post-stop hook
    assert await mesh_objects(admin, f"jupyter-{user_name}") == NOTHING

    await spawner.start()  # first try: no stale name in the way
    assert await spawner.poll() is None
    await hub_stop(spawner)


async def test_a_late_teardown_of_the_old_server_never_touches_the_new_one(
    make_spawner, admin, mesh_consul, docker_client, user_name
):
    spawner = make_spawner(user_name, consul_request_timeout=2)
    name = f"jupyter-{user_name}"
    await spawner.start()
    old_incarnation = spawner.mesh_state.incarnation
    # A Consul hiccup at stop: every revoke and deregister fails until cleared.
    mesh_consul.fail("PUT", r"^/v1/config$", status=500, times=10_000)
    mesh_consul.fail("DELETE", r"^/v1/config/", status=500, times=10_000)
    mesh_consul.fail("PUT", r"^/v1/agent/service/deregister/", status=500, times=10_000)
    await hub_stop(spawner)
    assert spawner_module._pending_teardowns, "the failed steps go on in the background"
    mesh_consul.clear_faults()

    await spawner.start()
    new_incarnation = spawner.mesh_state.incarnation
    assert new_incarnation != old_incarnation
    await wait_for(background_teardowns_done, timeout=90, message="the old server's background teardown")

    objects = await mesh_objects(admin, name)
    assert objects["services"] == [name, f"{name}-sidecar-proxy"] and objects["sources"] == [name]
    assert objects["tokens"] == [spawner.mesh_state.token_accessor]
    entry = await admin.get_config(KIND, DEST)
    [source] = [s for s in entry["Sources"] if s["Name"] == name]
    assert ownership.parse(source["Description"]).incarnation == new_incarnation
    service = await service_named(admin, name)
    assert service["Meta"][ownership.META_INCARNATION] == new_incarnation
    assert await spawner.poll() is None
    await hub_stop(spawner)
    assert await mesh_objects(admin, name) == NOTHING


async def _unknown_tokens_are_harmless(admin, name, known=()):
    """A login token the hub never saw the answer of cannot be logged out by the hub (it has no
    acl right): it must carry no grant and no registration, and end at the auth method's
    MaxTokenTTL (local, expiring)."""
    objects = await mesh_objects(admin, name)
    assert objects["services"] == [] and objects["sources"] == []
    for accessor in objects["tokens"]:
        if accessor in known:
            continue
        token = await admin.read_token(accessor)
        assert token["Local"] is True and token["ExpirationTime"] and token["AuthMethod"]
        assert token["ServiceIdentities"] == [{"ServiceName": name}]


async def test_a_login_consul_commits_but_answers_late_leaves_nothing_usable(
    make_spawner, admin, mesh_consul, user_name
):
    spawner = make_spawner(user_name, consul_request_timeout=1)
    name = f"jupyter-{user_name}"
    mesh_consul.delay_response("POST", r"^/v1/acl/login$", seconds=3, times=1)
    await spawner.start()
    current = spawner.mesh_state.token_accessor
    assert current in (await mesh_objects(admin, name))["tokens"]
    await hub_stop(spawner)
    assert await admin.read_token(current) is None  # logged out
    await _unknown_tokens_are_harmless(admin, name)


async def test_a_spawn_cancelled_during_the_login_leaves_nothing_usable(make_spawner, admin, mesh_consul, user_name):
    spawner = make_spawner(user_name, consul_request_timeout=5)
    name = f"jupyter-{user_name}"
    mesh_consul.delay_response("POST", r"^/v1/acl/login$", seconds=None)  # committed, answer held
    start = asyncio.ensure_future(spawner.start())
    await wait_for(lambda: mesh_consul.count("POST", r"^/v1/acl/login$") >= 1, message="the login to reach Consul")
    start.cancel()  # start_timeout, or the user pressing cancel
    with pytest.raises(asyncio.CancelledError):
        await start
    mesh_consul.clear_faults()
    await _unknown_tokens_are_harmless(admin, name)


async def _nothing(admin, name):
    return await mesh_objects(admin, name) == NOTHING


def test_range_checks_fail_when_the_config_loads_naming_the_setting(make_spawner, user_name):
    with pytest.raises(TraitError, match="deregister_critical_after"):
        make_spawner(user_name, deregister_critical_after=30)
    with pytest.raises(TraitError, match="trino_user"):
        make_spawner(user_name, trino_user="{foo}")
    with pytest.raises(TraitError, match="service_prefix"):
        make_spawner(user_name, service_prefix="Jupyter")


async def test_teardown_needs_only_state(make_spawner, admin, docker_client, user_name):
    assert await admin.set_config({"Kind": "service-defaults", "Name": DEST, "Protocol": "http"})
    running = make_spawner(user_name, intention_mode=L7)
    await running.start()
    state = running.get_state()

    def broken(_spawner):
        raise RuntimeError("the directory is down")

    # After a hub restart with configuration that could not even plan a spawn (intention TTL
    # below the check TTL) and a Trino-user callable that fails: the stop still revokes all.
    restored = make_spawner(
        user_name, intention_mode=L7, trino_user=broken, check_ttl=600, intention_ttl=60, keeper_interval=3600
    )
    restored.load_state(state)
    await restored.stop()
    await restored.run_post_stop_hook()
    assert await mesh_objects(admin, f"jupyter-{user_name}") == NOTHING
    await containers_gone(docker_client, f"jupyter-{user_name}")


async def test_a_failing_trino_user_callable_fails_the_spawn_naming_the_setting(make_spawner, admin, user_name):
    spawner = make_spawner(user_name, trino_user=lambda s: {}["missing"])
    with pytest.raises(RuntimeError, match="trino_user"):
        await spawner.start()
    assert await mesh_objects(admin, f"jupyter-{user_name}") == NOTHING


async def test_concurrent_polls_with_a_token_due_only_read(make_spawner, admin, mesh_consul, user_name):
    spawner = make_spawner(
        user_name, token_rotation_margin=3599, keeper_interval=3600, check_ttl=7200, intention_ttl=7200
    )
    await spawner.start()
    name = f"jupyter-{user_name}"
    [token] = (await mesh_objects(admin, name))["tokens"]
    sidecar = spawner.sidecar_container_id
    await token_due(spawner)
    writes_before = len([r for r in mesh_consul.requests if r[0] in ("PUT", "POST", "DELETE")])

    assert await asyncio.gather(*(spawner.poll() for _ in range(4))) == [None] * 4
    assert (await mesh_objects(admin, name))["tokens"] == [token]
    assert spawner.sidecar_container_id == sidecar
    assert len([r for r in mesh_consul.requests if r[0] in ("PUT", "POST", "DELETE")]) == writes_before
    await hub_stop(spawner)


async def test_stop_during_a_rotation_leaves_nothing_behind(make_spawner, admin, docker_client, user_name):
    spawner = make_spawner(user_name, token_rotation_margin=3599, keeper_interval=0.2)
    name = f"jupyter-{user_name}"
    await spawner.start()

    async def rotating():  # the new token minted, the old one not deleted yet
        return len((await mesh_objects(admin, name))["tokens"]) == 2

    await wait_for(rotating, interval=0.05, message="the keeper to be mid-rotation")
    await hub_stop(spawner)
    await containers_gone(docker_client, f"jupyter-{user_name}")
    assert await mesh_objects(admin, name) == NOTHING
    # Nothing comes back afterwards: the keeper is gone with the server.
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        assert not container_ids(docker_client, name=f"jupyter-{user_name}")
        await asyncio.sleep(0.25)


async def test_a_failed_rotation_takes_the_server_down(make_spawner, admin, docker_client, user_name):
    spawner = make_spawner(user_name, keeper_interval=0.5)
    await spawner.start()
    spawner.sidecar_image = "consulspawner/no-such-image:0"  # Docker refuses the new sidecar
    spawner.mesh_state.token_expires_at = time.time()  # due now
    status = await wait_for(spawner.poll, message="poll to report the server dead")
    assert "rotation" in str(status)
    assert not notebook_ids(docker_client, user_name)
    await hub_stop(spawner)
    assert await mesh_objects(admin, f"jupyter-{user_name}") == NOTHING


async def test_a_registration_lost_while_running_is_restored_at_once(make_spawner, admin, user_name):
    spawner = make_spawner(user_name, keeper_interval=0.5)
    await spawner.start()
    name = f"jupyter-{user_name}"
    assert await admin.deregister_service(spawner.mesh_state.service_id)  # the agent lost it (restarted)

    async def restored():
        service = await service_named(admin, name)
        return service and service["Meta"][ownership.META_INCARNATION] == spawner.mesh_state.incarnation

    await wait_for(restored, timeout=30, message="the keeper to register the server again")
    objects = await mesh_objects(admin, name)
    assert objects["services"] == [name, f"{name}-sidecar-proxy"] and objects["sources"] == [name]
    assert await spawner.poll() is None
    await hub_stop(spawner)


async def test_stop_is_bounded_when_consul_hangs(make_spawner, admin, mesh_consul, docker_client, user_name):
    spawner = make_spawner(user_name, consul_request_timeout=2)
    await spawner.start()
    mesh_consul.hang("*", ".*", times=10_000)  # the agent is paused: nothing answers
    began = time.monotonic()
    await hub_stop(spawner)
    took = time.monotonic() - began
    print(f"\nstop with Consul hung took {took:.1f}s")
    # Two bounded Consul phases (revoke; deregister and token together) plus Docker's own time.
    assert took >= 2  # Consul really was hung: the revoke waited its bound
    assert took < 2 * 2 + 20
    assert not container_ids(docker_client, name=f"jupyter-{user_name}", status="running")
    await containers_gone(docker_client, f"jupyter-{user_name}", timeout=10)
    mesh_consul.clear_faults()
    await wait_for(
        lambda: _nothing(admin, f"jupyter-{user_name}"),
        timeout=90,
        message="the background teardown once Consul answers",
    )


async def test_a_long_name_in_any_script_spawns_beside_others(mesh_consul, admin):
    """Any name JupyterHub accepts spawns, and one long name never fails other users' grants in
    the same coalesced write (Consul counts the 512-byte limits in bytes)."""
    from consulspawner.intentions import IntentionWriter
    from consulspawner.mesh import MeshState, ServerMesh, new_incarnation
    from consulspawner.plan import MeshSettings, build_plan

    settings = MeshSettings(hub_instance="hub-bytes", intention_mode="L4")
    names = [f"user{i}" for i in range(13)] + ["界" * 255, "🙂" * 255, "É" * 255]
    client = ConsulClient(mesh_consul.url, MASTER_TOKEN)
    try:
        writer = IntentionWriter(client, "hub-bytes")
        meshes = [
            ServerMesh(
                client,
                writer,
                # The Trino user is ASCII (issue 18); the hub user name is what tests the byte limits.
                build_plan(settings, n, trino_user=f"user{i}", incarnation=new_incarnation()),
                MeshState(),
                retry_budget=2,
            )
            for i, n in enumerate(names)
        ]
        results = await asyncio.gather(*(m.grant() for m in meshes), return_exceptions=True)
        assert [r for r in results if isinstance(r, BaseException)] == []
        entry = await admin.get_config(KIND, DEST)
        assert {m.plan.service_name for m in meshes} <= {s["Name"] for s in entry["Sources"]}
        for mesh in meshes:
            await mesh.revoke()
    finally:
        await client.close()


async def test_default_networking_of_dockerspawner_works(make_spawner, admin, docker_client, user_name):
    """use_internal_ip = False (DockerSpawner's default): the hub reaches the notebook on a host
    port, but Consul is given the notebook's own address on its network."""
    spawner = make_spawner(user_name, use_internal_ip=False)
    ip, port = await spawner.start()
    container = docker_client.api.inspect_container(spawner.container_id)
    network_ip = container["NetworkSettings"]["Networks"][spawner.network_name]["IPAddress"]
    service = await service_named(admin, f"jupyter-{user_name}")
    assert service["Address"] == network_ip and service["Port"] == 8888
    assert port != 8888 or ip != network_ip  # the hub's route is not the mesh address
    await hub_stop(spawner)


@pytest.mark.parametrize("network", ["host", "none", "container:other"])
def test_networking_without_an_address_of_its_own_is_refused_at_config(make_spawner, user_name, network):
    with pytest.raises(TraitError, match="network_name"):
        make_spawner(user_name, network_name=network)


async def test_another_hubs_sidecars_survive_the_orphan_sweep(
    make_spawner, docker_client, test_network, user_name, jwt_key_file
):
    """Two hubs, both with the default hub_instance, share one Docker daemon but not Consul."""
    other_consul = FakeConsul(acl_master_token=MASTER_TOKEN, host=test_network["gateway"], check_interval_override=0.5)
    with other_consul.start():
        async with ConsulClient(other_consul.url, MASTER_TOKEN) as other_admin:
            other_token = await policy_token(other_admin, "hub")
            await bootstrap_identity(other_admin, hub_instance="jupyterhub", key_file=jwt_key_file)
            assert await other_admin.set_config(
                {"Kind": "service-defaults", "Name": "trino-coordinator", "Protocol": "http"}
            )
        other_hub = make_spawner(
            user_name, consul_address=other_consul.url, consul_token=other_token, hub_instance="jupyterhub"
        )
        await other_hub.start()
        this_hub = make_spawner(f"{user_name}x", hub_instance="jupyterhub")
        client, writer = this_hub._client_and_writer()
        removed = await spawner_module.sweep_orphans(client, writer, "jupyterhub", dict)
        await this_hub._remove_orphan_sidecars({(o.service, o.incarnation) for o in removed})
        assert docker_client.api.inspect_container(other_hub.sidecar_container_id)["State"]["Running"]
        await hub_stop(other_hub)


async def test_a_trino_user_held_by_another_hub_users_live_server_is_refused(make_spawner, admin, user_name):
    """Issue 18: a trino_user mapping that sends two hub users to one Trino account must not
    let both act as it: the second spawn is refused, naming the holder."""
    shared = {"trino_user": lambda spawner: "shared.account"}
    first = make_spawner(user_name, **shared)
    await first.start()
    second = make_spawner(f"{user_name}b", **shared)
    with pytest.raises(RuntimeError, match=rf"'shared.account' is held by a live server of hub user '{user_name}'"):
        await second.start()
    assert await mesh_objects(admin, f"jupyter-{user_name}b") == NOTHING
    await hub_stop(first)
    await second.start()  # free again once the first server is gone
    await hub_stop(second)


async def test_two_hub_users_spawning_side_by_side_onto_one_trino_user_get_it_once(
    make_spawner, admin, docker_client, user_name
):
    """Both spawns pass the up-front holder check (neither has granted yet); the grant's CAS
    cycle refuses the later one, which is rolled back whole."""
    shared = {"trino_user": lambda spawner: "shared.account"}
    spawners = [make_spawner(user_name, **shared), make_spawner(f"{user_name}b", **shared)]
    results = await asyncio.gather(*(s.start() for s in spawners), return_exceptions=True)
    refused = [i for i, r in enumerate(results) if isinstance(r, Exception)]
    assert len(refused) == 1, results
    [loser] = refused
    winner = 1 - loser
    assert "'shared.account' is held by a live server of hub user" in str(results[loser])
    assert await mesh_objects(admin, f"jupyter-{spawners[loser].user.name}") == NOTHING
    # (Anchored: one user's name is a prefix of the other's.)
    await containers_gone(docker_client, rf"^/{spawners[loser].container_name}(\.consul-sidecar)?$")
    assert (await mesh_objects(admin, f"jupyter-{spawners[winner].user.name}"))["sources"]
    await hub_stop(spawners[winner])


# -- a hub that dies mid-rotation (CI: a graceful restart during the reconcile's rotation left a
# second token whose secret the next hub could not find, so it logged in a third time) ---------

KEPT = dict(keeper_interval=3600, check_ttl=7200, intention_ttl=7200)


async def reconcile_restored(make_spawner, user_name, state):
    """A restarted hub's first keeper round for ``state`` (the hub database's last save)."""
    restored = make_spawner(user_name, **KEPT)
    restored.load_state(json.loads(json.dumps(state)))
    async with restored._lock():
        assert await restored._keep(reconcile=True)
    return restored


async def test_a_hub_dead_after_a_rotations_new_sidecar_started_is_reconciled_without_another_login(
    make_spawner, admin, user_name, monkeypatch
):
    """Saved: the new token (after its login), not yet the new sidecar: the restarted hub
    finds the sidecar by name and runs on the token it holds."""
    # The old sidecar's removal wakes the keeper (Docker's die event); done as the keeper's own
    # rotation is, under the server's lock, the keeper never sees the gap between the two
    # sidecars, however long Docker takes (seen in CI: the keeper took the server down). Here
    # Docker takes a second to start the new one, and a gap the keeper saw is fatal at once.
    monkeypatch.setattr(sidecarhealth, "SIDECAR_DOWN_GRACE", 0.1)
    first = make_spawner(user_name, **KEPT)
    await first.start()
    real = first.sidecar_docker

    async def slow_start(*args, **kwargs):
        await asyncio.sleep(1.0)  # (Docker under load; not a wait for a condition)
        return await real("start", *args, **kwargs)

    first.sidecar_docker = lambda method, *a, **k: slow_start(*a, **k) if method == "start" else real(method, *a, **k)
    name, old = f"jupyter-{user_name}", first.mesh_state.token_accessor
    async with first._lock():
        mesh = first._mesh(first._running_plan())
        secret = await first._login(mesh)
        saved, new = first.get_state(), first.mesh_state.token_accessor
        await first._start_sidecar(first._running_plan(), secret)
    await first.forget()

    restored = await reconcile_restored(make_spawner, user_name, saved)
    assert sorted((await mesh_objects(admin, name))["tokens"]) == sorted([old, new]), "a third login"
    assert restored.mesh_state.token_accessor == new
    assert restored.sidecar_container_id == first.sidecar_container_id
    await admin.delete_token(old)  # its secret died with the first hub: it would last to its TTL
    await hub_stop(restored)
    assert await mesh_objects(admin, name) == NOTHING


async def test_a_hub_dead_between_a_rotations_login_and_its_new_sidecar_keeps_the_old_token_on_record(
    make_spawner, admin, user_name
):
    """Saved: the new token, but the old sidecar still runs on the old one. The restored state
    must name the token the server really runs on, with that token's expiry (rotation is timed
    by it), not the new token whose secret died with the hub."""
    first = make_spawner(user_name, **KEPT)
    await first.start()
    name = f"jupyter-{user_name}"
    old, old_expiry, sidecar = (
        first.mesh_state.token_accessor,
        first.mesh_state.token_expires_at,
        first.sidecar_container_id,
    )
    await first._login(first._mesh(first._running_plan()))
    saved, new = first.get_state(), first.mesh_state.token_accessor
    await first.forget()

    restored = await reconcile_restored(make_spawner, user_name, saved)
    assert restored.mesh_state.token_accessor == old
    assert restored.mesh_state.token_expires_at == pytest.approx(old_expiry, abs=1)
    assert new in restored.mesh_state.retired_accessors
    assert restored.sidecar_container_id == sidecar
    await admin.delete_token(new)  # its secret died with the first hub: it would last to its TTL
    await hub_stop(restored)
    assert await mesh_objects(admin, name) == NOTHING


async def test_a_hub_shut_down_mid_rotation_leaves_the_new_token_in_the_sidecar_it_saved(
    make_spawner, admin, user_name
):
    """JupyterHub's shutdown cancels every task: a rotation cancelled between its login and the
    new sidecar would lose the new token's secret (it lives only in this process until it is
    in the sidecar). The login-to-sidecar stretch finishes first, saved."""
    first = make_spawner(user_name, token_rotation_margin=3599, keeper_interval=0.2)
    saved: dict = {}
    first._save_state = lambda: saved.update(first.get_state())
    await first.start()
    name, old = f"jupyter-{user_name}", first.mesh_state.token_accessor
    with sidecar_create_held(first, hold=30) as held:
        await wait_for(held.creating.is_set, message="the keeper's rotation to create the new sidecar")
        keeper = first._keeper
        keeper.cancel()  # as JupyterHub's shutdown_cancel_tasks
        held.released.set()
        with pytest.raises(asyncio.CancelledError):
            await keeper
    new = saved["consul"]["token_accessor"]
    assert new != old

    restored = await reconcile_restored(make_spawner, user_name, saved)
    assert sorted((await mesh_objects(admin, name))["tokens"]) == sorted([old, new]), "a third login"
    assert restored.mesh_state.token_accessor == new
    await admin.delete_token(old)  # its secret died with the first hub: it would last to its TTL
    await hub_stop(restored)
    assert await mesh_objects(admin, name) == NOTHING
