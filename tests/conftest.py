"""Shared fixtures: a fake Consul agent per test (plain or with ACLs) and our client on it."""

import pytest

from consulspawner.consul import ConsulClient
from consulspawner.testing.fakeconsul import FakeConsul

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
    client = ConsulClient(acl_consul.url, MASTER_TOKEN, request_timeout=5)
    yield client
    await client.close()
