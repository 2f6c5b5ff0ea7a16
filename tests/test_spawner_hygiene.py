"""The spawner as JupyterHub loads and unloads it, without Docker: the short name through the
``jupyterhub.spawners`` entry point, and shared Consul clients closed at hub shutdown."""

import asyncio
import io
import os
import subprocess
import sys
import tarfile
from importlib.metadata import entry_points

import pytest

from consulspawner import hubwide
from consulspawner.sidecar import sidecar_archive
from consulspawner.spawner import ConsulSpawner
from consulspawner_dev.standalone import standalone_spawner


def test_the_short_name_consul_loads_the_spawner():
    [entry] = [e for e in entry_points(group="jupyterhub.spawners") if e.name == "consul"]
    assert entry.load() is ConsulSpawner


async def test_shared_clients_are_closed_when_the_hub_cancels_its_tasks():
    spawner = standalone_spawner("alice", consul_address="http://127.0.0.1:9")
    client, _ = spawner._client_and_writer()
    client._http()  # a session exists, as after the first Consul call
    closers = list(hubwide._client_closers)
    assert closers
    await asyncio.sleep(0)  # the hub runs for a while before it shuts down
    for closer in closers:  # what JupyterHub's shutdown_cancel_tasks does to every task
        closer.cancel()
    await asyncio.gather(*closers, return_exceptions=True)
    assert client._session is None
    hubwide._shared_clients.clear()
    hubwide._client_closers.clear()


def test_the_sidecar_gets_its_token_and_ca_as_files_of_its_user():
    archive = sidecar_archive("the-secret", b"-----BEGIN CERTIFICATE-----\n", owner=(101, 102))
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert tar.extractfile(members["consul/token"]).read() == b"the-secret"
    assert {name: (m.mode, m.uid, m.gid) for name, m in members.items()} == {
        "consul": (0o700, 101, 102),
        "consul/token": (0o400, 101, 102),
        "consul/ca.pem": (0o444, 101, 102),
    }


def test_the_hubs_token_leaves_the_environment_its_children_inherit():
    """JupyterHub hands its environment to configurable-http-proxy and managed services."""
    script = (
        "import os; from consulspawner_dev.standalone import standalone_spawner\n"
        "assert 'CONSUL_HTTP_TOKEN' not in os.environ\n"
        "print(standalone_spawner('alice').consul_token)\n"
    )
    env = {**os.environ, "CONSUL_HTTP_TOKEN": "hub-secret"}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "hub-secret"


def test_a_token_file_wins_and_unreadable_names_the_setting(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("from-file\n")
    both = standalone_spawner("alice", consul_token="inline", consul_token_file=str(token_file))
    assert both._hub_token == "from-file"
    missing = standalone_spawner("alice", consul_token_file=str(tmp_path / "nope"))
    with pytest.raises(RuntimeError, match="consul_token_file"):
        assert missing._hub_token


async def test_each_spawner_class_gets_its_own_sidecar_client_with_its_client_kwargs():
    """As DockerSpawner.client: a subclass with its own client_kwargs talks to its own daemon
    (the sidecar's client was once ConsulSpawner's alone, built from the first spawner)."""

    class OneDaemon(ConsulSpawner):
        pass

    class OtherDaemon(ConsulSpawner):
        pass

    first, other = standalone_spawner("alice"), standalone_spawner("bob")
    first.__class__, other.__class__ = OneDaemon, OtherDaemon
    first.client_kwargs = {"base_url": "tcp://127.0.0.1:1", "version": "1.41"}
    other.client_kwargs = {"base_url": "tcp://127.0.0.2:2", "version": "1.41"}
    try:
        assert await first.sidecar_docker("_url", "/info") == "http://127.0.0.1:1/v1.41/info"
        assert await other.sidecar_docker("_url", "/info") == "http://127.0.0.2:2/v1.41/info"
    finally:
        for cls in (OneDaemon, OtherDaemon):
            hubwide._sidecar_dockers.pop(cls).shutdown()


async def test_a_stop_ends_a_keeper_that_lost_its_cancellation():
    """Python 3.11's asyncio.wait_for drops a cancellation that arrives as the call it waits for
    finishes (in a library as much as in ours): seen in CI as a stop waiting for ever on a keeper
    that went back to its hour-long nap. The stop cancels again until the keeper has ended."""
    spawner = standalone_spawner("alice")
    lost = []

    async def keeper_that_drops_one_cancellation():
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            lost.append(True)  # dropped, as wait_for does; then the next nap
        await asyncio.sleep(3600)

    spawner._keeper = asyncio.ensure_future(keeper_that_drops_one_cancellation())
    keeper = spawner._keeper
    await asyncio.sleep(0)
    stopping = asyncio.ensure_future(spawner._stop_keeper())
    await asyncio.wait({stopping}, timeout=30)  # a generous deadline, left alone (not cancelled)
    assert stopping.done(), "the stop still waits for the keeper"
    assert lost and keeper.cancelled()
