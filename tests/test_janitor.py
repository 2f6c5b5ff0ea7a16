"""The janitor against the fake agent: it deletes only what is ours and due, and --dry-run lists
exactly what a real pass deletes."""

import asyncio
import os
import subprocess
import sys
import time

from consulspawner import ownership
from consulspawner.entries import KIND, source_entry
from consulspawner.intentions import IntentionWriter
from consulspawner.janitor import Janitor

from .conftest import MASTER_TOKEN

DEST = "trino-coordinator"
ORCHESTRATOR = {"Name": "orchestrator", "Action": "allow", "Description": "ops"}


def owner(name, hub="hub-a", expires_at=None):
    return ownership.Owner(hub=hub, user=f"user-of-{name}", server="", service=name, expires_at=expires_at)


async def seed(client):
    """Foreign objects, one live server, one expired grant, one orphaned grant, one dead
    registered service, and another hub's expired grant. (Tokens are not the janitor's: login
    tokens expire by themselves.)"""
    assert await client.set_config({"Kind": KIND, "Name": DEST, "Sources": [ORCHESTRATOR]}, cas=0)
    writer_a, writer_b = IntentionWriter(client, "hub-a"), IntentionWriter(client, "hub-b")
    now = time.time()
    for name in ("jupyter-live", "jupyter-dead"):
        await client.register_service(
            {
                "ID": name,
                "Name": name,
                "Port": 8888,
                "Meta": owner(name).service_meta(),
                "Check": {"CheckID": f"{name}:alive", "TTL": "60s", "DeregisterCriticalServiceAfter": "10m"},
            }
        )
    await client.pass_ttl("jupyter-live:alive")
    await client.register_service({"ID": "web", "Name": "web", "Port": 80})  # not ours
    await writer_a.grant(DEST, source_entry("jupyter-live", owner("jupyter-live").with_expiry(now + 600)))
    await writer_a.grant(DEST, source_entry("jupyter-expired", owner("jupyter-expired").with_expiry(now - 5)))
    await writer_a.grant(DEST, source_entry("jupyter-orphan", owner("jupyter-orphan").with_expiry(now + 600)))
    await writer_b.grant(DEST, source_entry("jupyter-b", owner("jupyter-b", hub="hub-b").with_expiry(now - 5)))
    token = await client.create_service_token("jupyter-orphan", owner("jupyter-orphan").describe(), 3600)
    return token["AccessorID"]


async def sources(client):
    entry = await client.get_config(KIND, DEST)
    return sorted(s["Name"] for s in entry["Sources"])


async def test_a_pass_deletes_only_owned_due_objects(acl_consul, acl_client):
    token = await seed(acl_client)
    acl_consul.advance(120)  # jupyter-dead's TTL check goes critical; jupyter-live's too (refreshed below)
    await acl_client.pass_ttl("jupyter-live:alive")
    janitor = Janitor(acl_client, hub_instance="hub-a", grace=0, critical_limit=0)
    deleted = await janitor.run_pass()
    assert sorted((d.kind, d.target) for d in deleted) == [
        ("intention", f"jupyter-expired -> {DEST}"),
        ("intention", f"jupyter-orphan -> {DEST}"),
        ("service", "jupyter-dead"),
    ]
    assert all(d.user.startswith("user-of-") and d.hub == "hub-a" for d in deleted)
    assert await sources(acl_client) == ["jupyter-b", "jupyter-live", "orchestrator"]
    services = await acl_client.agent_services()
    assert "jupyter-live" in services and "web" in services and "jupyter-dead" not in services
    # Even a token carrying our marker is left alone: the janitor holds no acl right.
    assert token in {t["AccessorID"] for t in await acl_client.list_tokens()}


async def test_grace_is_measured_across_passes(acl_client):
    await seed(acl_client)
    clock = [1000.0]
    janitor = Janitor(acl_client, hub_instance="hub-a", grace=60, critical_limit=10**6, clock=lambda: clock[0])
    # expires_at is in wall-clock time; keep this janitor's clock before it so only grace counts.
    first = await janitor.run_pass()
    assert first == []
    clock[0] += 61
    second = await janitor.run_pass()
    # Both grants whose service never registered; nothing expired by this clock.
    assert sorted((d.kind, d.reason) for d in second) == [
        ("intention", "no instance of jupyter-expired for 60s"),
        ("intention", "no instance of jupyter-orphan for 60s"),
    ]


async def test_an_extended_grant_survives_a_stale_survey(acl_client):
    await seed(acl_client)
    janitor = Janitor(acl_client, hub_instance="hub-a", grace=10**6, critical_limit=10**6)
    due = [d for d in await janitor.survey() if d.kind == "intention"]
    assert [d.target for d in due] == [f"jupyter-expired -> {DEST}"]
    # The hub extends the grant after the janitor looked: the janitor must not delete it.
    writer = IntentionWriter(acl_client, "hub-a")
    await writer.grant(DEST, source_entry("jupyter-expired", owner("jupyter-expired").with_expiry(time.time() + 600)))
    await janitor.apply(due)
    assert "jupyter-expired" in await sources(acl_client)


async def test_dry_run_lists_exactly_what_the_real_run_deletes(acl_consul, acl_client):
    await seed(acl_client)
    env = {**os.environ, "CONSUL_HTTP_ADDR": acl_consul.url, "CONSUL_HTTP_TOKEN": MASTER_TOKEN}
    args = [sys.executable, "-m", "consulspawner.janitor", "--once", "--grace", "0", "--critical-limit", "0"]
    dry = await asyncio.to_thread(
        subprocess.run, [*args, "--dry-run"], env=env, capture_output=True, text=True, timeout=60
    )
    assert dry.returncode == 0, dry.stderr
    would = sorted(line.removeprefix("would delete ") for line in dry.stdout.splitlines())
    assert len(would) >= 4 and await sources(acl_client)  # nothing deleted by the dry run
    assert "jupyter-orphan" in await sources(acl_client)
    real = await asyncio.to_thread(subprocess.run, args, env=env, capture_output=True, text=True, timeout=60)
    assert real.returncode == 0, real.stderr
    deleted = sorted(line.split("Deleted ", 1)[1] for line in real.stderr.splitlines() if "Deleted " in line)
    assert deleted == would
    assert MASTER_TOKEN not in dry.stdout + dry.stderr + real.stdout + real.stderr


async def test_grace_is_per_granted_start_of_a_source(acl_client):
    clock = [1000.0]
    janitor = Janitor(acl_client, hub_instance="hub-a", grace=60, critical_limit=10**6, clock=lambda: clock[0])
    writer = IntentionWriter(acl_client, "hub-a")

    def alice(incarnation):
        start = ownership.Owner(hub="hub-a", user="alice", server="", service="jupyter-alice", incarnation=incarnation)
        return source_entry("jupyter-alice", start.with_expiry(time.time() + 3600))

    await writer.grant(DEST, alice("a" * 32))
    assert await janitor.run_pass() == []
    clock[0] += 61
    await writer.grant(DEST, alice("b" * 32))  # a newer start replaced it: its own grace begins now
    assert await janitor.run_pass() == []
    assert await sources(acl_client) == ["jupyter-alice"]
    clock[0] += 61
    assert [(d.kind, d.incarnation) for d in await janitor.run_pass()] == [("intention", "b" * 32)]


async def test_apply_keeps_what_came_back_between_survey_and_apply(acl_client):
    """A service whose check passes again after the survey and before the apply is in use and
    stays (issue 17)."""
    name = "jupyter-flaky"
    await acl_client.register_service(
        {
            "ID": f"{name}--01234567",
            "Name": name,
            "Port": 8888,
            "Meta": owner(name).service_meta(),
            "Check": {"CheckID": f"{name}--01234567:alive", "TTL": "60s", "Status": "critical"},
        }
    )
    janitor = Janitor(acl_client, hub_instance="hub-a", grace=0, critical_limit=0)
    deletions = await janitor.survey()
    assert ("service", f"{name}--01234567") in {(d.kind, d.target) for d in deletions}

    await acl_client.pass_ttl(f"{name}--01234567:alive")
    done = await janitor.apply(deletions)
    assert not [d for d in done if d.kind == "service"], done
    assert f"{name}--01234567" in await acl_client.agent_services()
