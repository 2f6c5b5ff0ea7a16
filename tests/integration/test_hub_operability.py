"""Operability with a real hub: the mesh's metrics at the hub's own /hub/metrics after two users
spawn and stop, and a spawn that fails in the mesh telling the user which step failed (through
the hub API's progress stream) while the hub log names the Consul call and the
troubleshooting entry."""

import json

from prometheus_client.parser import text_string_to_metric_families

from consulspawner import failures, metrics

from .conftest import MASTER_TOKEN, wait_for

TRINO = "trino-coordinator"
FAILURES = "consulspawner_mesh_step_failures_total"


async def scrape(api) -> dict[tuple[str, tuple], float]:
    """/hub/metrics as {(sample name, sorted labels): value} (the admin service has read:metrics)."""
    async with api.session.get(f"{api.base}/hub/metrics", headers=api.headers) as response:
        text = await response.text()
        assert response.status == 200, text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples, name, **labels) -> float:
    key = (name, tuple(sorted(labels.items())))
    assert key in samples, f"{name}{labels} not exported"
    return samples[key]


def step_count(samples, phase, step, outcome="success") -> float:
    return value(samples, "consulspawner_mesh_step_duration_seconds_count", phase=phase, step=step, outcome=outcome)


async def test_hub_metrics_count_two_spawns_and_two_stops(hub_runner, user_name, tmp_path):
    # As the demo runs it: its timeouts, and the audit trail routed to a file of its own.
    audit_log = tmp_path / "audit.log"
    api = await hub_runner.start(
        CONSULSPAWNER_AUDIT_LOG=str(audit_log),
        CONSULSPAWNER_START_TIMEOUT="300",
        CONSULSPAWNER_HTTP_TIMEOUT="120",
        CONSULSPAWNER_SIDECAR_READY_TIMEOUT="90",
        CONSULSPAWNER_CONSUL_REQUEST_TIMEOUT="20",
    )
    users = [f"{user_name}a", f"{user_name}b"]
    before = await scrape(api)
    assert value(before, "consulspawner_intention_grants_total") == 0
    assert value(before, "consulspawner_intention_entry_limit_bytes", limit="raft_suggested") == 512 * 1024

    await api.spawn(*users)
    running = await scrape(api)
    for step in metrics.SPAWN_STEPS:
        assert step_count(running, "spawn", step) == 2, step
        assert step_count(running, "spawn", step, "failure") == 0, step
    assert value(running, "consulspawner_intention_grants_total") == 2  # one destination each
    assert value(running, "consulspawner_keeper_servers") == 2
    assert value(running, "consulspawner_keeper_failing_servers") == 0
    assert value(running, "consulspawner_intention_entry_sources", destination=TRINO) == 2
    assert value(running, "consulspawner_intention_entry_size_bytes", destination=TRINO) > 0
    # The two grants may share one coalesced write; each is at least one.
    assert (
        1
        <= value(running, "consulspawner_intention_writes_total")
        <= 2 + value(running, "consulspawner_intention_cas_conflicts_total")
    )

    for user in users:
        await api.call("DELETE", f"/users/{user}/server", ok=(202, 204))
    for user in users:
        await wait_for(lambda user=user: api.gone(user), timeout=90, interval=1, message=f"{user}'s server to stop")
    stopped = await scrape(api)
    for step in metrics.STOP_STEPS:
        assert step_count(stopped, "stop", step) == 2, step
    assert value(stopped, "consulspawner_intention_revokes_total") == 2
    assert value(stopped, "consulspawner_intention_extensions_total") == 0
    assert value(stopped, "consulspawner_keeper_servers") == 0
    assert value(stopped, "consulspawner_intention_entry_sources", destination=TRINO) == 0
    assert value(stopped, "consulspawner_intention_entry_size_bytes", destination=TRINO) == 0
    assert value(stopped, "consulspawner_intention_writes_total") >= 2
    for phase, steps in metrics.PHASE_STEPS.items():
        for step in steps:
            for cause in metrics.CAUSES:
                failures_of = value(stopped, FAILURES, phase=phase, step=step, cause=cause)
                assert failures_of == 0, (phase, step, cause)
    # The hub's own metrics are in the same registry.
    assert any(name.startswith("jupyterhub_") for name, _ in stopped)

    # The audit file holds only events, one JSON line each, and no secret.
    events = [json.loads(line) for line in audit_log.read_text().splitlines()]
    by_kind = sorted((e["event"], e["hub_user"]) for e in events)
    expected = [
        (kind, user) for user in users for kind in ("grant", "revoke", "teardown", "token-login", "token-logout")
    ]
    assert by_kind == sorted(expected)
    text = audit_log.read_text()
    for secret in (MASTER_TOKEN, hub_runner.consul_token, hub_runner.token):
        assert secret not in text
    assert "mesh spawn failed" not in hub_runner.log_path.read_text()


async def progress_events(api, user):
    """The hub API's progress stream for the user's server, until it ends."""
    events = []
    async with api.session.get(f"{api.base}/hub/api/users/{user}/server/progress", headers=api.headers) as response:
        assert response.status == 200, await response.text()
        async for raw in response.content:
            line = raw.decode().strip()
            if line.startswith("data:"):
                events.append(json.loads(line[len("data:") :]))
                if events[-1].get("failed") or events[-1].get("ready"):
                    break
    return events


async def test_a_spawn_refused_in_the_mesh_tells_the_user_the_step_and_the_admin_the_call(
    hub_runner, mesh_consul, admin, user_name
):
    api = await hub_runner.start()
    # The agent refuses the registration (as with a hub token that lost service:write).
    mesh_consul.fail("PUT", r"^/v1/agent/service/register", status=403, times=100, body="Permission denied")
    await api.call("POST", f"/users/{user_name}", ok=(201, 409))
    # A spawn failing within JupyterHub's slow_spawn_timeout fails the request itself (500 with
    # the exception's jupyterhub_message); a slower one is pending (202) and fails later.
    answer = await api.call("POST", f"/users/{user_name}/server", ok=(201, 202, 500))
    events = await progress_events(api, user_name)

    failed = events[-1]
    assert failed.get("failed") is True, events
    expected = failures.user_message("register", user_name)
    assert failed["message"] == f"Spawn failed: {expected}"
    assert "(step: registration)" in failed["message"]
    assert "docs/troubleshooting.md#spawn-failed-at-registration-step-register" in failed["message"]
    if answer:
        assert answer["message"] == expected, answer
    assert await api.server(user_name) is None  # not pending, not running: the hub dropped it

    await wait_for(lambda: "mesh spawn failed" in hub_runner.log_path.read_text(), message="the hub log line")
    log = hub_runner.log_path.read_text()
    line = next(entry for entry in log.splitlines() if "mesh spawn failed" in entry)
    assert "at step register" in line
    assert "PUT /v1/agent/service/register -> 403" in line
    assert "docs/troubleshooting.md#spawn-failed-at-registration-step-register" in line
    for secret in (MASTER_TOKEN, hub_runner.consul_token, hub_runner.token):
        assert secret not in log
        assert secret not in json.dumps(events)
    # The failed step is counted by cause.
    samples = await scrape(api)
    assert value(samples, FAILURES, phase="spawn", step="register", cause="refused") == 1
