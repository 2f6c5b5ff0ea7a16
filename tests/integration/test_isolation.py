"""Isolation inside the shared network namespace (issue 9): the notebook cannot sniff or reroute
the sidecar's traffic (its Consul token crosses that namespace) and is not root; the site's own
capability settings are kept, ours added."""

from .conftest import container_exec, hub_stop

AF_PACKET_PROBE = (
    "python3", "-c",
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
