"""Status/self endpoints, routing errors, and the fake's test knobs (faults, clock, stop/restart)."""

import asyncio
import json
import time

import aiohttp
import consul
import pytest

from consulspawner_dev.fakeconsul import FakeConsul

from .conftest import MASTER


async def test_status_leader_and_agent_self(fake, client):
    assert await client.status.leader() == "127.0.0.1:8300"
    me = await client.agent.self()
    assert me["Config"]["Datacenter"] == "dc1"
    assert me["Config"]["NodeName"] == "fake-node"
    assert me["Config"]["Version"] == "1.17.0"
    assert me["Member"]["Name"] == "fake-node"


async def test_datacenter_is_configurable(make_client):
    with FakeConsul(datacenter="eu-west") as f:
        c = make_client(f)
        assert (await c.agent.self())["Config"]["Datacenter"] == "eu-west"
        leaf = await c.agent.connect.ca.leaf("web")
        assert "/dc/eu-west/svc/web" in leaf["ServiceURI"]


async def test_unknown_paths_and_wrong_methods(fake, raw):
    status, _, text = await raw(fake, "GET", "/v1/nope")
    assert (status, text) == (404, "Invalid URL path: not a recognized HTTP API endpoint\n")
    status, _, text = await raw(fake, "GET", "/nope")
    assert status == 404 and "ensure the path starts with '/v1/'" in text
    status, headers, text = await raw(fake, "GET", "/v1/agent/service/register")
    assert (status, text, headers["Allow"]) == (405, "method GET not allowed", "OPTIONS,PUT")
    status, headers, text = await raw(fake, "POST", "/v1/config/service-defaults/x")
    assert (status, headers["Allow"]) == (405, "OPTIONS,GET,DELETE")


async def test_fail_fires_exactly_times(fake, client):
    fake.fail("PUT", r"^/v1/agent/service/register$", status=503, times=2, body="agent sad")
    for _ in range(2):
        with pytest.raises(consul.ConsulException, match="503 agent sad"):
            await client.agent.service.register("web")
    assert await client.agent.service.register("web") is True
    assert fake.count("PUT", r"/v1/agent/service/register") == 1  # only the served one
    assert sum(1 for m, p in fake.attempts if p == "/v1/agent/service/register") == 3
    # Other methods/paths were never affected.
    assert "web" in await client.agent.services()


async def test_fail_any_method_and_clear(fake, raw):
    fake.fail("*", r"/v1/status/", status=500, times=5)
    status, _, text = await raw(fake, "GET", "/v1/status/leader")
    assert (status, text) == (500, "injected fault")
    fake.clear_faults()
    status, _, _ = await raw(fake, "GET", "/v1/status/leader")
    assert status == 200


async def test_hang_until_cleared(fake, raw, arrived, attempts_of):
    fake.hang("GET", r"/v1/status/leader")
    before = attempts_of(fake, "/v1/status/leader")
    task = asyncio.ensure_future(raw(fake, "GET", "/v1/status/leader"))
    await arrived(fake, "/v1/status/leader", before)
    assert not task.done()
    fake.clear_faults()
    status, _, text = await asyncio.wait_for(task, 10)
    assert (status, json.loads(text)) == (200, "127.0.0.1:8300")
    # times=1: the next request is not held.
    status, _, _ = await asyncio.wait_for(raw(fake, "GET", "/v1/status/leader"), 5)
    assert status == 200


async def test_hang_for_seconds(fake, raw):
    fake.hang("GET", r"/v1/status/leader", seconds=0.3)
    t0 = time.monotonic()
    status, _, _ = await asyncio.wait_for(raw(fake, "GET", "/v1/status/leader"), 10)
    assert status == 200 and time.monotonic() - t0 >= 0.3


async def test_stop_keeps_state_and_restart_serves_again(make_client):
    f = FakeConsul().start()
    try:
        c = make_client(f)
        await c.agent.service.register("web", service_id="w", port=80, connect={"sidecar_service": {}})
        await c.config.set("service-defaults", "web", {"Protocol": "http"})
        port = f.port
        f.stop()
        with pytest.raises(aiohttp.ClientConnectionError):
            await c.agent.services()
        assert set(f.snapshot()["services"]) == {"w", "w-sidecar-proxy"}
        f.restart()
        assert f.port == port
        c2 = make_client(f)
        assert set(await c2.agent.services()) == {"w", "w-sidecar-proxy"}
        assert (await c2.config.get("service-defaults", "web"))["Protocol"] == "http"
    finally:
        f.close()


async def test_stop_drops_hung_and_blocking_requests(make_client, raw, arrived, attempts_of):
    f = FakeConsul().start()
    try:
        f.hang("GET", "/v1/status/leader")
        before = attempts_of(f, "/v1/status/leader")
        hung = asyncio.ensure_future(raw(f, "GET", "/v1/status/leader"))
        await arrived(f, "/v1/status/leader", before)
        await asyncio.get_running_loop().run_in_executor(None, f.stop)
        with pytest.raises(aiohttp.ClientError):
            await asyncio.wait_for(hung, 10)
    finally:
        f.close()


async def test_snapshot_shape(fake, client):
    await client.agent.service.register("web", service_id="w", check=consul.Check.ttl("1m"))
    await client.config.set("service-defaults", "web", {"Protocol": "http"})
    snap = fake.snapshot()
    assert set(snap) == {"services", "checks", "tokens", "config_entries", "index"}
    assert snap["services"]["w"]["Service"] == "web"
    assert snap["checks"]["service:w"]["Status"] == "critical"
    assert snap["config_entries"][("service-defaults", "web")]["Protocol"] == "http"
    assert snap["index"] > 0 and snap["tokens"] == {}
    snap["services"].clear()  # a deep copy: the fake is unaffected
    assert "w" in fake.snapshot()["services"]


async def test_http_knobs(fake, client, raw):
    await client.agent.service.register("web", service_id="w", check=consul.Check.ttl("30s"))
    await client.agent.check.ttl_pass("service:w")
    status, _, _ = await raw(fake, "POST", "/_fake/advance", params={"seconds": "31"})
    assert status == 200
    assert (await client.agent.checks())["service:w"]["Status"] == "critical"
    status, _, _ = await raw(
        fake,
        "POST",
        "/_fake/fault",
        json={"Method": "GET", "PathRegex": "^/v1/agent/services$", "Status": 502, "Times": 1},
    )
    assert status == 200
    status, _, _ = await raw(fake, "GET", "/v1/agent/services")
    assert status == 502
    status, _, _ = await raw(fake, "GET", "/v1/agent/services")
    assert status == 200
    await raw(fake, "POST", "/_fake/fault", json={"Method": "GET", "PathRegex": "leader", "Times": 3})
    status, _, _ = await raw(fake, "DELETE", "/_fake/fault")
    assert status == 200
    status, _, _ = await raw(fake, "GET", "/v1/status/leader")
    assert status == 200
    status, _, text = await raw(fake, "GET", "/_fake/state")
    state = json.loads(text)
    assert "w" in state["services"] and isinstance(state["index"], int)


async def test_http_knobs_need_the_master_token_with_acls(acl_fake, raw):
    status, _, _ = await raw(acl_fake, "GET", "/_fake/state")
    assert status == 403
    status, _, _ = await raw(acl_fake, "POST", "/_fake/advance", params={"seconds": "1"})
    assert status == 403
    status, _, text = await raw(acl_fake, "GET", "/_fake/state", token=MASTER)
    assert status == 200 and len(json.loads(text)["tokens"]) == 2  # anonymous + initial management


async def test_context_manager_closes(make_client):
    with FakeConsul().start() as f:
        c = make_client(f)
        assert await c.status.leader()
    with pytest.raises(aiohttp.ClientConnectionError):
        await c.status.leader()
    with pytest.raises(RuntimeError):
        f.start()
