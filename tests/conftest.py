"""Shared fixtures: a fake Consul agent per test (plain or with ACLs) and our client on it."""

import os
from pathlib import Path

import pytest

from consulspawner.consul import ConsulClient
from consulspawner_dev.admin import AdminClient
from consulspawner_dev.fakeconsul import FakeConsul

# Processes the tests start (hubs, fake agents, stand-ins) import this checkout's code, not
# whatever checkout is installed: the same order as pytest.ini's pythonpath.
_REPO = Path(__file__).resolve().parent.parent
os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(_REPO), str(_REPO / "dev")] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
)

MASTER_TOKEN = "11111111-2222-4333-8444-555555555555"


@pytest.fixture
def fake_consul():
    with FakeConsul().start() as fake:
        yield fake


@pytest.fixture
def acl_consul():
    """A fake agent with ACLs on and default deny; MASTER_TOKEN is its management token."""
    with FakeConsul(acl_master_token=MASTER_TOKEN).start() as fake:
        yield fake


@pytest.fixture
async def consul_client(fake_consul):
    client = ConsulClient(fake_consul.url, request_timeout=5)
    yield client
    await client.close()


@pytest.fixture
async def acl_client(acl_consul):
    client = AdminClient(acl_consul.url, MASTER_TOKEN, request_timeout=5)
    yield client
    await client.close()
