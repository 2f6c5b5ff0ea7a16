"""Agent service registration, sidecar expansion, deregistration and the per-service endpoint."""

import asyncio
import time

import consul
import pytest


async def test_register_with_sidecar_expands_into_proxy_service(fake, client):
    ok = await client.agent.service.register(
        "web",
        service_id="web-1",
        port=8888,
        address="10.0.0.5",
        tags=["a"],
        meta={"owner": "alice"},
        connect={
            "sidecar_service": {
                "proxy": {"upstreams": [{"destination_name": "db", "local_bind_port": 9191}]},
            }
        },
    )
    assert ok is True
    services = await client.agent.services()
    assert set(services) == {"web-1", "web-1-sidecar-proxy"}
    parent = services["web-1"]
    assert parent["Service"] == "web" and parent["Port"] == 8888 and "Kind" not in parent
    assert parent["TaggedAddresses"]["lan_ipv4"] == {"Address": "10.0.0.5", "Port": 8888}
    proxy = services["web-1-sidecar-proxy"]
    assert proxy["Kind"] == "connect-proxy"
    assert proxy["Service"] == "web-sidecar-proxy"
    assert proxy["Port"] == 21000
    assert proxy["Address"] == "10.0.0.5"  # inherited from the parent
    assert proxy["Tags"] == ["a"] and proxy["Meta"] == {"owner": "alice"}  # copied when not given
    assert proxy["Proxy"]["DestinationServiceName"] == "web"
    assert proxy["Proxy"]["DestinationServiceID"] == "web-1"
    assert proxy["Proxy"]["LocalServiceAddress"] == "127.0.0.1"
    assert proxy["Proxy"]["LocalServicePort"] == 8888
    assert proxy["Proxy"]["Upstreams"] == [
        {"DestinationType": "service", "DestinationName": "db", "LocalBindPort": 9191, "MeshGateway": {}}
    ]

    checks = await client.agent.checks()
    listening = checks["service:web-1-sidecar-proxy:1"]
    assert listening["Name"] == "Connect Sidecar Listening" and listening["Type"] == "tcp"
    assert listening["Interval"] == "10s"
    alias = checks["service:web-1-sidecar-proxy:2"]
    assert alias["Name"] == "Connect Sidecar Aliasing web-1" and alias["Type"] == "alias"


async def test_sidecar_ports_are_first_free_in_range_and_explicit_port_is_kept(fake, client):
    for i in range(3):
        await client.agent.service.register(f"s{i}", port=9000 + i, connect={"sidecar_service": {}})
    svcs = await client.agent.services()
    assert [svcs[f"s{i}-sidecar-proxy"]["Port"] for i in range(3)] == [21000, 21001, 21002]
    await client.agent.service.deregister("s1")
    await client.agent.service.register("s3", port=9003, connect={"sidecar_service": {}})
    svcs = await client.agent.services()
    assert svcs["s3-sidecar-proxy"]["Port"] == 21001  # the lowest port freed again
    await client.agent.service.register("s4", port=9004, connect={"sidecar_service": {"port": 30000}})
    assert (await client.agent.services())["s4-sidecar-proxy"]["Port"] == 30000


async def test_reregistering_same_id_replaces_and_keeps_sidecar_port(fake, client):
    await client.agent.service.register("web", service_id="w", port=1, connect={"sidecar_service": {}})
    await client.agent.service.register("web", service_id="w", port=2, tags=["v2"], connect={"sidecar_service": {}})
    svcs = await client.agent.services()
    assert len(svcs) == 2
    assert svcs["w"]["Port"] == 2 and svcs["w"]["Tags"] == ["v2"]
    assert svcs["w-sidecar-proxy"]["Port"] == 21000
    assert len(fake.snapshot()["checks"]) == 2


async def test_replace_existing_checks(fake, client):
    await client.agent.service.register(
        "web", service_id="w", check={"TTL": "30s", "CheckID": "old"}, extra_checks=[{"TTL": "30s", "CheckID": "keep"}]
    )
    assert set((await client.agent.checks()).keys()) == {"old", "keep"}
    # Without the flag, checks missing from the new definition stay.
    await client.agent.service.register("web", service_id="w", check={"TTL": "30s", "CheckID": "keep"})
    assert set((await client.agent.checks()).keys()) == {"old", "keep"}
    await client.agent.service.register(
        "web", service_id="w", check={"TTL": "30s", "CheckID": "keep"}, replace_existing_checks=True
    )
    assert set((await client.agent.checks()).keys()) == {"keep"}


async def test_check_ids_single_and_numbered(fake, client):
    await client.agent.service.register("one", check=consul.Check.ttl("10s"))
    await client.agent.service.register("two", check=consul.Check.ttl("10s"), extra_checks=[consul.Check.ttl("20s")])
    checks = await client.agent.checks()
    assert {"service:one", "service:two:1", "service:two:2"} <= set(checks)
    assert checks["service:one"]["Name"] == "Service 'one' check"
    assert checks["service:one"]["Status"] == "critical"  # initial status unless Status given


async def test_deregister_removes_checks_and_sidecar(fake, client):
    await client.agent.service.register(
        "web", service_id="w", port=80, check=consul.Check.ttl("10s"), connect={"sidecar_service": {}}
    )
    await client.agent.service.register("other", check=consul.Check.ttl("10s"))
    assert await client.agent.service.deregister("w") is True
    assert set(await client.agent.services()) == {"other"}
    assert set(await client.agent.checks()) == {"service:other"}


async def test_deregister_unknown_id_is_404_with_consuls_text(fake, raw):
    status, _, text = await raw(fake, "PUT", "/v1/agent/service/deregister/nope")
    assert status == 404
    assert text == 'Unknown service ID "nope". Ensure that the service ID is passed, not the service name.'


async def test_body_keys_are_case_insensitive_and_snake_case_aliases(fake, raw, client):
    body = {
        "NAME": "api",
        "Id": "api-1",
        "port": 7000,
        "Meta": {"Some_Key": "v"},  # opaque map: keys untouched
        "connect": {
            "SIDECAR_SERVICE": {
                "proxy": {
                    "upstreams": [{"Destination_Name": "db", "LOCAL_BIND_PORT": 5432, "config": {"x_y": 1}}],
                }
            }
        },
        "checks": [{"ttl": "15s", "deregister_critical_service_after": "90s"}],
    }
    status, _, text = await raw(fake, "PUT", "/v1/agent/service/register", json=body)
    assert status == 200, text
    svcs = await client.agent.services()
    assert svcs["api-1"]["Meta"] == {"Some_Key": "v"}
    up = svcs["api-1-sidecar-proxy"]["Proxy"]["Upstreams"][0]
    assert up["DestinationName"] == "db" and up["LocalBindPort"] == 5432 and up["Config"] == {"x_y": 1}
    internal = fake.state.checks["service:api-1"]
    assert internal["_ttl"] == 15 and internal["_deregister"] == 90


@pytest.mark.parametrize(
    ("body", "text"),
    [
        ({"Port": 1}, "Missing service name"),
        ({"Name": "x", "Check": {"TCP": "127.0.0.1:1"}}, "Invalid check: Interval must be > 0 for Script, HTTP"),
        ({"Name": "x", "Check": {"Notes": "n"}}, "Invalid check: TTL must be > 0 for TTL checks"),
        ({"Name": "x", "Check": {"TTL": "5s", "Status": "bogus"}}, "Status for checks must 'passing'"),
    ],
)
async def test_register_validation_errors_are_400(fake, raw, body, text):
    status, _, got = await raw(fake, "PUT", "/v1/agent/service/register", json=body)
    assert status == 400
    assert got.startswith(text)


async def test_register_empty_body_is_400(fake, raw):
    status, _, text = await raw(fake, "PUT", "/v1/agent/service/register", data=b"")
    assert (status, text) == (400, "Request decode failed: EOF")


async def test_agent_service_content_hash_and_hash_blocking(fake, client, raw, arrived, attempts_of):
    await client.agent.service.register("web", service_id="w", port=1)
    status, headers, text = await raw(fake, "GET", "/v1/agent/service/w")
    assert status == 200
    import json

    body = json.loads(text)
    first_hash = body["ContentHash"]
    assert headers["X-Consul-ContentHash"] == first_hash
    assert body["Service"] == "web"

    # Same hash: the query blocks until the registration changes.
    before = attempts_of(fake, "/v1/agent/service/w")
    t0 = time.monotonic()
    task = asyncio.ensure_future(raw(fake, "GET", "/v1/agent/service/w", params={"hash": first_hash, "wait": "30s"}))
    await arrived(fake, "/v1/agent/service/w", before)
    await client.agent.service.register("web", service_id="w", port=2)
    status, _, text = await asyncio.wait_for(task, 10)
    assert status == 200
    changed = json.loads(text)
    assert changed["Port"] == 2 and changed["ContentHash"] != first_hash
    assert time.monotonic() - t0 < 10

    # A hash that is already different returns at once.
    status, _, text = await asyncio.wait_for(
        raw(fake, "GET", "/v1/agent/service/w", params={"hash": "stale", "wait": "30s"}), 5
    )
    assert json.loads(text)["Port"] == 2


async def test_agent_service_unknown_is_404(fake, raw):
    status, _, text = await raw(fake, "GET", "/v1/agent/service/ghost")
    assert (status, text) == (404, "unknown service ID: ghost")
