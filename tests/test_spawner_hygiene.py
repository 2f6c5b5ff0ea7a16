"""The spawner as JupyterHub loads and unloads it, without Docker: the short name through the
``jupyterhub.spawners`` entry point, and shared Consul clients closed at hub shutdown."""

import asyncio
from importlib.metadata import entry_points

from consulspawner import spawner as spawner_module
from consulspawner.spawner import ConsulSpawner
from consulspawner.testing.standalone import standalone_spawner


def test_the_short_name_consul_loads_the_spawner():
    [entry] = [e for e in entry_points(group="jupyterhub.spawners") if e.name == "consul"]
    assert entry.load() is ConsulSpawner


async def test_shared_clients_are_closed_when_the_hub_cancels_its_tasks():
    spawner = standalone_spawner("alice", consul_address="http://127.0.0.1:9")
    client, _ = spawner._client_and_writer()
    client._http()  # a session exists, as after the first Consul call
    closers = list(spawner_module._client_closers)
    assert closers
    await asyncio.sleep(0)  # the hub runs for a while before it shuts down
    for closer in closers:  # what JupyterHub's shutdown_cancel_tasks does to every task
        closer.cancel()
    await asyncio.gather(*closers, return_exceptions=True)
    assert client._session is None
    spawner_module._shared_clients.clear()
    spawner_module._client_closers.clear()
