"""TTL, TCP and alias checks, the fake clock, and reaping of long-critical services."""

import asyncio
import socket

import consul

from consulspawner_dev.fakeconsul import FakeConsul


async def _status(client, check_id):
    return (await client.agent.checks())[check_id]


async def test_ttl_pass_warn_fail_with_note(fake, client):
    await client.agent.service.register("web", service_id="w", check=consul.Check.ttl("30s"))
    assert (await _status(client, "service:w"))["Status"] == "critical"
    assert await client.agent.check.ttl_pass("service:w", notes="all good") is True
    chk = await _status(client, "service:w")
    assert (chk["Status"], chk["Output"]) == ("passing", "all good")
    await client.agent.check.ttl_warn("service:w", notes="hmm")
    assert (await _status(client, "service:w"))["Status"] == "warning"
    await client.agent.check.ttl_fail("service:w")
    chk = await _status(client, "service:w")
    assert (chk["Status"], chk["Output"]) == ("critical", "")


async def test_ttl_goes_critical_when_not_refreshed_by_fake_clock(fake, client):
    await client.agent.service.register("web", service_id="w", check=consul.Check.ttl("30s"))
    await client.agent.check.ttl_pass("service:w")
    fake.advance(20)
    assert (await _status(client, "service:w"))["Status"] == "passing"
    await client.agent.check.ttl_pass("service:w")  # refresh resets the TTL
    fake.advance(20)
    assert (await _status(client, "service:w"))["Status"] == "passing"
    fake.advance(11)
    chk = await _status(client, "service:w")
    assert (chk["Status"], chk["Output"]) == ("critical", "TTL expired")


async def test_initial_status_can_be_given(fake, client):
    await client.agent.service.register("web", service_id="w", check={"TTL": "30s", "Status": "passing"})
    assert (await _status(client, "service:w"))["Status"] == "passing"


async def test_reregistration_keeps_check_status(fake, client):
    await client.agent.service.register("web", service_id="w", check=consul.Check.ttl("30s"))
    await client.agent.check.ttl_pass("service:w", notes="up")
    await client.agent.service.register("web", service_id="w", port=5, check=consul.Check.ttl("30s"))
    chk = await _status(client, "service:w")
    assert (chk["Status"], chk["Output"]) == ("passing", "up")


async def test_deregister_critical_service_after_reaps_service_and_sidecar(fake, client):
    await client.agent.service.register(
        "web",
        service_id="w",
        port=80,
        check={"TTL": "30s", "DeregisterCriticalServiceAfter": "90s"},
        connect={"sidecar_service": {}},
    )
    await client.agent.service.register("other", check=consul.Check.ttl("1h"))
    await client.agent.check.ttl_pass("service:w")
    fake.advance(31)  # TTL expired: critical since t0+30
    assert (await _status(client, "service:w"))["Status"] == "critical"
    fake.advance(60)  # reaper run at t0+90: critical for 60s < 90s
    assert "w" in await client.agent.services()
    fake.advance(30)  # reaper run at t0+120: critical for 90s, not more than 90s
    assert "w" in await client.agent.services()
    fake.advance(30)  # reaper run at t0+150: critical for 120s > 90s
    services = await client.agent.services()
    assert set(services) == {"other"}
    assert set(await client.agent.checks()) == {"service:other"}
    # Only services and checks go; a config entry for it is untouched.
    assert await client.config.set("service-defaults", "web", {"Protocol": "http"})


async def test_deregister_critical_minimum_is_one_minute(fake, client):
    await client.agent.service.register(
        "web", service_id="w", check={"TTL": "10s", "DeregisterCriticalServiceAfter": "5s"}
    )
    fake.advance(11)  # TTL expiry: critical from t0+10
    fake.advance(40)  # critical ~41s: would be reaped at 5s, but the minimum is 1m
    assert "w" in await client.agent.services()
    fake.advance(25)  # t0+76, but the reaper last ran at t0+60 (critical 50s then)
    assert "w" in await client.agent.services()
    fake.advance(15)  # reaper run at t0+90: critical for 80s > 1m
    assert "w" not in await client.agent.services()


async def test_reaper_runs_by_itself_with_real_time(make_client):
    with FakeConsul(reap_interval=0.05).start() as f:
        c = make_client(f)
        await c.agent.service.register(
            "web", service_id="w", check={"TTL": "1s", "DeregisterCriticalServiceAfter": "1m"}
        )
        f.state.clock_offset += 92  # jump the clock without running a pass ourselves
        for _ in range(200):
            if "w" not in await c.agent.services():
                break
            await asyncio.sleep(0.05)
        assert "w" not in await c.agent.services()


async def test_unknown_check_and_non_ttl_check(fake, client, raw):
    status, _, text = await raw(fake, "PUT", "/v1/agent/check/pass/nope")
    assert status == 404
    assert text == 'Unknown check ID "nope". Ensure that the check ID is passed, not the check name.'
    await client.agent.service.register("web", service_id="w", port=80, connect={"sidecar_service": {}})
    status, _, text = await raw(fake, "PUT", "/v1/agent/check/pass/service:w-sidecar-proxy:1")
    assert (status, text) == (500, 'CheckID "service:w-sidecar-proxy:1" does not have associated TTL')


async def test_sidecar_tcp_check_dials_and_alias_mirrors_parent(make_client, wait_for):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    try:
        with FakeConsul(reap_interval=0.05, check_interval_override=0.1).start() as f:
            c = make_client(f)
            await c.agent.service.register(
                "web",
                service_id="w",
                port=80,
                check=consul.Check.ttl("1h"),
                connect={"sidecar_service": {"port": port}},
            )

            def status(cid):
                return f.snapshot()["checks"][cid]["Status"]

            await wait_for(lambda: status("service:w-sidecar-proxy:1") == "passing")
            out = f.snapshot()["checks"]["service:w-sidecar-proxy:1"]["Output"]
            assert out == f"TCP connect 127.0.0.1:{port}: Success"
            # The alias follows the parent's aggregate health.
            assert status("service:w-sidecar-proxy:2") == "critical"
            await c.agent.check.ttl_pass("service:w")
            assert status("service:w-sidecar-proxy:2") == "passing"
            await c.agent.check.ttl_warn("service:w")
            assert status("service:w-sidecar-proxy:2") == "warning"
            # Nothing listening any more: the next dial fails.
            listener.close()
            await wait_for(lambda: status("service:w-sidecar-proxy:1") == "critical")
            assert "connection refused" in f.snapshot()["checks"]["service:w-sidecar-proxy:1"]["Output"]
    finally:
        listener.close()


async def test_tcp_check_runs_promptly_after_registration(make_client, wait_for):
    # Interval 10s (no override): the first dial must not wait for the interval.
    with FakeConsul(reap_interval=30).start() as f:
        c = make_client(f)
        await c.agent.service.register("web", service_id="w", port=80, connect={"sidecar_service": {"port": 1}})
        await wait_for(lambda: f.snapshot()["checks"]["service:w-sidecar-proxy:1"]["Output"] != "", timeout=5)
        assert f.snapshot()["checks"]["service:w-sidecar-proxy:1"]["Output"].startswith("dial tcp 127.0.0.1:1")


async def test_reaper_runs_every_30s_of_the_fake_clock(fake, client):
    # agent.reapServices: time.After(CheckReapInterval = 30s), then reapServicesInternal.
    await client.agent.service.register(
        "web", service_id="w", check={"TTL": "1s", "DeregisterCriticalServiceAfter": "1m"}
    )
    fake.advance(2)  # critical from t0+1
    fake.advance(60)  # t0+62: only the runs at t0+30 and t0+60 happened (critical 29s, 59s)
    assert "w" in await client.agent.services()
    fake.advance(27)  # t0+89: no run since t0+60
    assert "w" in await client.agent.services()
    fake.advance(2)  # run at t0+90: critical 89s > 60s
    assert "w" not in await client.agent.services()


async def test_sidecar_tcp_check_default_interval_is_10s(make_client, wait_for):
    # agent/sidecar_service.go sidecarDefaultChecks: Interval 10 * time.Second.
    dials = []

    async def on_connect(reader, writer):
        dials.append(1)
        writer.close()

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with FakeConsul(reap_interval=0.05).start() as f:
            c = make_client(f)
            await c.agent.service.register("web", service_id="w", port=80, connect={"sidecar_service": {"port": port}})
            await wait_for(lambda: len(dials) == 1)
            assert f.snapshot()["checks"]["service:w-sidecar-proxy:1"]["Interval"] == "10s"
            f.advance(9)
            await asyncio.sleep(0.3)
            assert len(dials) == 1  # not yet: the next dial is due 10s after the first
            f.advance(1.5)
            await wait_for(lambda: len(dials) == 2)
    finally:
        server.close()
        await server.wait_closed()
