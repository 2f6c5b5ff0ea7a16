"""Catalog and health endpoints on the single fake node, and index-based blocking queries."""

import asyncio
import json
import time

import consul


async def test_catalog_services_and_service(fake, client):
    await client.agent.service.register("web", service_id="w1", port=80, tags=["a"], connect={"sidecar_service": {}})
    await client.agent.service.register("web", service_id="w2", port=81, tags=["b"])
    index, services = await client.catalog.services()
    assert int(index) >= 1
    assert services == {"web": ["a", "b"], "web-sidecar-proxy": ["a"]}
    index, nodes = await client.catalog.service("web")
    assert [n["ServiceID"] for n in nodes] == ["w1", "w2"]
    assert nodes[0]["Node"] == "fake-node" and nodes[0]["Address"] == "127.0.0.1"
    assert nodes[0]["ServicePort"] == 80 and nodes[0]["Datacenter"] == "dc1"
    _, tagged = await client.catalog.service("web", tag="b")
    assert [n["ServiceID"] for n in tagged] == ["w2"]


async def test_health_service_passing_filter(fake, client):
    await client.agent.service.register("web", service_id="w1", check=consul.Check.ttl("1m"))
    await client.agent.service.register("web", service_id="w2", check=consul.Check.ttl("1m"))
    await client.agent.check.ttl_pass("service:w1")
    _, entries = await client.health.service("web")
    assert [e["Service"]["ID"] for e in entries] == ["w1", "w2"]
    entry = entries[0]
    assert entry["Node"]["Node"] == "fake-node"
    assert {c["CheckID"] for c in entry["Checks"]} == {"serfHealth", "service:w1"}
    _, passing = await client.health.service("web", passing=True)
    assert [e["Service"]["ID"] for e in passing] == ["w1"]
    await client.agent.check.ttl_warn("service:w1")
    _, passing = await client.health.service("web", passing=True)
    assert passing == []  # warning is not passing


async def test_health_connect_returns_the_sidecar_proxies(fake, client):
    await client.agent.service.register("web", service_id="w1", port=80, connect={"sidecar_service": {}})
    await client.agent.service.register("web", service_id="w2", port=81)  # no sidecar
    await client.agent.service.register("db", port=5432, connect={"sidecar_service": {}})
    _, entries = await client.health.connect("web")
    assert [e["Service"]["ID"] for e in entries] == ["w1-sidecar-proxy"]
    svc = entries[0]["Service"]
    assert svc["Kind"] == "connect-proxy" and svc["Proxy"]["DestinationServiceName"] == "web"
    assert svc["Port"] == 21000


async def test_health_checks_for_service(fake, client):
    await client.agent.service.register("web", service_id="w1", check=consul.Check.ttl("1m"))
    await client.agent.service.register("other", check=consul.Check.ttl("1m"))
    _, checks = await client.health.checks("web")
    assert [c["CheckID"] for c in checks] == ["service:w1"]
    assert checks[0]["ServiceName"] == "web"


async def test_blocking_health_query_returns_after_a_write(fake, client, make_client, arrived, attempts_of):
    await client.agent.service.register("web", service_id="w1", check=consul.Check.ttl("1m"))
    index, entries = await client.health.service("web")
    assert len(entries) == 1
    other = make_client(fake)
    before = attempts_of(fake, "/v1/health/service/web")
    t0 = time.monotonic()
    task = asyncio.ensure_future(other.health.service("web", index=index, wait="30s"))
    await arrived(fake, "/v1/health/service/web", before)
    assert not task.done()
    await client.agent.service.register("web", service_id="w2")
    new_index, new_entries = await asyncio.wait_for(task, 10)
    assert int(new_index) > int(index)
    assert {e["Service"]["ID"] for e in new_entries} == {"w1", "w2"}
    assert time.monotonic() - t0 < 10  # well before the 30s wait


async def test_check_status_change_wakes_health_blocking_query(fake, client, make_client, arrived, attempts_of):
    await client.agent.service.register("web", service_id="w1", check=consul.Check.ttl("1m"))
    index, _ = await client.health.service("web", passing=True)
    other = make_client(fake)
    before = attempts_of(fake, "/v1/health/service/web")
    task = asyncio.ensure_future(other.health.service("web", index=index, wait="30s", passing=True))
    await arrived(fake, "/v1/health/service/web", before)
    await client.agent.check.ttl_pass("service:w1")
    new_index, entries = await asyncio.wait_for(task, 10)
    assert int(new_index) > int(index)
    assert [e["Service"]["ID"] for e in entries] == ["w1"]


async def test_unrelated_write_does_not_wake_the_query(fake, client, make_client):
    await client.agent.service.register("web", service_id="w1")
    index, _ = await client.health.service("web")
    other = make_client(fake)
    t0 = time.monotonic()
    task = asyncio.ensure_future(other.health.service("web", index=index, wait="1s"))
    await client.agent.service.register("db")  # another service
    new_index, entries = await asyncio.wait_for(task, 10)
    elapsed = time.monotonic() - t0
    assert new_index == index  # timed out with the same index
    assert [e["Service"]["ID"] for e in entries] == ["w1"]
    assert elapsed >= 0.95  # it waited for ?wait (plus up to wait/16 jitter)


async def test_blocking_catalog_services_on_deregister(fake, client, make_client, arrived, attempts_of):
    await client.agent.service.register("web")
    index, services = await client.catalog.services()
    assert "web" in services
    other = make_client(fake)
    before = attempts_of(fake, "/v1/catalog/services")
    task = asyncio.ensure_future(other.catalog.services(index=index, wait="30s"))
    await arrived(fake, "/v1/catalog/services", before)
    await client.agent.service.deregister("web")
    new_index, services = await asyncio.wait_for(task, 10)
    assert int(new_index) > int(index) and services == {}


async def test_invalid_wait_and_index_are_400(fake, raw):
    status, _, text = await raw(fake, "GET", "/v1/health/service/web", params={"wait": "forever"})
    assert (status, text) == (400, "Invalid wait time")
    status, _, text = await raw(fake, "GET", "/v1/health/service/web", params={"index": "x"})
    assert (status, text) == (400, "Invalid index")


async def test_index_header_is_at_least_one_and_meta_headers(fake, raw):
    status, headers, text = await raw(fake, "GET", "/v1/health/service/nothing-here")
    assert status == 200 and json.loads(text) == []
    assert int(headers["X-Consul-Index"]) >= 1
    assert headers["X-Consul-KnownLeader"] == "true"
