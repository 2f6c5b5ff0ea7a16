"""A write whose client goes away is still carried out, as in Consul.

Consul's HTTP handlers (agent/http.go) do not abort the RPC when the client disconnects, and a
raft apply that has started commits. So "my request timed out" never means "it did not happen".
"""

import asyncio
import time
import uuid

import aiohttp
import pytest

from .conftest import MASTER


async def _put_token(fake, accessor: str, timeout: float):
    async with aiohttp.ClientSession() as session:
        async with session.put(
            fake.url + "/v1/acl/token",
            json={"AccessorID": accessor, "ServiceIdentities": [{"ServiceName": "jupyter-alice"}]},
            headers={"X-Consul-Token": MASTER},
            timeout=aiohttp.ClientTimeout(total=timeout),
        ) as resp:
            return resp.status, await resp.text()


async def test_delay_response_commits_then_answers_late(acl_fake, admin, wait_for):
    accessor = str(uuid.uuid4())
    acl_fake.delay_response("PUT", r"^/v1/acl/token$", seconds=3)
    task = asyncio.ensure_future(_put_token(acl_fake, accessor, timeout=10))
    # Visible to everyone else while the caller still waits for its answer.
    await wait_for(lambda: accessor in acl_fake.snapshot()["tokens"])
    assert not task.done()
    assert (await admin.acl.token.read(accessor))["ServiceIdentities"] == [{"ServiceName": "jupyter-alice"}]
    acl_fake.clear_faults()
    status, _ = await asyncio.wait_for(task, 10)
    assert status == 200


async def test_client_timeout_on_late_answer_still_leaves_the_token(acl_fake, admin):
    accessor = str(uuid.uuid4())
    acl_fake.delay_response("PUT", r"^/v1/acl/token$", seconds=2)
    with pytest.raises(asyncio.TimeoutError):
        await _put_token(acl_fake, accessor, timeout=0.3)
    token = await admin.acl.token.read(accessor)
    assert token is not None and token["AccessorID"] == accessor


async def test_slow_write_completes_after_its_client_gave_up(acl_fake, admin, wait_for):
    # hang(): Consul received the request but is slow to process it; the client times out first.
    accessor = str(uuid.uuid4())
    acl_fake.hang("PUT", r"^/v1/acl/token$", seconds=0.5)
    with pytest.raises(asyncio.TimeoutError):
        await _put_token(acl_fake, accessor, timeout=0.1)
    await wait_for(lambda: accessor in acl_fake.snapshot()["tokens"], timeout=5)
    assert (await admin.acl.token.read(accessor))["AccessorID"] == accessor


async def test_delay_knob_over_http(acl_fake, raw, admin, wait_for):
    status, _, _ = await raw(
        acl_fake,
        "POST",
        "/_fake/fault",
        token=MASTER,
        json={"Method": "PUT", "PathRegex": "^/v1/acl/token$", "Delay": 2},
    )
    assert status == 200
    accessor = str(uuid.uuid4())
    with pytest.raises(asyncio.TimeoutError):
        await _put_token(acl_fake, accessor, timeout=0.3)
    assert (await admin.acl.token.read(accessor))["AccessorID"] == accessor


async def test_delayed_error_is_still_an_error(acl_fake):
    # The handler decides (here: the AccessorID is taken) at once; only the answer is late.
    accessor = str(uuid.uuid4())
    assert (await _put_token(acl_fake, accessor, timeout=5))[0] == 200
    acl_fake.delay_response("PUT", r"^/v1/acl/token$", seconds=0.3)
    t0 = time.monotonic()
    status, text = await _put_token(acl_fake, accessor, timeout=5)
    assert (status, text) == (500, "Invalid Token: AccessorID is already in use")
    assert time.monotonic() - t0 >= 0.3


async def test_blocking_query_ends_when_its_client_leaves(fake, client, wait_for):
    index, _ = await client.catalog.services()
    baseline = len(fake.state._waiters)
    async with aiohttp.ClientSession() as session:
        with pytest.raises(asyncio.TimeoutError):
            async with session.get(
                fake.url + "/v1/catalog/services",
                params={"index": str(index), "wait": "5m"},
                timeout=aiohttp.ClientTimeout(total=0.3),
            ) as resp:
                await resp.text()
    # The parked query notices its client is gone and lets go of its waiter.
    await wait_for(lambda: len(fake.state._waiters) <= baseline, timeout=5)
