"""The intention writer against an in-memory stub of the four Consul calls it makes.

The stub refuses what the test tells it to, so these tests show the writer's own checks and its
isolation of a refused change without depending on how strict any fake or real agent is.
"""

import asyncio
import copy

import pytest

from consulspawner import ownership
from consulspawner.consul import ConsulError
from consulspawner.entries import (
    DESCRIPTION_MAX_BYTES,
    KIND,
    L7,
    IntentionRefused,
    TrinoUserTaken,
    source_entry,
    validate_source,
)
from consulspawner.intentions import IntentionWriter

DEST = "trino-coordinator"
INCARNATION = "0123456789abcdef0123456789abcdef"


class StubConsul:
    """get/set/delete of config entries with Consul's CAS answers; ``refuse(entry)`` may return
    a ConsulError to raise for a write, as Consul refuses an entry that fails validation."""

    def __init__(self, refuse=None):
        self.entries: dict[str, dict] = {}
        self.index = 100
        self.calls: list[tuple] = []
        self.refuse = refuse or (lambda entry: None)

    async def retrying(self, what, **_):
        return await what()

    async def get_config(self, kind, name):
        assert kind == KIND
        self.calls.append(("get", name))
        await asyncio.sleep(0)
        entry = self.entries.get(name)
        return copy.deepcopy(entry) if entry else None

    def _cas_ok(self, name, cas):
        current = self.entries.get(name)
        if cas is None:
            return True
        if cas == 0:
            return current is None
        return current is not None and current["ModifyIndex"] == cas

    async def set_config(self, entry, *, cas=None):
        self.calls.append(("set", entry["Name"], cas))
        await asyncio.sleep(0)
        error = self.refuse(entry)
        if error is not None:
            raise error
        if not self._cas_ok(entry["Name"], cas):
            return False
        self.index += 1
        stored = copy.deepcopy(entry)
        stored["ModifyIndex"] = self.index
        stored.setdefault("CreateIndex", self.index)
        self.entries[entry["Name"]] = stored
        return True

    async def delete_config(self, kind, name, *, cas=None):
        self.calls.append(("delete", name, cas))
        await asyncio.sleep(0)
        if not self._cas_ok(name, cas):
            return False
        self.index += 1
        return self.entries.pop(name, None) is not None

    def sources(self, name=DEST):
        return sorted(s["Name"] for s in (self.entries.get(name) or {}).get("Sources", []))

    def writes(self):
        return [c for c in self.calls if c[0] in ("set", "delete")]


def owner(service, incarnation=INCARNATION, hub="hub-a", user=None):
    return ownership.Owner(
        hub=hub,
        user=user or service.removeprefix("jupyter-"),
        server="",
        service=service,
        incarnation=incarnation,
        expires_at=2_000_000_000,
    )


def entry_for(service, **kw):
    return source_entry(service, owner(service, **kw))


def refuse_source(bad_name, status=500):
    def refuse(entry):
        for i, source in enumerate(entry["Sources"]):
            if source["Name"] == bad_name:
                return ConsulError("PUT /v1/config", status, f"Sources[{i}].Description exceeds maximum length 512")
        return None

    return refuse


# -- validation before a change joins a batch -----------------------------------------------------


def _long_description(service, size):
    marker = owner(service).marker()
    return "é" * ((size - len(marker.encode()) - 1) // 2) + " " + marker


def bad_entries():
    ok = entry_for("jupyter-ok")
    l7 = source_entry("jupyter-ok", owner("jupyter-ok"), L7, "ok")
    header = l7["Permissions"][0]["HTTP"]["Header"][0]
    return {
        # 300 characters, but 600+ bytes: Consul counts bytes.
        "description-bytes": {**ok, "Description": _long_description("jupyter-ok", 520)},
        "no-marker": {**ok, "Description": "hand-written"},
        "uppercase-name": {**ok, "Name": "Jupyter-OK"},
        "wildcard-name": {**ok, "Name": "*"},
        "partial-wildcard": {**ok, "Name": "jupyter-*"},
        "empty-name": {**ok, "Name": ""},
        "long-name": {**ok, "Name": "a" * 257},
        "bad-action": {**ok, "Action": "maybe"},
        "no-action": {k: v for k, v in ok.items() if k != "Action"},
        "action-and-permissions": {**l7, "Action": "allow"},
        "empty-permissions": {**{k: v for k, v in ok.items() if k != "Action"}, "Permissions": []},
        "permission-action": {**l7, "Permissions": [{"Action": "permit", "HTTP": {"PathPrefix": "/"}}]},
        "permission-no-http": {**l7, "Permissions": [{"Action": "allow"}]},
        "permission-empty-http": {**l7, "Permissions": [{"Action": "allow", "HTTP": {}}]},
        "two-paths": {**l7, "Permissions": [{"Action": "deny", "HTTP": {"PathPrefix": "/", "PathExact": "/x"}}]},
        "relative-path": {**l7, "Permissions": [{"Action": "deny", "HTTP": {"PathPrefix": "v1"}}]},
        "header-two-matchers": {
            **l7,
            "Permissions": [{"Action": "allow", "HTTP": {"Header": [{**header, "Prefix": "o"}]}}],
        },
        "header-no-name": {**l7, "Permissions": [{"Action": "allow", "HTTP": {"Header": [{"Exact": "ok"}]}}]},
        "bad-method": {**l7, "Permissions": [{"Action": "allow", "HTTP": {"Methods": ["FETCH"]}}]},
        "twice-method": {**l7, "Permissions": [{"Action": "allow", "HTTP": {"Methods": ["GET", "get"]}}]},
    }


@pytest.mark.parametrize("case", sorted(bad_entries()))
async def test_invalid_sources_are_refused_before_any_consul_call(case):
    consul = StubConsul()
    writer = IntentionWriter(consul, "hub-a")
    entry = bad_entries()[case]
    with pytest.raises(IntentionRefused) as refused:
        await writer.grant(DEST, entry)
    assert isinstance(refused.value, ValueError)
    assert repr(entry["Name"]) in str(refused.value)
    assert consul.calls == []


def test_the_byte_limit_is_consuls_and_counts_bytes():
    entry = entry_for("jupyter-ok")
    marker = owner("jupyter-ok").marker()
    entry["Description"] = "x" * (DESCRIPTION_MAX_BYTES - len(marker.encode()) - 1) + " " + marker
    assert len(entry["Description"].encode()) == DESCRIPTION_MAX_BYTES == 512
    validate_source(entry)  # exactly the limit is fine
    entry["Description"] = "é" + entry["Description"][1:]  # same characters, one byte more
    with pytest.raises(IntentionRefused, match=r"513 bytes.*512"):
        validate_source(entry)


def test_valid_l4_and_l7_sources_pass():
    validate_source(entry_for("jupyter-ok"))
    validate_source(source_entry("jupyter-ok", owner("jupyter-ok"), L7, "ok"))
    validate_source(source_entry("jupyter-ok", owner("jupyter-" + "x" * 44 + "--0123456789", user="界" * 255)))


async def test_16_concurrent_grants_one_invalid_fails_alone():
    consul = StubConsul()
    writer = IntentionWriter(consul, "hub-a")
    entries = [entry_for(f"jupyter-u{i}") for i in range(16)]
    entries[5]["Description"] = _long_description("jupyter-u5", 700)
    results = await asyncio.gather(*(writer.grant(DEST, e) for e in entries), return_exceptions=True)
    failed = [i for i, r in enumerate(results) if isinstance(r, BaseException)]
    assert failed == [5]
    assert isinstance(results[5], IntentionRefused)
    assert consul.sources() == sorted(f"jupyter-u{i}" for i in range(16) if i != 5)


# -- a batch Consul refuses is split until only the offending change fails --------------------------


@pytest.mark.parametrize("status", [400, 500])
async def test_a_refused_batch_is_bisected_and_only_the_bad_change_fails(status):
    consul = StubConsul(refuse=refuse_source("jupyter-u11", status))
    writer = IntentionWriter(consul, "hub-a")
    results = await asyncio.gather(
        *(writer.grant(DEST, entry_for(f"jupyter-u{i}")) for i in range(16)), return_exceptions=True
    )
    failed = {i: r for i, r in enumerate(results) if isinstance(r, BaseException)}
    assert list(failed) == [11]
    assert isinstance(failed[11], ConsulError) and failed[11].status == status
    assert consul.sources() == sorted(f"jupyter-u{i}" for i in range(16) if i != 11)
    # One bad change among 16 costs about 2*log2(16) extra writes, not 16.
    assert len(consul.writes()) <= 12, consul.writes()


async def test_two_bad_changes_fail_and_fourteen_land():
    bad = {"jupyter-u2", "jupyter-u13"}
    consul = StubConsul(
        refuse=lambda e: next(
            (ConsulError("PUT /v1/config", 500, "bad") for s in e["Sources"] if s["Name"] in bad), None
        )
    )
    writer = IntentionWriter(consul, "hub-a")
    results = await asyncio.gather(
        *(writer.grant(DEST, entry_for(f"jupyter-u{i}")) for i in range(16)), return_exceptions=True
    )
    assert [i for i, r in enumerate(results) if isinstance(r, BaseException)] == [2, 13]
    assert len(consul.sources()) == 14


@pytest.mark.parametrize("status", [403, 429, 503, None])
async def test_refusals_that_concern_every_change_are_not_split(status):
    consul = StubConsul(refuse=lambda e: ConsulError("PUT /v1/config", status, "no"))
    writer = IntentionWriter(consul, "hub-a")
    results = await asyncio.gather(
        *(writer.grant(DEST, entry_for(f"jupyter-u{i}")) for i in range(8)), return_exceptions=True
    )
    assert all(isinstance(r, ConsulError) for r in results)
    assert len(consul.writes()) == 1


async def test_a_cas_conflict_still_rereads_and_retries():
    consul = StubConsul()
    writer = IntentionWriter(consul, "hub-a")
    await writer.grant(DEST, entry_for("jupyter-a"))
    real_get = consul.get_config

    async def get_then_someone_else_writes(kind, name):
        entry = await real_get(kind, name)
        consul.get_config = real_get
        consul.entries[DEST]["ModifyIndex"] += 1  # another writer got in between
        return entry

    consul.get_config = get_then_someone_else_writes
    await writer.grant(DEST, entry_for("jupyter-b"))
    assert writer.conflicts == 1
    assert consul.sources() == ["jupyter-a", "jupyter-b"]


# -- what the writer knows from its own last call -----------------------------------------------


async def test_after_deleting_the_entry_the_next_grant_creates_without_reading():
    consul = StubConsul()
    writer = IntentionWriter(consul, "hub-a")
    await writer.grant(DEST, entry_for("jupyter-a"))
    await writer.revoke(DEST, "jupyter-a")
    assert DEST not in consul.entries
    consul.calls.clear()
    await writer.grant(DEST, entry_for("jupyter-b"))
    assert consul.calls == [("set", DEST, 0)]


async def test_a_stale_view_costs_a_conflict_then_a_read_never_a_lost_source():
    consul = StubConsul()
    writer = IntentionWriter(consul, "hub-a")
    await writer.grant(DEST, entry_for("jupyter-a"))
    await writer.revoke(DEST, "jupyter-a")
    # Someone else creates the entry behind the writer's back.
    other = IntentionWriter(consul, "hub-b")
    await other.grant(DEST, entry_for("jupyter-x", hub="hub-b"))
    await writer.grant(DEST, entry_for("jupyter-b"))
    assert consul.sources() == ["jupyter-b", "jupyter-x"]
    assert writer.conflicts == 1


async def test_a_no_op_against_a_remembered_view_is_confirmed_by_a_read():
    consul = StubConsul()
    writer = IntentionWriter(consul, "hub-a")
    await writer.grant(DEST, entry_for("jupyter-a"))
    await writer.revoke(DEST, "jupyter-a")
    # Another process of this hub (say, a restarted hub) grants it again.
    await IntentionWriter(consul, "hub-a").grant(DEST, entry_for("jupyter-a"))
    await writer.revoke(DEST, "jupyter-a")
    assert consul.sources() == []


# -- conditional revokes ---------------------------------------------------------------------------


async def test_revoke_by_incarnation_only_removes_that_start():
    consul = StubConsul()
    writer = IntentionWriter(consul, "hub-a")
    newer = "f" * 32
    await writer.grant(DEST, entry_for("jupyter-a", incarnation=newer))
    await writer.revoke(DEST, "jupyter-a", incarnation=INCARNATION)  # a late teardown of an old start
    assert consul.sources() == ["jupyter-a"]
    await writer.revoke(DEST, "jupyter-a", incarnation=newer)
    assert consul.sources() == []


async def test_revoke_by_incarnation_and_only_if_must_both_hold():
    consul = StubConsul()
    writer = IntentionWriter(consul, "hub-a")
    await writer.grant(DEST, entry_for("jupyter-a"))
    await writer.revoke(DEST, "jupyter-a", only_if=lambda s: False, incarnation=INCARNATION)
    assert consul.sources() == ["jupyter-a"]
    await writer.revoke(DEST, "jupyter-a", only_if=lambda s: True, incarnation=INCARNATION)
    assert consul.sources() == []


async def test_an_empty_incarnation_matches_nothing():
    consul = StubConsul()
    writer = IntentionWriter(consul, "hub-a")
    await writer.grant(DEST, entry_for("jupyter-a", incarnation=""))
    with pytest.raises(ValueError, match="incarnation"):
        await writer.revoke(DEST, "jupyter-a", incarnation="")
    assert consul.sources() == ["jupyter-a"]


async def test_in_one_batch_a_conditional_revoke_sees_the_grant_before_it():
    consul = StubConsul()
    writer = IntentionWriter(consul, "hub-a")
    newer = "f" * 32
    await writer.grant(DEST, entry_for("jupyter-a"))
    consul.calls.clear()
    results = await asyncio.gather(
        writer.grant(DEST, entry_for("jupyter-a", incarnation=newer)),
        writer.revoke(DEST, "jupyter-a", incarnation=INCARNATION),  # the old start's late teardown
    )
    assert results == [None, False]
    assert consul.sources() == ["jupyter-a"]
    assert ownership.parse(consul.entries[DEST]["Sources"][0]["Description"]).incarnation == newer
    assert len(consul.writes()) == 1


async def test_a_broken_condition_fails_only_its_own_revoke():
    consul = StubConsul()
    writer = IntentionWriter(consul, "hub-a")
    await asyncio.gather(writer.grant(DEST, entry_for("jupyter-a")), writer.grant(DEST, entry_for("jupyter-b")))

    def broken(source):
        raise RuntimeError("condition failed")

    results = await asyncio.gather(
        writer.revoke(DEST, "jupyter-a", only_if=broken), writer.revoke(DEST, "jupyter-b"), return_exceptions=True
    )
    assert isinstance(results[0], RuntimeError) and results[1] is True
    assert consul.sources() == ["jupyter-a"]


# -- one Trino user, one hub user: checked in the CAS cycle that writes the grant ------------------


def l7_entry(service, trino_user, user, expires_at=2_000_000_000, hub="hub-a"):
    marker = ownership.Owner(
        hub=hub, user=user, server="", service=service, incarnation=INCARNATION, expires_at=expires_at
    )
    return source_entry(service, marker, L7, trino_user)


async def test_two_hub_users_granted_one_trino_user_in_one_batch_the_second_is_refused():
    """Two spawns that passed the up-front holder check side by side (neither had granted yet):
    the write itself, seeing the first grant, refuses the second."""
    consul = StubConsul()
    writer = IntentionWriter(consul, "hub-a")
    results = await asyncio.gather(
        writer.grant(DEST, l7_entry("jupyter-alice", "analyst", "alice")),
        writer.grant(DEST, l7_entry("jupyter-bob", "analyst", "bob")),
        return_exceptions=True,
    )
    assert results[0] is None
    assert isinstance(results[1], TrinoUserTaken) and "'alice'" in str(results[1])
    assert consul.sources() == ["jupyter-alice"]


async def test_a_trino_user_held_in_consul_is_refused_at_the_write_unless_its_holder_expired():
    consul = StubConsul()
    other_hub = IntentionWriter(consul, "hub-b")
    await other_hub.grant(DEST, l7_entry("jupyter-carol", "analyst", "carol", hub="hub-b"))
    await other_hub.grant(DEST, l7_entry("jupyter-dave", "reporter", "dave", expires_at=1, hub="hub-b"))
    writer = IntentionWriter(consul, "hub-a")
    with pytest.raises(TrinoUserTaken, match="'carol'"):
        await writer.grant(DEST, l7_entry("jupyter-bob", "analyst", "bob"))
    await writer.grant(DEST, l7_entry("jupyter-erin", "reporter", "erin"))  # dave's grant has expired
    # The same hub user's own earlier grant (a restart of their server) is no conflict.
    await writer.grant(DEST, l7_entry("jupyter-erin", "reporter", "erin"))
    assert consul.sources() == ["jupyter-carol", "jupyter-dave", "jupyter-erin"]


async def test_a_view_read_just_before_is_written_against_without_a_second_read():
    """The spawn's up-front holder check reads the entry; the grant moments later CAS-writes
    against that view instead of reading again (a stale view costs a conflict, as any)."""
    consul = StubConsul()
    await IntentionWriter(consul, "hub-b").grant(DEST, entry_for("jupyter-x", hub="hub-b"))
    writer = IntentionWriter(consul, "hub-a")
    writer.remember(DEST, await consul.get_config(KIND, DEST))
    consul.calls.clear()
    await writer.grant(DEST, entry_for("jupyter-a"))
    assert [c[0] for c in consul.calls] == ["set"]
    assert consul.sources() == ["jupyter-a", "jupyter-x"]
    # Used once: the next write reads (the writer cannot know the index its own write made).
    consul.calls.clear()
    await writer.grant(DEST, entry_for("jupyter-b"))
    assert [c[0] for c in consul.calls] == ["get", "set"]


async def test_a_remembered_view_that_went_stale_costs_a_conflict_never_a_lost_source():
    consul = StubConsul()
    writer = IntentionWriter(consul, "hub-a")
    writer.remember(DEST, await consul.get_config(KIND, DEST))  # absent
    await IntentionWriter(consul, "hub-b").grant(DEST, entry_for("jupyter-x", hub="hub-b"))
    await writer.grant(DEST, entry_for("jupyter-a"))
    assert consul.sources() == ["jupyter-a", "jupyter-x"] and writer.conflicts == 1
