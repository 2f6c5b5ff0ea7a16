"""Isolation inside the shared network namespace (issue 9): the notebook cannot sniff or reroute
the sidecar's traffic (its Consul token crosses that namespace) and is not root; the site's own
capability settings are kept, ours added."""

import asyncio
import json
import os
import stat
from pathlib import Path

import pytest

from consulspawner.consul import ConsulClient, ConsulError
from consulspawner.entries import KIND
from consulspawner_dev.fakeconsul import FakeConsul

from ..conftest import MASTER_TOKEN
from .conftest import NOTHING, container_exec, hub_stop, mesh_objects, policy_token

AF_PACKET_PROBE = (
    "python3",
    "-c",
    "import socket, os\n"
    "try:\n"
    "    socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))\n"
    "    print('opened')\n"
    "except PermissionError as e:\n"
    "    print('EPERM' if e.errno == 1 else e)\n"
    "print('uid', os.getuid())\n",
)


def effective_caps(docker_client, container_id):
    _, out = container_exec(docker_client, container_id, "grep", "CapEff", "/proc/1/status")
    return int(out.split()[1], 16)


CAP_NET_ADMIN, CAP_NET_RAW, CAP_MKNOD = 12, 13, 27


async def test_the_notebook_cannot_open_a_packet_socket_and_is_not_root(make_spawner, docker_client, user_name):
    spawner = make_spawner(user_name, extra_host_config={"cap_drop": ["MKNOD"]})
    await spawner.start()
    code, out = container_exec(docker_client, spawner.container_id, *AF_PACKET_PROBE)
    assert code == 0, out
    assert "EPERM" in out and "opened" not in out
    assert "uid 0" not in out
    host_config = docker_client.api.inspect_container(spawner.container_id)["HostConfig"]
    assert set(host_config["CapDrop"]) == {"MKNOD", "NET_RAW", "NET_ADMIN"}  # the site's drop is kept
    assert "no-new-privileges:true" in host_config["SecurityOpt"]
    # Even for root in that container the bounding set lacks them, not just the user's set.
    _, bounding = container_exec(docker_client, spawner.container_id, "grep", "CapBnd", "/proc/1/status")
    caps = int(bounding.split()[1], 16)
    assert not caps & (1 << CAP_NET_RAW) and not caps & (1 << CAP_NET_ADMIN) and not caps & (1 << CAP_MKNOD)
    # The sidecar is not weakened by the notebook's settings: it keeps Docker's defaults.
    sidecar = docker_client.api.inspect_container(spawner.sidecar_container_id)["HostConfig"]
    assert not sidecar.get("CapDrop")
    await hub_stop(spawner)


async def test_a_servers_token_reaches_only_its_own_identity(make_spawner, mesh_consul, docker_client, user_name):
    """The token in alice's sidecar (its service identity) is refused everything beyond it."""
    alice = make_spawner(user_name)
    bob = make_spawner(f"{user_name}b")
    await alice.start()
    await bob.start()
    _, secret = container_exec(docker_client, alice.sidecar_container_id, "cat", "/consul/token")
    async with ConsulClient(mesh_consul.url, secret.strip()) as as_alice:
        own = (await as_alice.request("GET", f"/v1/agent/connect/ca/leaf/jupyter-{user_name}")).body
        assert own["Service"] == f"jupyter-{user_name}"
        refusals = {
            "leaf of another": as_alice.request("GET", f"/v1/agent/connect/ca/leaf/jupyter-{user_name}b"),
            "intention write": as_alice.set_config(
                {
                    "Kind": KIND,
                    "Name": "trino-coordinator",
                    "Sources": [{"Name": f"jupyter-{user_name}", "Action": "allow"}],
                }
            ),
            "register another": as_alice.register_service({"ID": "extra", "Name": "extra", "Port": 1}),
            "deregister another": as_alice.deregister_service(bob.mesh_state.service_id),
        }
        for what, call in refusals.items():
            with pytest.raises(ConsulError) as refused:
                await call
            assert refused.value.status == 403, what
    await hub_stop(alice)
    await hub_stop(bob)


async def test_l7_without_http_protocol_is_refused_before_anything_is_created(make_spawner, admin, user_name):
    await admin.delete_config("service-defaults", "trino-coordinator")  # a site that never set it
    spawner = make_spawner(user_name, intention_mode="L7")
    with pytest.raises(RuntimeError, match=r'service-defaults.*"Name": "trino-coordinator", "Protocol": "http"'):
        await spawner.start()
    assert await mesh_objects(admin, f"jupyter-{user_name}") == NOTHING
    assert not await admin.list_tokens(service_name=f"jupyter-{user_name}")


async def test_the_l7_protocol_check_rides_out_a_consul_blip_like_the_other_spawn_calls(
    make_spawner, admin, mesh_consul, user_name
):
    """The first L7 spawn of a hub process reads the destination's service-defaults (and the
    global proxy-defaults): a 500 there is retried within consul_retry_budget, not a failed spawn."""
    spawner = make_spawner(user_name, intention_mode="L7", consul_retry_budget=10)
    mesh_consul.fail("GET", r"^/v1/config/service-defaults/trino-coordinator$", status=500, times=2)
    await spawner.start()
    assert (await mesh_objects(admin, f"jupyter-{user_name}"))["sources"] == [f"jupyter-{user_name}"]
    assert mesh_consul.attempts.count(("GET", "/v1/config/service-defaults/trino-coordinator")) >= 3
    await hub_stop(spawner)


async def test_l7_service_defaults_managed_on_request_and_never_over_a_foreign_entry(
    make_spawner, admin, mesh_consul, user_name
):
    await admin.delete_config("service-defaults", "trino-coordinator")  # a site that never set it
    # The hub's policy has no service:write on the destination; a site that opts in grants it.
    await admin.request(
        "PUT",
        "/v1/acl/policy",
        body={"Name": "hub-writes-service-defaults", "Rules": 'service "trino-coordinator" { policy = "write" }'},
    )
    token = (
        await admin.request(
            "PUT",
            "/v1/acl/token",
            body={"Policies": [{"Name": "consulspawner-hub"}, {"Name": "hub-writes-service-defaults"}]},
        )
    ).body["SecretID"]
    managed = make_spawner(user_name, intention_mode="L7", manage_l7_service_defaults=True, consul_token=token)
    await managed.start()
    entry = await admin.get_config("service-defaults", "trino-coordinator")
    assert entry["Protocol"] == "http" and entry["Meta"]["managed-by"] == "consulspawner"
    await hub_stop(managed)

    # Someone else's entry saying tcp is theirs: refused, never replaced.
    with FakeConsul(acl_master_token=MASTER_TOKEN, host=mesh_consul.host, check_interval_override=0.5) as other:
        async with ConsulClient(other.url, MASTER_TOKEN) as other_admin:
            assert await other_admin.set_config(
                {"Kind": "service-defaults", "Name": "trino-coordinator", "Protocol": "tcp"}
            )
            other_token = await policy_token(other_admin, "hub")
            spawner = make_spawner(
                f"{user_name}x",
                intention_mode="L7",
                manage_l7_service_defaults=True,
                consul_address=other.url,
                consul_token=other_token,
            )
            with pytest.raises(RuntimeError, match="protocol is 'tcp'"):
                await spawner.start()
            assert (await other_admin.get_config("service-defaults", "trino-coordinator"))["Protocol"] == "tcp"


async def test_no_consul_secret_at_rest_in_children_or_in_containers(hub_runner, admin, docker_client, user_name):
    api = await hub_runner.start()
    await api.spawn(user_name)
    sidecar = docker_client.containers.get(f"jupyter-{user_name}.consul-sidecar")
    _, server_secret = container_exec(docker_client, sidecar.id, "cat", "/consul/token")
    secrets = {MASTER_TOKEN, hub_runner.consul_token, server_secret.strip()}
    assert all(secrets)

    proxy = hub_runner.proxy_pid()
    assert proxy is not None
    files = {
        "hub database": hub_runner.workdir / "jupyterhub.sqlite",
        "configurable-http-proxy environment": Path(f"/proc/{proxy}/environ"),
        "hub environment": Path(f"/proc/{hub_runner.process.pid}/environ"),
    }
    places = {place: await asyncio.to_thread(path.read_bytes) for place, path in files.items()}
    for name in (f"jupyter-{user_name}", f"jupyter-{user_name}.consul-sidecar"):
        places[f"docker inspect {name}"] = json.dumps(docker_client.api.inspect_container(name)).encode()
    for place, content in places.items():
        for secret in secrets:
            assert secret.encode() not in content, f"a Consul secret is in the {place}"
    assert stat.S_IMODE(os.stat(hub_runner.consul_token_file).st_mode) == 0o600


async def test_a_users_sidecar_never_takes_another_users_container_name(make_spawner, docker_client, user_name):
    """DockerSpawner's documented escape = "legacy": user alice's sidecar was once named exactly
    like user alice-sidecar's notebook, and alice's start deleted it."""
    other = make_spawner(f"{user_name}-sidecar", escape="legacy")
    await other.start()
    alice = make_spawner(user_name, escape="legacy")
    await alice.start()
    assert docker_client.api.inspect_container(other.container_id)["State"]["Running"]
    assert await other.poll() is None and await alice.poll() is None
    names = {other.container_name, alice.container_name, other.sidecar_container_name, alice.sidecar_container_name}
    assert len(names) == 4
    await hub_stop(alice)
    assert docker_client.api.inspect_container(other.container_id)["State"]["Running"]
    await hub_stop(other)


async def test_both_containers_carry_the_incarnation_that_made_them(make_spawner, docker_client, user_name):
    spawner = make_spawner(user_name, extra_create_kwargs={"labels": {"site": "kept"}})
    await spawner.start()
    prefix = "org.jupyter.consulspawner"
    for container, role in ((spawner.container_id, "notebook"), (spawner.sidecar_container_id, "sidecar")):
        labels = docker_client.api.inspect_container(container)["Config"]["Labels"]
        assert labels[f"{prefix}.role"] == role
        assert labels[f"{prefix}.incarnation"] == spawner.mesh_state.incarnation
        assert labels[f"{prefix}.service-id"] == spawner.mesh_state.service_id
        assert labels[f"{prefix}.service-name"] == f"jupyter-{user_name}"
    assert docker_client.api.inspect_container(spawner.container_id)["Config"]["Labels"]["site"] == "kept"
    await hub_stop(spawner)
