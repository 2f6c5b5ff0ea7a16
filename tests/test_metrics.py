"""consulspawner.metrics: names, labels and counts in the registry JupyterHub serves."""

import asyncio
import importlib
import urllib.request

import docker.errors
import pytest
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from consulspawner import metrics
from consulspawner.consul import ConsulError
from consulspawner.entries import IntentionRefused
from consulspawner.intentions import IntentionConflict


def value(name: str, **labels: str) -> float:
    found = REGISTRY.get_sample_value(name, labels)
    assert found is not None, f"no sample {name} {labels}"
    return found


def our_samples(registry=REGISTRY) -> list:
    text = generate_latest(registry).decode()
    return [
        sample
        for family in text_string_to_metric_families(text)
        if family.name.startswith("consulspawner_")
        for sample in family.samples
    ]


def test_every_step_and_cause_is_exported_before_it_happens():
    for phase, steps in metrics.PHASE_STEPS.items():
        for step in steps:
            for outcome in metrics.OUTCOMES:
                value("consulspawner_mesh_step_duration_seconds_count", phase=phase, step=step, outcome=outcome)
            for cause in metrics.CAUSES:
                value("consulspawner_mesh_step_failures_total", phase=phase, step=step, cause=cause)
    assert value("consulspawner_intention_entry_limit_bytes", limit="raft_suggested") == 512 * 1024
    assert value("consulspawner_intention_entry_limit_bytes", limit="raft_warn") == 1024 * 1024
    for name in (
        "consulspawner_intention_grants_total",
        "consulspawner_intention_extensions_total",
        "consulspawner_intention_revokes_total",
        "consulspawner_intention_writes_total",
        "consulspawner_intention_cas_conflicts_total",
        "consulspawner_keeper_servers",
        "consulspawner_keeper_failing_servers",
    ):
        value(name)


def test_step_times_a_success_and_counts_a_failure_by_cause():
    ok_before = value("consulspawner_mesh_step_duration_seconds_count", phase="spawn", step="token", outcome="success")
    with metrics.step("spawn", "token"):
        pass
    assert (
        value("consulspawner_mesh_step_duration_seconds_count", phase="spawn", step="token", outcome="success")
        == ok_before + 1
    )

    failed_before = value("consulspawner_mesh_step_failures_total", phase="stop", step="revoke", cause="consul")
    with pytest.raises(ConsulError):
        with metrics.step("stop", "revoke"):
            raise ConsulError("PUT /v1/config", 500, "rpc error")
    assert value("consulspawner_mesh_step_failures_total", phase="stop", step="revoke", cause="consul") == (
        failed_before + 1
    )
    assert value("consulspawner_mesh_step_duration_seconds_count", phase="stop", step="revoke", outcome="failure") >= 1


async def test_step_wraps_awaits_and_ignores_cancellation():
    labels = {"phase": "spawn", "step": "ready"}
    before = {
        outcome: value("consulspawner_mesh_step_duration_seconds_count", outcome=outcome, **labels)
        for outcome in metrics.OUTCOMES
    }
    failures = sum(value("consulspawner_mesh_step_failures_total", cause=c, **labels) for c in metrics.CAUSES)

    async def waits_forever():
        with metrics.step("spawn", "ready"):
            await asyncio.Event().wait()

    task = asyncio.create_task(waits_forever())
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    after = {
        outcome: value("consulspawner_mesh_step_duration_seconds_count", outcome=outcome, **labels)
        for outcome in metrics.OUTCOMES
    }
    assert after == before
    assert sum(value("consulspawner_mesh_step_failures_total", cause=c, **labels) for c in metrics.CAUSES) == failures

    with metrics.step("spawn", "ready"):
        await asyncio.sleep(0)
    assert value("consulspawner_mesh_step_duration_seconds_count", outcome="success", **labels) == before["success"] + 1


def test_unknown_steps_are_refused_so_labels_stay_a_fixed_set():
    for phase, step in (("spawn", "revoke"), ("stop", "token"), ("start", "token"), ("spawn", "alice")):
        with pytest.raises(ValueError):
            with metrics.step(phase, step):
                pass


@pytest.mark.parametrize(
    ("error", "cause"),
    [
        (TimeoutError(), "timeout"),
        (ConsulError("PUT /v1/acl/token", None, "no answer within 10s"), "timeout"),
        (ConsulError("PUT /v1/acl/token", None, "ClientConnectorError: refused"), "consul"),
        (ConsulError("PUT /v1/acl/token", 500, "rpc error"), "consul"),
        (ConsulError("PUT /v1/acl/token", 403, "Permission denied"), "refused"),
        (ConsulError("PUT /v1/acl/login", 401, "ACL support disabled"), "refused"),
        (IntentionRefused("x", "bad"), "refused"),
        (IntentionConflict("not ours"), "refused"),
        (docker.errors.APIError("500 Server Error"), "docker"),
        (docker.errors.NotFound("no such container"), "docker"),
        (RuntimeError("anything"), "other"),
    ],
)
def test_cause_of(error, cause):
    assert metrics.cause_of(error) == cause
    assert cause in metrics.CAUSES


def test_counters_and_the_entry_gauges():
    before = value("consulspawner_intention_grants_total")
    metrics.GRANTS.inc()
    assert value("consulspawner_intention_grants_total") == before + 1

    entry = {"Kind": "service-intentions", "Name": "trino", "Sources": [{"Name": f"s{i}"} for i in range(3)]}
    metrics.observe_entry("trino", entry)
    assert value("consulspawner_intention_entry_sources", destination="trino") == 3
    assert value("consulspawner_intention_entry_size_bytes", destination="trino") == metrics.entry_size(entry)
    metrics.observe_entry("trino", None)
    assert value("consulspawner_intention_entry_sources", destination="trino") == 0
    assert value("consulspawner_intention_entry_size_bytes", destination="trino") == 0


def test_entry_size_counts_utf8_bytes():
    assert metrics.entry_size({"a": "é"}) == len('{"a":"é"}'.encode())


def test_keeper_gauges_count_servers_idempotently():
    servers = value("consulspawner_keeper_servers")
    failing = value("consulspawner_keeper_failing_servers")
    metrics.keeper_watching("svc-a")
    metrics.keeper_watching("svc-a")
    metrics.keeper_watching("svc-b")
    assert value("consulspawner_keeper_servers") == servers + 2
    metrics.keeper_round("svc-a", ok=False)
    metrics.keeper_round("svc-a", ok=False)
    metrics.keeper_round("never-watched", ok=False)
    assert value("consulspawner_keeper_failing_servers") == failing + 1
    metrics.keeper_round("svc-a", ok=True)
    assert value("consulspawner_keeper_failing_servers") == failing
    metrics.keeper_round("svc-b", ok=False)
    metrics.keeper_done("svc-b")
    metrics.keeper_done("svc-b")
    metrics.keeper_done("svc-a")
    assert value("consulspawner_keeper_servers") == servers
    assert value("consulspawner_keeper_failing_servers") == failing


def test_series_do_not_grow_with_users():
    metrics.keeper_watching("warm-up")
    metrics.keeper_done("warm-up")
    before = {(s.name, tuple(sorted(s.labels.items()))) for s in our_samples()}
    for i in range(200):
        key = f"jupyter-user{i}"
        metrics.keeper_watching(key)
        metrics.keeper_round(key, ok=i % 2 == 0)
        with metrics.step("spawn", "grant"):
            metrics.GRANTS.inc()
        with pytest.raises(RuntimeError):
            with metrics.step("stop", "logout"):
                raise RuntimeError(key)
    for i in range(200):
        metrics.keeper_done(f"jupyter-user{i}")
    after = {(s.name, tuple(sorted(s.labels.items()))) for s in our_samples()}
    assert after == before
    for sample in our_samples():
        assert not any("user" in str(v) for v in sample.labels.values()), sample


def test_names_follow_prometheus_conventions():
    for sample in our_samples():
        name = sample.name
        assert name.startswith("consulspawner_")
        assert name == name.lower()
    for family in text_string_to_metric_families(generate_latest(REGISTRY).decode()):
        if not family.name.startswith("consulspawner_"):
            continue
        if family.type == "counter":
            assert all(s.name.endswith(("_total", "_created")) for s in family.samples), family.name
        if family.type == "histogram":
            assert family.name.endswith("_seconds")


def test_reimport_defines_nothing_twice():
    first = metrics.STEP_DURATION
    reloaded = importlib.reload(metrics)
    assert reloaded.STEP_DURATION is first
    assert reloaded.GRANTS is metrics.GRANTS
    # Still one series per name in the exposition.
    names = [(s.name, tuple(sorted(s.labels.items()))) for s in our_samples()]
    assert len(names) == len(set(names))


def test_janitor_metrics_live_in_their_own_registry():
    janitor = metrics.janitor_metrics()
    assert metrics.janitor_metrics() is janitor
    assert REGISTRY.get_sample_value("consulspawner_janitor_passes_total", {"outcome": "success"}) is None
    before = janitor.registry.get_sample_value("consulspawner_janitor_deletions_total", {"kind": "token"})
    janitor.deleted("token")
    assert janitor.registry.get_sample_value("consulspawner_janitor_deletions_total", {"kind": "token"}) == before + 1
    with pytest.raises(ValueError):
        janitor.deleted("user-alice")
    names = {s.name for s in our_samples(janitor.registry)}
    assert not any(n.startswith("consulspawner_mesh_") for n in names)


def test_janitor_metrics_are_served_on_their_own_port():
    janitor = metrics.janitor_metrics()
    janitor.pass_done(ok=True)
    server, _thread = metrics.serve_janitor_metrics(0, "127.0.0.1")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.server_port}/metrics", timeout=10) as response:
            text = response.read().decode()
    finally:
        server.shutdown()
        server.server_close()
    assert 'consulspawner_janitor_passes_total{outcome="success"}' in text
    assert "consulspawner_janitor_last_success_timestamp_seconds" in text
    assert "process_cpu_seconds_total" in text or "python_info" in text
    assert "consulspawner_mesh_step" not in text
