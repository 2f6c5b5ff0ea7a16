"""The intention writer against the fake agent: coalescing, CAS, ownership, L4 and L7."""

import asyncio
import copy
import json

import pytest

from consulspawner import ownership
from consulspawner.consul import ConsulClient, ConsulError
from consulspawner.entries import KIND, L4, L7, IntentionRefused, source_entry
from consulspawner.intentions import IntentionConflict, IntentionWriter

DEST = "trino-coordinator"
ORCHESTRATOR = {
    "Name": "orchestrator",
    "Action": "allow",
    "Description": "orchestrator may query trino (written by ops, not by us)",
}


def entry_for(source, hub="hub-a", mode=L4, trino_user=None):
    owner = ownership.Owner(hub=hub, user=source.removeprefix("jupyter-"), server="", service=source, expires_at=10**10)
    return source_entry(source, owner, mode, trino_user)


async def seed_foreign(client: ConsulClient, destination=DEST, extra_sources=()):
    entry = {"Kind": KIND, "Name": destination, "Meta": {"owner": "ops"}, "Sources": [ORCHESTRATOR, *extra_sources]}
    assert await client.set_config(entry, cas=0)
    stored = await client.get_config(KIND, destination)
    return copy.deepcopy(stored["Sources"][0]), stored["Meta"]


def names(entry):
    return sorted(s["Name"] for s in (entry or {}).get("Sources", []))


async def test_200_grants_and_100_revokes_coalesce_and_keep_foreign_sources(fake_consul, consul_client):
    foreign_before, meta_before = await seed_foreign(consul_client)
    writer = IntentionWriter(consul_client, "hub-a")
    # A second hub on its own client writes the same entry at the same time: real CAS races.
    other_client = ConsulClient(fake_consul.url)
    other = IntentionWriter(other_client, "hub-b")
    sources = [f"jupyter-user{i}" for i in range(200)]

    async def grant_then_maybe_revoke(i, source):
        await writer.grant(DEST, entry_for(source))
        if i < 100:
            await writer.revoke(DEST, source)

    writes_before = fake_consul.count("PUT", r"^/v1/config$")
    await asyncio.gather(
        *(grant_then_maybe_revoke(i, s) for i, s in enumerate(sources)),
        *(other.grant(DEST, entry_for(f"jupyter-b{i}", hub="hub-b")) for i in range(20)),
    )
    await other_client.close()
    config_writes = fake_consul.count("PUT", r"^/v1/config$") - writes_before
    print(
        f"\n300 changes by hub-a + 20 by hub-b: {writer.writes} writes by hub-a, "
        f"{other.writes} by hub-b, {config_writes} config writes served, {writer.conflicts} CAS conflicts"
    )

    entry = await consul_client.get_config(KIND, DEST)
    expected = sorted(["orchestrator", *sources[100:], *(f"jupyter-b{i}" for i in range(20))])
    assert names(entry) == expected
    orchestrator = next(s for s in entry["Sources"] if s["Name"] == "orchestrator")
    assert json.dumps(orchestrator, sort_keys=True) == json.dumps(foreign_before, sort_keys=True)
    assert entry["Meta"] == meta_before
    # Coalescing: 300 changes must not cost anywhere near 300 writes.
    assert writer.writes < 60, writer.writes


async def test_revoking_the_last_owned_source_keeps_foreign_ones(consul_client):
    await seed_foreign(consul_client)
    writer = IntentionWriter(consul_client, "hub-a")
    await writer.grant(DEST, entry_for("jupyter-alice"))
    await writer.revoke(DEST, "jupyter-alice")
    assert names(await consul_client.get_config(KIND, DEST)) == ["orchestrator"]


async def test_entry_is_deleted_when_its_last_source_was_ours(consul_client):
    writer = IntentionWriter(consul_client, "hub-a")
    await writer.grant(DEST, entry_for("jupyter-alice"))
    assert names(await consul_client.get_config(KIND, DEST)) == ["jupyter-alice"]
    await writer.revoke(DEST, "jupyter-alice")
    assert await consul_client.get_config(KIND, DEST) is None
    # Revoking what is already gone is a no-op, not an error, and costs no write.
    writes = writer.writes
    await writer.revoke(DEST, "jupyter-alice")
    assert writer.writes == writes


async def test_a_grant_never_replaces_a_foreign_source_of_the_same_name(consul_client):
    foreign_before, _ = await seed_foreign(consul_client)
    writer = IntentionWriter(consul_client, "hub-a")
    with pytest.raises(IntentionConflict, match="not written by this hub"):
        await writer.grant(DEST, entry_for("orchestrator"))
    with pytest.raises(IntentionConflict):
        await writer.revoke(DEST, "orchestrator")
    entry = await consul_client.get_config(KIND, DEST)
    assert entry["Sources"] == [foreign_before]


async def test_another_hubs_source_is_not_ours(consul_client):
    writer_a = IntentionWriter(consul_client, "hub-a")
    writer_b = IntentionWriter(consul_client, "hub-b")
    await writer_b.grant(DEST, entry_for("jupyter-x", hub="hub-b"))
    with pytest.raises(IntentionConflict):
        await writer_a.revoke(DEST, "jupyter-x")
    assert names(await consul_client.get_config(KIND, DEST)) == ["jupyter-x"]


async def test_regrant_with_new_expiry_replaces_in_place(consul_client):
    writer = IntentionWriter(consul_client, "hub-a")
    owner = ownership.Owner(hub="hub-a", user="alice", server="", service="jupyter-alice")
    await writer.grant(DEST, source_entry("jupyter-alice", owner.with_expiry(100)))
    await writer.grant(DEST, source_entry("jupyter-alice", owner.with_expiry(200)))
    [source] = (await consul_client.get_config(KIND, DEST))["Sources"]
    assert ownership.parse(source["Description"]).expires_at == 200


async def test_l7_grant_binds_the_trino_user_and_counts_as_deny_for_l4(consul_client):
    assert await consul_client.set_config({"Kind": "service-defaults", "Name": DEST, "Protocol": "http"})
    writer = IntentionWriter(consul_client, "hub-a")
    await writer.grant(DEST, entry_for("jupyter-carol", mode=L7, trino_user="carol"))
    [source] = (await consul_client.get_config(KIND, DEST))["Sources"]
    [allow] = [p for p in source["Permissions"] if p["Action"] == "allow"]
    assert allow["HTTP"]["Header"] == [{"Name": "X-Trino-User", "Exact": "carol"}]
    assert "Action" not in source
    roots = (await consul_client.request("GET", "/v1/agent/connect/ca/roots")).body
    uri = f"spiffe://{roots['TrustDomain']}/ns/default/dc/dc1/svc/jupyter-carol"
    body = {"Target": DEST, "ClientCertURI": uri, "ClientCertSerial": ""}
    decision = (await consul_client.request("POST", "/v1/agent/connect/authorize", body=body)).body
    assert decision["Authorized"] is False


async def test_l7_without_http_protocol_is_refused_and_changes_nothing(consul_client):
    await seed_foreign(consul_client)
    writer = IntentionWriter(consul_client, "hub-a")
    with pytest.raises(ConsulError, match=r"(?i)protocol"):
        await writer.grant(DEST, entry_for("jupyter-carol", mode=L7, trino_user="carol"))
    assert names(await consul_client.get_config(KIND, DEST)) == ["orchestrator"]


async def test_a_failed_write_fails_every_waiting_caller(fake_consul, consul_client):
    writer = IntentionWriter(consul_client, "hub-a")
    fake_consul.fail("GET", r"^/v1/config/service-intentions/", status=403, times=1)
    with pytest.raises(Exception, match="403"):
        await asyncio.gather(writer.grant(DEST, entry_for("jupyter-a")), writer.grant(DEST, entry_for("jupyter-b")))
    # The next change goes through: a failure does not wedge the queue.
    await writer.grant(DEST, entry_for("jupyter-c"))
    assert names(await consul_client.get_config(KIND, DEST)) == ["jupyter-c"]


async def test_16_concurrent_grants_one_too_long_only_that_one_fails(consul_client):
    """The incident: one Description over 512 bytes failed most of a coalesced batch. The writer
    refuses it before it joins a batch, whatever the agent would have said."""
    await seed_foreign(consul_client)
    writer = IntentionWriter(consul_client, "hub-a")
    entries = [entry_for(f"jupyter-u{i}") for i in range(16)]
    marker = ownership.parse(entries[9]["Description"]).marker()
    entries[9]["Description"] = "界" * 200 + " " + marker  # 200 characters, 600 bytes of sentence
    results = await asyncio.gather(*(writer.grant(DEST, e) for e in entries), return_exceptions=True)
    failed = [i for i, r in enumerate(results) if isinstance(r, BaseException)]
    assert failed == [9]
    assert isinstance(results[9], IntentionRefused) and "512" in str(results[9])
    assert names(await consul_client.get_config(KIND, DEST)) == sorted(
        ["orchestrator", *(f"jupyter-u{i}" for i in range(16) if i != 9)]
    )


async def test_a_change_the_agent_refuses_fails_alone_in_its_batch(consul_client):
    """L7 needs an http destination; on a tcp one the agent refuses the whole entry. Batched with
    L4 grants, only the L7 caller fails: the writer splits the refused batch."""
    await seed_foreign(consul_client)
    writer = IntentionWriter(consul_client, "hub-a")
    grants = [entry_for(f"jupyter-u{i}") for i in range(7)]
    grants.insert(3, entry_for("jupyter-carol", mode=L7, trino_user="carol"))
    results = await asyncio.gather(*(writer.grant(DEST, e) for e in grants), return_exceptions=True)
    failed = {e["Name"]: r for e, r in zip(grants, results, strict=True) if isinstance(r, BaseException)}
    assert list(failed) == ["jupyter-carol"]
    assert isinstance(failed["jupyter-carol"], ConsulError)
    assert names(await consul_client.get_config(KIND, DEST)) == sorted(
        ["orchestrator", *(f"jupyter-u{i}" for i in range(7))]
    )


async def test_revoke_by_incarnation_spares_a_newer_start(consul_client):
    writer = IntentionWriter(consul_client, "hub-a")
    old, new = "a" * 32, "b" * 32
    owner = ownership.Owner(hub="hub-a", user="alice", server="", service="jupyter-alice", incarnation=new)
    await writer.grant(DEST, source_entry("jupyter-alice", owner.with_expiry(10**10)))
    await writer.revoke(DEST, "jupyter-alice", incarnation=old)
    assert names(await consul_client.get_config(KIND, DEST)) == ["jupyter-alice"]
    await writer.revoke(DEST, "jupyter-alice", incarnation=new)
    assert await consul_client.get_config(KIND, DEST) is None


def _incarnation_of(source):
    owner = ownership.parse(source.get("Description"))
    return owner.incarnation if owner else None


async def test_a_late_revoke_in_the_same_batch_spares_the_next_servers_grant(consul_client):
    """Issue 17 item 2: [grant for the new start, revoke only-if the old start] in one batch.

    Applied in order, the revoke sees the new start's source and leaves it; its caller learns
    that it removed nothing, and the new start's grant really holds."""
    writer = IntentionWriter(consul_client, "hub-a")
    old, new = "a" * 32, "b" * 32

    def alice(incarnation):
        owner = ownership.Owner(hub="hub-a", user="alice", server="", service="jupyter-alice", incarnation=incarnation)
        return source_entry("jupyter-alice", owner.with_expiry(10**10))

    def still_old(source):
        return _incarnation_of(source) == old

    await writer.grant(DEST, alice(old))
    writes = writer.writes
    granted, revoked = await asyncio.gather(
        writer.grant(DEST, alice(new)), writer.revoke(DEST, "jupyter-alice", only_if=still_old)
    )
    assert writer.writes == writes + 1  # one batch, one CAS write
    entry = await consul_client.get_config(KIND, DEST)
    assert [(s["Name"], _incarnation_of(s)) for s in entry["Sources"]] == [("jupyter-alice", new)]
    assert granted is None
    assert revoked is False  # the revoke's own caller hears that the source was not its to remove


async def test_changes_in_one_batch_apply_in_submission_order(consul_client):
    writer = IntentionWriter(consul_client, "hub-a")
    # revoke then grant: the grant lands; grant then revoke: nothing is left; both in one write each.
    results = await asyncio.gather(writer.revoke(DEST, "jupyter-a"), writer.grant(DEST, entry_for("jupyter-a")))
    assert results == [True, None]
    assert names(await consul_client.get_config(KIND, DEST)) == ["jupyter-a"]
    results = await asyncio.gather(writer.grant(DEST, entry_for("jupyter-b")), writer.revoke(DEST, "jupyter-b"))
    assert results == [None, True]
    assert names(await consul_client.get_config(KIND, DEST)) == ["jupyter-a"]
