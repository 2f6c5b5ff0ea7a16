"""The hub goes away while servers run.

Graceful restart: servers keep running, the restarted hub reconciles (re-registers a service
Consul lost, replaces a token that is gone), nothing is registered twice, users keep their
upstream. SIGKILL: with the hub dead for good, Consul's reaper and the janitor (which needs only
Consul) remove every service, token and intention of its servers; foreign sources survive."""

import asyncio
import copy
import os
import subprocess
import sys
import time

from consulspawner.entries import KIND
from consulspawner.intentions import IntentionWriter
from consulspawner.mesh import new_incarnation
from consulspawner.plan import MeshSettings, build_plan

from ..conftest import MASTER_TOKEN
from .conftest import NOTHING, container_exec, containers_gone, mesh_objects, policy_token, service_named, wait_for

DEST = "trino-coordinator"
ORCHESTRATOR = {"Name": "orchestrator", "Action": "allow", "Description": "the report orchestrator (ops)"}
# The sidecar's upstream listener is bound in the notebook's network namespace (the connectproxy
# sidecar accepts, then dials the upstream; no Trino is needed to prove the listener).
PROBE = ("python3", "-c", "import socket;socket.create_connection(('127.0.0.1', 28080), timeout=5).close()")


def notebook_of(docker_client, user):
    return docker_client.containers.get(f"jupyter-{user}")


async def upstream_works(docker_client, user):
    code, _ = container_exec(docker_client, f"jupyter-{user}", *PROBE)
    return code == 0


async def test_graceful_restarts_reconcile_without_duplicates(hub_runner, admin, docker_client, user_name):
    lost_service, lost_token = f"{user_name}a", f"{user_name}b"
    api = await hub_runner.start()
    await api.spawn(lost_service, lost_token)
    before = {u: await mesh_objects(admin, f"jupyter-{u}") for u in (lost_service, lost_token)}
    old_sidecar = docker_client.containers.get(f"jupyter-{lost_token}.consul-sidecar").id

    hub_runner.stop()
    # While the hub is down, Consul loses one server's registration and the other's token.
    assert await admin.deregister_service((await service_named(admin, f"jupyter-{lost_service}"))["ID"])
    assert await admin.delete_token(before[lost_token]["tokens"][0])

    for _ in range(2):  # any number of restarts: still exactly one of everything
        await hub_runner.start()
        for user in (lost_service, lost_token):
            assert await api.ready(user)

        async def reconciled():
            objects = {u: await mesh_objects(admin, f"jupyter-{u}") for u in (lost_service, lost_token)}
            return all(len(o["services"]) == 2 and len(o["tokens"]) == 1 and o["sources"] for o in objects.values())

        await wait_for(reconciled, timeout=90, interval=1, message="the restarted hub to reconcile")
        services = await admin.agent_services()
        assert sorted(
            s["Service"] for s in services.values() if s["Service"].startswith(f"jupyter-{user_name}")
        ) == sorted([f"jupyter-{u}{suffix}" for u in (lost_service, lost_token) for suffix in ("", "-sidecar-proxy")])
        for user in (lost_service, lost_token):
            await wait_for(
                lambda user=user: upstream_works(docker_client, user), timeout=60, message=f"{user}'s upstream"
            )
        hub_runner.stop()

    after = await mesh_objects(admin, f"jupyter-{lost_token}")
    assert after["tokens"] != before[lost_token]["tokens"], "a token that was gone must be replaced"
    assert docker_client.containers.get(f"jupyter-{lost_token}.consul-sidecar").id != old_sidecar
    assert (await mesh_objects(admin, f"jupyter-{lost_service}"))["tokens"] == before[lost_service]["tokens"]


def start_janitor(consul_url, token_file):
    """The janitor as its own process (as in its own container): it needs only Consul, and a
    token of docker/consul/janitor-policy.hcl."""
    env = {**os.environ, "CONSUL_HTTP_ADDR": consul_url}
    command = [
        sys.executable,
        "-m",
        "consulspawner.janitor",
        "--interval",
        "1",
        "--grace",
        "5",
        "--token-file",
        str(token_file),
    ]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


async def test_after_sigkill_consul_and_the_janitor_remove_everything(
    hub_runner, admin, mesh_consul, docker_client, user_name
):
    assert await admin.set_config({"Kind": KIND, "Name": DEST, "Sources": [ORCHESTRATOR]}, cas=0)
    orchestrator = copy.deepcopy((await admin.get_config(KIND, DEST))["Sources"][0])
    users = [f"{user_name}x", f"{user_name}y"]
    api = await hub_runner.start()
    await api.spawn(*users)
    for user in users:
        assert (await mesh_objects(admin, f"jupyter-{user}"))["sources"]

    hub_runner.kill_hub_only()
    token_file = hub_runner.workdir / "janitor-token"
    token_file.touch(mode=0o600)
    token_file.write_text(await policy_token(admin, "janitor"))
    janitor = start_janitor(mesh_consul.url, token_file)
    try:
        # The documented limit: check_ttl (60 s) + deregister_critical_after (180 s) + the
        # agent's reaper interval (30 s), then the janitor's grace. The fake clock jumps over the
        # Consul part.
        mesh_consul.advance(60 + 180 + 30 + 1)

        async def all_gone(tokens_too: bool = False):
            objects = [await mesh_objects(admin, f"jupyter-{u}") for u in users]
            return all(o["services"] == o["sources"] == [] and (not tokens_too or not o["tokens"]) for o in objects)

        await wait_for(all_gone, timeout=90, interval=1, message="the janitor to remove the dead hub's objects")
        assert (await admin.get_config(KIND, DEST))["Sources"] == [orchestrator]
        # The servers' login tokens grant nothing now, and Consul deletes them at MaxTokenTTL
        # (the janitor holds no acl right; the fake clock jumps to their expiry).
        mesh_consul.advance(3600)
        await wait_for(lambda: all_gone(tokens_too=True), timeout=60, interval=1, message="the tokens to expire")
    finally:
        janitor.terminate()
        output, _ = await asyncio.to_thread(janitor.communicate, timeout=30)
    assert janitor.returncode == 0, output
    assert MASTER_TOKEN not in output
    deleted = [line for line in output.splitlines() if "Deleted" in line]
    assert len(deleted) == 2, output  # two intentions; the agent reaped the services
    assert all(any(u in line for u in users) for line in deleted)
    # The suite leaves nothing behind: the proxy the killed hub started goes too.
    hub_runner.kill_everything()
    await wait_for(lambda: hub_runner.proxy_pid() is None, timeout=30, message="the orphaned proxy to be gone")


async def test_hub_start_revokes_what_no_server_of_its_own_holds(hub_runner, admin, docker_client, images, user_name):
    """A hub killed mid-spawn leaves a token, a registration, an intention and a sidecar that no
    saved state names. The next hub start removes them, and leaves live servers alone."""
    orphan_user, live_user = f"{user_name}o", f"{user_name}l"
    plan = build_plan(MeshSettings(hub_instance="jupyterhub"), orphan_user, incarnation=new_incarnation())
    await admin.create_service_token(plan.service_name, plan.owner.describe(), 3600)
    await admin.register_service(plan.registration("127.0.0.1"))
    [(destination, entry)] = plan.grants(time.time())
    await IntentionWriter(admin, "jupyterhub").grant(destination, entry)
    docker_client.containers.run(
        images["sidecar"],
        ["sleep", "600"],
        name=f"{plan.service_name}.consul-sidecar",
        detach=True,
        labels={
            "org.jupyter.consulspawner.role": "sidecar",
            "org.jupyter.consulspawner.hub-instance": "jupyterhub",
            "org.jupyter.consulspawner.service-id": plan.service_id,
            "org.jupyter.consulspawner.service-name": plan.service_name,
            "org.jupyter.consulspawner.incarnation": plan.owner.incarnation,
        },
    )
    # Another hub's objects are not this hub's to remove.
    other = build_plan(MeshSettings(hub_instance="other-hub"), f"{user_name}z")
    await admin.register_service(other.registration("127.0.0.1"))

    api = await hub_runner.start(CONSULSPAWNER_ORPHAN_SWEEP_DELAY="3")
    await api.spawn(live_user)
    await wait_for(lambda: _gone(admin, plan.service_name), timeout=90, message="the orphan sweep")
    await containers_gone(docker_client, f"{plan.service_name}.consul-sidecar")
    live = await mesh_objects(admin, f"jupyter-{live_user}")
    assert len(live["services"]) == 2 and len(live["tokens"]) == 1 and live["sources"]
    assert other.service_id in await admin.agent_services()
    await admin.deregister_service(other.service_id)


async def _gone(admin, service):
    return await mesh_objects(admin, service) == NOTHING
