"""ConsulSpawner on the real Docker daemon against the fake Consul agent (ACLs on).

Start, stop, the shared network namespace, the token kept from the notebook, rollback of every
start step, the crash path and poll.
"""

import json

import pytest
from docker.errors import APIError

from consulspawner import sidecarhealth

from .conftest import (
    NOTHING,
    SIDECAR_COMMAND,
    container_exec,
    container_ids,
    containers_gone,
    hub_stop,
    mesh_objects,
    service_named,
    wait_for,
)

DEST = "trino-coordinator"


async def test_start_then_stop(make_spawner, admin, docker_client, user_name):
    spawner = make_spawner(user_name)
    ip, port = await spawner.start()
    name = f"jupyter-{user_name}"
    assert port == 8888 and ip

    objects = await mesh_objects(admin, name)
    assert objects == {"services": [name, f"{name}-sidecar-proxy"], "tokens": objects["tokens"], "sources": [name]}
    [accessor] = objects["tokens"]
    token = await admin.read_token(accessor)
    # Made by login at the hub's JWT auth method: local, expiring, this service's identity only.
    assert token["ServiceIdentities"] == [{"ServiceName": name}]
    assert token["AuthMethod"] == "consulspawner-jupyterhub" and token["Local"] is True
    assert token.get("ExpirationTime") and not token.get("Policies") and not token.get("Roles")
    assert f'"hub-user":"{user_name}"' in token["Description"].replace(" ", "")
    service = await service_named(admin, name)
    assert service["Meta"]["hub-user"] == user_name and service["Address"] == ip

    # The sidecar shares the notebook's network namespace: its upstream listener answers on the
    # notebook's 127.0.0.1.
    sidecar = docker_client.containers.get(spawner.sidecar_container_id)
    assert sidecar.attrs["HostConfig"]["NetworkMode"] == f"container:{spawner.container_id}"
    # Ahead of notebooks (Docker's default weight) when the CPU is contended; once ready, no
    # longer at the start weight (test_the_sidecar_boots_at_the_start_weight...).
    assert sidecar.attrs["HostConfig"]["CpuShares"] == 4096
    assert docker_client.containers.get(spawner.container_id).attrs["HostConfig"]["CpuShares"] == 0
    code, out = container_exec(
        docker_client,
        spawner.container_id,
        "python3",
        "-c",
        "import socket;socket.create_connection(('127.0.0.1', 28080), timeout=5).close()",
    )
    assert code == 0, out
    assert f"upstream {DEST} on 127.0.0.1:28080" in sidecar.logs().decode()

    # The notebook gets what the trino client needs and never the token.
    secret = token["SecretID"]
    notebook = docker_client.containers.get(spawner.container_id)
    env = dict(line.split("=", 1) for line in notebook.attrs["Config"]["Env"])
    assert (env["TRINO_HOST"], env["TRINO_PORT"], env["TRINO_USER"]) == ("127.0.0.1", "28080", user_name)
    assert secret not in json.dumps(notebook.attrs)
    assert secret not in json.dumps(sidecar.attrs), "the token must not be in the sidecar's config either"
    code, out = container_exec(
        docker_client,
        spawner.container_id,
        "sh",
        "-c",
        f"grep -rs {secret} /proc/1/environ /consul /etc /root /tmp; true",
    )
    assert secret not in out
    code, out = container_exec(docker_client, spawner.sidecar_container_id, "cat", "/consul/token")
    assert code == 0 and out == secret
    assert secret not in json.dumps(spawner.get_state())

    messages = [e["message"] for e in spawner._progress_events]
    assert any("token" in m for m in messages) and any("Granting" in m for m in messages)

    await hub_stop(spawner)
    assert await mesh_objects(admin, name) == NOTHING
    await containers_gone(docker_client, name)


async def test_the_keeper_refreshes_the_check(make_spawner, admin, mesh_consul, user_name):
    spawner = make_spawner(user_name, check_ttl=60, keeper_interval=0.5)
    await spawner.start()
    check_id = f"{spawner.mesh_state.service_id}:alive"
    for _ in range(3):  # 150 s of fake time: past the TTL unless the keeper passes it
        mesh_consul.advance(50)
        rounds = spawner.keeper_rounds
        await wait_for(lambda rounds=rounds: spawner.keeper_rounds > rounds, message="a keeper round")
    assert (await admin.agent_checks())[check_id]["Status"] == "passing"
    assert await spawner.poll() is None
    await hub_stop(spawner)
    assert await mesh_objects(admin, f"jupyter-{user_name}") == NOTHING


async def test_crash_path_removes_everything(make_spawner, admin, docker_client, user_name):
    """The notebook container killed from outside: JupyterHub's poll finds it dead and skips
    stop(); the post-stop hook must still revoke, remove the sidecar, deregister and delete."""
    spawner = make_spawner(user_name)
    await spawner.start()
    sidecar_id = spawner.sidecar_container_id
    docker_client.containers.get(spawner.container_id).kill()
    # DockerSpawner's remove=True is Docker's AutoRemove: the dead notebook may be gone before
    # poll looks, and poll then says 0 (an exit status, as Popen's; falsy). Under load that
    # was most often the case: wait for it, so this is the path taken every time.
    await wait_for(lambda: not container_ids(docker_client, id=spawner.container_id), message="Docker to remove it")
    assert await spawner.poll() is not None
    await hub_stop(spawner)
    assert await mesh_objects(admin, f"jupyter-{user_name}") == NOTHING
    await wait_for(lambda: not container_ids(docker_client, id=sidecar_id), message="the sidecar to be removed")


async def test_restarted_hub_can_stop_from_state(make_spawner, admin, user_name):
    first = make_spawner(user_name)
    await first.start()
    state = json.loads(json.dumps(first.get_state()))  # as the hub database stores it
    assert state["consul"]["token_accessor"] and state["sidecar_container_id"]

    await first.forget()  # the old hub process is gone
    second = make_spawner(user_name)
    second.load_state(state)
    assert await second.poll() is None
    await hub_stop(second)
    assert await mesh_objects(admin, f"jupyter-{user_name}") == NOTHING


@pytest.mark.parametrize(
    ("method", "path", "failed_call"),
    [
        ("POST", r"^/v1/acl/login$", "POST /v1/acl/login"),
        ("PUT", r"^/v1/agent/service/register$", "PUT /v1/agent/service/register"),
        ("PUT", r"^/v1/config$", "PUT /v1/config"),
    ],
)
async def test_a_failing_consul_step_rolls_everything_back(
    make_spawner, admin, mesh_consul, docker_client, user_name, method, path, failed_call
):
    spawner = make_spawner(user_name)
    # 403 is not retried, so the step really fails.
    mesh_consul.fail(method, path, status=403, times=1, body="Permission denied: injected")
    with pytest.raises(RuntimeError, match=failed_call.replace("/", "/")) as raised:
        await spawner.start()
    assert "403" in str(raised.value)
    assert await mesh_objects(admin, f"jupyter-{user_name}") == NOTHING
    await containers_gone(docker_client, f"jupyter-{user_name}")
    assert spawner.get_state().get("consul") is None


async def test_a_sidecar_that_exits_at_once_fails_the_spawn_fast(make_spawner, admin, docker_client, user_name):
    spawner = make_spawner(
        user_name, sidecar_command=["sh", "-c", "exit 3"], start_timeout=180, sidecar_ready_timeout=120
    )
    with pytest.raises(RuntimeError, match="stopped before it became ready"):
        await spawner.start()
    assert await mesh_objects(admin, f"jupyter-{user_name}") == NOTHING
    await containers_gone(docker_client, f"jupyter-{user_name}")


async def test_a_sidecar_that_never_listens_times_out_and_rolls_back(make_spawner, admin, docker_client, user_name):
    spawner = make_spawner(user_name, sidecar_command=["sleep", "600"], sidecar_ready_timeout=4)
    with pytest.raises(RuntimeError, match="not ready after 4s"):
        await spawner.start()
    assert await mesh_objects(admin, f"jupyter-{user_name}") == NOTHING
    await containers_gone(docker_client, f"jupyter-{user_name}")


async def test_readiness_is_one_exec_that_waits_in_the_sidecar(
    make_spawner, admin, docker_client, user_name, monkeypatch
):
    """Each try of the readiness command used to start a process in the sidecar (0.1 s of CPU
    for the dev proxy's): ten spawns at once spent the CPU their proxies needed to get ready.
    The image's sidecar-ready now waits inside (SIDECAR_READY_WAIT): one exec per spawn, even
    for a proxy that takes seconds to come up."""
    monkeypatch.setattr(sidecarhealth, "READY_WAIT_PER_EXEC", 50.0)  # (a loaded machine: no second exec)
    slow = ["sh", "-c", 'sleep 2; exec "$@"', "slow-proxy", *SIDECAR_COMMAND]
    spawner = make_spawner(user_name, sidecar_command=slow)
    execs = []
    real = spawner.sidecar_docker

    def counting(method, *args, **kwargs):
        if method == "exec_create":
            execs.append(kwargs.get("environment"))
        return real(method, *args, **kwargs)

    spawner.sidecar_docker = counting
    await spawner.start()
    assert execs == [{"SIDECAR_READY_WAIT": "50.0"}]
    code, out = container_exec(docker_client, spawner.sidecar_container_id, "sidecar-ready")
    assert code == 0 and "LIVE" in out, out
    await hub_stop(spawner)
    assert await mesh_objects(admin, f"jupyter-{user_name}") == NOTHING


async def test_the_mesh_joins_before_dockerspawner_asks_for_the_address(make_spawner, admin, user_name):
    """DockerSpawner asks for the notebook's address on its one Docker thread, queued behind
    every other spawn's create and start; the mesh used to wait for that answer (ten spawns at
    once: held back 1 to 3 s, then nine spawns' mesh steps released in the same 40 ms). The
    server now joins as soon as its notebook runs: registered, sidecar up, access granted
    before DockerSpawner's address lookup."""
    spawner = make_spawner(user_name)
    name = f"jupyter-{user_name}"
    seen = []
    real = spawner.get_ip_and_port

    async def recording():
        seen.append(await mesh_objects(admin, name))
        return await real()

    spawner.get_ip_and_port = recording
    await spawner.start()
    [objects] = seen
    assert objects["services"] == [name, f"{name}-sidecar-proxy"] and objects["sources"] == [name], objects
    assert [e["message"] for e in spawner._progress_events][-1] == "Connected to the service mesh"
    await hub_stop(spawner)
    assert await mesh_objects(admin, name) == NOTHING


async def test_a_failure_after_the_mesh_joined_is_the_notebook_steps_and_undoes_all(
    make_spawner, admin, docker_client, user_name
):
    """DockerSpawner's own steps after the notebook runs (its address lookup, post_start_cmd)
    now follow the mesh's: one that fails is told as the notebook container's step, not the
    grant's, and leaves nothing behind."""
    spawner = make_spawner(user_name)

    async def no_address():
        raise RuntimeError("Docker inspect_container: 500 (daemon busy)")

    spawner.get_ip_and_port = no_address
    with pytest.raises(RuntimeError) as failed:
        await spawner.start()
    assert failed.value.step == "notebook", failed.value
    name = f"jupyter-{user_name}"
    assert await mesh_objects(admin, name) == NOTHING
    await containers_gone(docker_client, name)


@pytest.mark.parametrize("start_shares", [65536, 0])
async def test_the_sidecar_boots_at_the_start_weight_then_runs_at_its_own(
    make_spawner, admin, docker_client, user_name, start_shares
):
    """Ten spawns at once on two cores: at 4096 the mesh's part of a spawn took 2 to 2.5 times
    a lone spawn's, the sidecars' boot waiting among ten notebooks booting. The sidecar boots
    at sidecar_start_cpu_shares and runs at sidecar_cpu_shares once ready (its CPU then is its
    user's traffic, which must not crowd out other users' notebooks); 0: no boost, no update."""
    spawner = make_spawner(user_name, sidecar_start_cpu_shares=start_shares)
    at_ready, updates = [], []
    real_wait, real_docker = spawner._wait_for_sidecar, spawner.sidecar_docker

    async def waiting(mesh):
        at_ready.append(docker_client.api.inspect_container(spawner.sidecar_container_id)["HostConfig"]["CpuShares"])
        await real_wait(mesh)

    def counting(method, *args, **kwargs):
        if method == "update_container":
            updates.append(kwargs)
        return real_docker(method, *args, **kwargs)

    spawner._wait_for_sidecar, spawner.sidecar_docker = waiting, counting
    await spawner.start()
    assert at_ready == [start_shares or 4096]
    assert docker_client.api.inspect_container(spawner.sidecar_container_id)["HostConfig"]["CpuShares"] == 4096
    assert updates == ([{"cpu_shares": 4096}] if start_shares else [])
    await hub_stop(spawner)
    assert await mesh_objects(admin, f"jupyter-{user_name}") == NOTHING


async def test_a_start_weight_docker_did_not_lower_is_lowered_by_the_keeper(
    make_spawner, admin, docker_client, user_name, caplog
):
    """A failed update leaves the server up (a weight is no reason to fail a spawn), is said
    once as a warning, and the keeper's next round lowers it."""
    spawner = make_spawner(user_name)
    real = spawner.sidecar_docker
    refused = []

    def refusing_once(method, *args, **kwargs):
        if method == "update_container" and not refused:
            refused.append(method)
            raise APIError("500 Server Error: update refused (daemon busy)")
        return real(method, *args, **kwargs)

    spawner.sidecar_docker = refusing_once
    await spawner.start()
    shares = docker_client.api.inspect_container(spawner.sidecar_container_id)["HostConfig"]["CpuShares"]
    assert refused and shares == 65536
    [warning] = [r.getMessage() for r in caplog.records if "update_container" in r.getMessage()]
    assert "the keeper tries again" in warning and r"CPU weight 4096" in warning
    await spawner.keep_now()
    assert docker_client.api.inspect_container(spawner.sidecar_container_id)["HostConfig"]["CpuShares"] == 4096
    await hub_stop(spawner)
    assert await mesh_objects(admin, f"jupyter-{user_name}") == NOTHING


async def test_a_hub_that_restarts_lowers_a_start_weight_left_high(make_spawner, admin, docker_client, user_name):
    """A hub that died between the sidecar's readiness and lowering its weight: the restarted
    hub's reconcile lowers it (its state cannot say)."""
    first = make_spawner(user_name)
    real = first.sidecar_docker

    def refusing(method, *args, **kwargs):
        if method == "update_container":
            raise APIError("500 Server Error: update refused")
        return real(method, *args, **kwargs)

    first.sidecar_docker = refusing
    await first.start()
    await first.forget()  # the old hub process is gone
    sidecar = first.sidecar_container_id
    assert docker_client.api.inspect_container(sidecar)["HostConfig"]["CpuShares"] == 65536
    restored = make_spawner(user_name)
    restored.load_state(json.loads(json.dumps(first.get_state())))
    assert await restored.poll() is None

    def lowered():
        return docker_client.api.inspect_container(sidecar)["HostConfig"]["CpuShares"] == 4096

    await wait_for(lowered, message="the restarted hub's keeper to lower the sidecar's weight")
    await hub_stop(restored)
    assert await mesh_objects(admin, f"jupyter-{user_name}") == NOTHING


async def test_l7_grant_keeps_the_trino_user_across_a_hub_restart(make_spawner, admin, user_name):
    assert await admin.set_config({"Kind": "service-defaults", "Name": "trino-coordinator", "Protocol": "http"})
    settings = {"intention_mode": "L7", "trino_user": lambda spawner: f"{spawner.user.name}_trino"}
    first = make_spawner(user_name, **settings)
    await first.start()

    async def header_value():
        entry = await admin.get_config("service-intentions", "trino-coordinator")
        [source] = [s for s in entry["Sources"] if s["Name"] == f"jupyter-{user_name}"]
        [allow] = [p for p in source["Permissions"] if p["Action"] == "allow"]
        return allow["HTTP"]["Header"][0]["Exact"]

    assert await header_value() == f"{user_name}_trino"
    await first.forget()  # the old hub process is gone
    await admin.delete_config("service-intentions", "trino-coordinator")
    restored = make_spawner(user_name, **settings)
    restored.load_state(json.loads(json.dumps(first.get_state())))
    assert await restored.poll() is None

    async def regranted():
        entry = await admin.get_config("service-intentions", "trino-coordinator")
        return entry is not None and await header_value() == f"{user_name}_trino"

    await wait_for(regranted, message="the keeper to reconcile the restored server, re-granting")
    await hub_stop(restored)
    assert await mesh_objects(admin, f"jupyter-{user_name}") == NOTHING


async def test_the_hub_never_receives_another_tokens_secret(make_spawner, admin, mesh_consul, user_name):
    """Issue 16: with the shipped hub policy, the only secrets that reach the hub are its own
    servers' login tokens (the fake records every SecretID it hands out, and to whom)."""
    first, second = make_spawner(user_name), make_spawner(f"{user_name}b")
    await first.start()
    await second.start()
    servers = {first.mesh_state.token_accessor, second.mesh_state.token_accessor}
    await hub_stop(first)
    await hub_stop(second)
    master = (await admin.request("GET", "/v1/acl/token/self")).body["AccessorID"]
    reads = [r for r in mesh_consul.secret_reads if r["reader"] != master]  # the test's own admin reads
    logins = [r for r in reads if r["operation"] == "login"]
    assert {r["accessor"] for r in logins} == servers
    for read in reads:
        # Otherwise only a token reading itself (the preflight, the sidecar's own calls).
        assert read["operation"] in ("login", "token-self"), read
        assert read["operation"] == "login" or read["accessor"] == read["reader"], read
