"""The audit trail and consulspawner-reach from the same run, against the fake agent with ACLs:
three servers go through the spawner's own mesh steps (mint, register, grant), one is extended,
one revoked and torn down, one left to expire. consulspawner-reach then answers from Consul
alone with the rows those steps imply (since = the first grant, until = the last expiry), and
the audit events of the run say the same, with no token in any of them."""

import json
import logging

import pytest

from consulspawner import audit, metrics, ownership
from consulspawner.config.settings import MeshSettings
from consulspawner.entries import L4
from consulspawner.identity import Signer
from consulspawner.intentions import IntentionWriter
from consulspawner.mesh import ServerMesh
from consulspawner.plan import build_plan
from consulspawner.state import MeshState, new_incarnation
from consulspawner.teardown import Step, undo
from consulspawner_dev.bootstrap import bootstrap_identity, write_signing_key

from .conftest import MASTER_TOKEN
from .test_reach import TRINO, iso, read_only_token, run_reach

HUB = "main"
TTL = 600


class Clock:
    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def audit_records(caplog):
    caplog.set_level(logging.INFO, logger="consulspawner.audit")
    return lambda: [r for r in caplog.records if r.name == "consulspawner.audit"]


async def start(client, writer, user: str, clock: Clock, address: str, login) -> tuple[ServerMesh, str]:
    """The spawner's Consul steps of a start, in its order (containers aside)."""
    settings = MeshSettings(hub_instance=HUB, intention_ttl=TTL, check_ttl=60, intention_mode=L4)
    plan = build_plan(settings, user, incarnation=new_incarnation())
    mesh = ServerMesh(client, writer, plan, MeshState(), clock=clock)
    signer, method = login
    secret = await mesh.login(signer, method, "consul", "jupyter-")
    audit.emit_for("token-login", plan.owner, trino_user=plan.trino_user)  # as spawner.start does
    await mesh.register(address)
    await mesh.grant()
    return mesh, secret


async def test_reach_rows_and_the_audit_events_of_grants_an_extension_a_revoke_and_an_expiry(
    acl_consul, acl_client, audit_records, tmp_path
):
    import time

    now = time.time()
    writer = IntentionWriter(acl_client, HUB)
    alice_clock, bob_clock, carol_clock = Clock(now - 120), Clock(now - 60), Clock(now - 2 * TTL)
    key_file = write_signing_key(tmp_path / "key.pem")
    login = (Signer.from_file(key_file), await bootstrap_identity(acl_client, hub_instance=HUB, key_file=key_file))
    alice, alice_secret = await start(acl_client, writer, "alice", alice_clock, "10.0.0.2", login)
    bob, bob_secret = await start(acl_client, writer, "bob", bob_clock, "10.0.0.3", login)
    carol, carol_secret = await start(acl_client, writer, "carol", carol_clock, "10.0.0.4", login)
    alice_since = alice.state.granted_since
    alice_clock.now = now  # the keeper extends alice's grant: since stays, expiry moves
    await alice.grant()
    assert alice.state.granted_since == alice_since
    bob_before = bob.state.copy()
    errors = await undo(bob, [Step.REVOKE, Step.DEREGISTER, Step.LOGOUT])
    assert errors == []
    # A late round of undoing (as after a failed start) finds bob's source gone: no second
    # revoke in the trail, nor in the revoke counter.
    revokes = metrics.REVOKES._value.get()
    late = ServerMesh(acl_client, writer, None, bob_before, retry_budget=0)
    assert await undo(late, [Step.REVOKE]) == []
    assert metrics.REVOKES._value.get() == revokes

    token = await read_only_token(acl_client)
    result = run_reach(acl_consul.url, "--json", "--hub-instance", HUB, env_token=token)
    assert result.returncode == 0, result.stderr
    rows = {row["source"]: row for row in json.loads(result.stdout)["rows"]}
    assert set(rows) == {"jupyter-alice", "jupyter-carol"}  # bob revoked
    assert rows["jupyter-alice"]["state"] == "active"
    assert rows["jupyter-alice"]["since"] == iso(int(alice_since))
    assert rows["jupyter-alice"]["until"] == iso(int(now + TTL))
    assert rows["jupyter-alice"]["incarnation"] == alice.state.incarnation
    assert rows["jupyter-carol"]["state"] == "expired"
    assert rows["jupyter-carol"]["since"] == iso(int(now - 2 * TTL))
    assert rows["jupyter-carol"]["until"] == iso(int(now - TTL))

    records = audit_records()
    events = [r.audit for r in records]
    kinds = [(e["event"], e["hub_user"]) for e in events]
    assert sorted(kinds) == sorted(
        [
            ("token-login", "alice"),
            ("token-login", "bob"),
            ("token-login", "carol"),
            ("grant", "alice"),
            ("grant", "bob"),
            ("grant", "carol"),
            ("extend", "alice"),
            ("revoke", "bob"),
            ("token-logout", "bob"),
        ]
    )
    for event in events:
        assert event["hub_instance"] == HUB and "withheld" not in event
        assert list(event)[: len(audit.FIELDS)] == list(audit.FIELDS)
    grants = {e["hub_user"]: e for e in events if e["event"] in ("grant", "extend")}
    assert grants["alice"]["event"] == "extend" and grants["alice"]["destination"] == TRINO
    assert grants["alice"]["expiry"] == audit._iso(int(now + TTL))
    revoke = next(e for e in events if e["event"] == "revoke")
    assert (revoke["service"], revoke["incarnation"], revoke["cause"]) == (
        "jupyter-bob",
        bob.state.incarnation,
        "server stopped",
    )
    # The marker in Consul and the audit trail agree on who and which start.
    entry = await acl_client.get_config("service-intentions", TRINO)
    markers = {ownership.parse(s["Description"]).user: ownership.parse(s["Description"]) for s in entry["Sources"]}
    assert markers["alice"].since == int(alice_since) and markers["alice"].incarnation == alice.state.incarnation

    # No token, in any form, in the trail or in what the command printed.
    secrets = [alice_secret, bob_secret, carol_secret, MASTER_TOKEN, token]
    accessors = [m.state.token_accessor for m in (alice, carol)]
    text = "\n".join(r.getMessage() for r in records) + result.stdout + result.stderr
    for secret in secrets + accessors:
        assert secret not in text
    assert not any(audit.looks_secret(r.getMessage()) for r in records)
