"""Fixtures for the fake Consul agent's own tests: a fake per test and py-consul clients on it."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import consul.aio
import pytest

from consulspawner_dev.fakeconsul import FakeConsul

from ..conftest import MASTER_TOKEN as MASTER


@pytest.fixture(autouse=True)
def _no_consul_env(monkeypatch):
    # py-consul prefers CONSUL_HTTP_TOKEN / CONSUL_HTTP_ADDR over explicit arguments.
    for name in ("CONSUL_HTTP_TOKEN", "CONSUL_HTTP_ADDR", "CONSUL_HTTP_SSL"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def fake(fake_consul):
    """The root conftest's fake agent, under the short name these tests use."""
    return fake_consul


@pytest.fixture
def acl_fake(acl_consul):
    return acl_consul


@pytest.fixture
async def make_client():
    """make_client(fake, token=None) -> consul.aio.Consul, closed at teardown."""
    clients = []

    def make(f: FakeConsul, token: str | None = None) -> consul.aio.Consul:
        c = consul.aio.Consul(host=f.host, port=f.port, token=token)
        clients.append(c)
        return c

    yield make
    for c in clients:
        await c.http.close()


@pytest.fixture
async def client(fake, make_client):
    return make_client(fake)


@pytest.fixture
async def admin(acl_fake, make_client):
    return make_client(acl_fake, MASTER)


class Raw:
    """Plain HTTP against a fake, for endpoints or details py-consul does not expose."""

    def __init__(self):
        self.session = aiohttp.ClientSession()

    async def __call__(self, fake, method, path, *, token=None, json=None, params=None, data=None, headers=None):
        hdrs = dict(headers or {})
        if token:
            hdrs["X-Consul-Token"] = token
        async with self.session.request(
            method, fake.url + path, json=json, params=params, data=data, headers=hdrs
        ) as resp:
            text = await resp.text()
            return resp.status, resp.headers, text


@pytest.fixture
async def raw():
    r = Raw()
    yield r
    await r.session.close()


async def _wait_for(predicate, timeout: float = 10.0, interval: float = 0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        await asyncio.sleep(interval)
    raise AssertionError("condition not reached in time")


@pytest.fixture
def wait_for():
    """await wait_for(predicate): poll until true (synchronisation, never a timing assertion)."""
    return _wait_for


@pytest.fixture
def arrived():
    """await arrived(fake, path_part, before): the fake has received one more matching request.

    Used to know a blocking query is parked on the server before making the write that should
    wake it.
    """

    async def wait(fake, path_part: str, before: int):
        await _wait_for(lambda: sum(1 for _m, p in fake.attempts if path_part in p) > before)

    return wait


def attempts(fake, path_part: str) -> int:
    return sum(1 for _m, p in fake.attempts if path_part in p)


@pytest.fixture
def attempts_of():
    return attempts
