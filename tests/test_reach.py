"""consulspawner-reach against the fake agent: rows after grants, a revoke and an expiry, as a
table and as JSON, with a token that may only read; and the token never printed."""

import json
import subprocess
import sys
import time

import pytest

from consulspawner import ownership, reach
from consulspawner.consul import ConsulClient
from consulspawner.entries import KIND, L4, L7, source_entry
from consulspawner.intentions import IntentionWriter
from consulspawner.janitor import Janitor

from .conftest import MASTER_TOKEN

HUB = "main"
TRINO = "trino-coordinator"
# Only what the command needs: a service read rule implies intentions read (acl/policy_authorizer.go).
READ_RULES = 'service_prefix "" { policy = "read" }\n'


def owner(user: str, *, since: int, expires_at: int) -> ownership.Owner:
    return ownership.Owner(
        hub=HUB,
        user=user,
        server="",
        service=f"jupyter-{user}",
        incarnation=f"{user}-incarnation",
        since=since,
        expires_at=expires_at,
    )


async def read_only_token(admin: ConsulClient) -> str:
    policy = (await admin.request("PUT", "/v1/acl/policy", body={"Name": "reach-read", "Rules": READ_RULES})).body
    token = (await admin.request("PUT", "/v1/acl/token", body={"Policies": [{"ID": policy["ID"]}]})).body
    return token["SecretID"]


@pytest.fixture
async def granted(acl_consul, acl_client):
    """alice (L7, active), bob (L4, revoked), carol (expired), dave (service never registered)
    and an operator's own allow (foreign) on trino-coordinator."""
    now = int(time.time())
    writer = IntentionWriter(acl_client, HUB)
    people = {
        "alice": owner("alice", since=now - 600, expires_at=now + 3600),
        "bob": owner("bob", since=now - 300, expires_at=now + 3600),
        "carol": owner("carol", since=now - 7200, expires_at=now - 60),
        "dave": owner("dave", since=now - 30, expires_at=now + 3600),
    }
    for user in ("alice", "bob", "carol"):
        await acl_client.register_service({"ID": f"jupyter-{user}", "Name": f"jupyter-{user}", "Port": 8888})
    # L7 permissions need the destination to speak http (config_entry_intentions.go).
    assert await acl_client.set_config({"Kind": "service-defaults", "Name": TRINO, "Protocol": "http"})
    await writer.grant(TRINO, source_entry("jupyter-alice", people["alice"], L7, trino_user="alice"))
    for user in ("bob", "carol", "dave"):
        await writer.grant(TRINO, source_entry(f"jupyter-{user}", people[user], L4))
    entry = await acl_client.get_config(KIND, TRINO)
    entry["Sources"].append({"Name": "etl-batch", "Action": "allow", "Description": "operator's own"})
    entry["Sources"].append({"Name": "jupyter-mallory", "Action": "deny"})
    assert await acl_client.set_config(
        {k: v for k, v in entry.items() if k not in ("CreateIndex", "ModifyIndex", "Hash")},
        cas=entry["ModifyIndex"],
    )
    await writer.revoke(TRINO, "jupyter-bob", incarnation="bob-incarnation")
    return {"now": now, "people": people, "token": await read_only_token(acl_client), "url": acl_consul.url}


def run_reach(url: str, *args: str, env_token: str | None = None) -> subprocess.CompletedProcess:
    import os

    env = dict(os.environ, CONSUL_HTTP_ADDR=url)
    env.pop("CONSUL_HTTP_TOKEN", None)
    if env_token:
        env["CONSUL_HTTP_TOKEN"] = env_token
    return subprocess.run(
        [sys.executable, "-m", "consulspawner.reach", *args], capture_output=True, text=True, env=env, timeout=60
    )


def iso(unix: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(unix))


async def test_rows_after_grants_a_revoke_and_an_expiry(granted):
    result = run_reach(granted["url"], "--json", env_token=granted["token"])
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["filtered_by_acls"] is False
    rows = {row["source"]: row for row in answer["rows"]}
    assert set(rows) == {"jupyter-alice", "jupyter-carol", "jupyter-dave", "etl-batch"}  # bob revoked, deny omitted
    people = granted["people"]
    alice = rows["jupyter-alice"]
    assert alice == {
        "destination": TRINO,
        "source": "jupyter-alice",
        "mode": "L7",
        "state": "active",
        "registered": True,
        "managed": True,
        "hub_instance": HUB,
        "hub_user": "alice",
        "server_name": "",
        "incarnation": "alice-incarnation",
        "trino_user": "alice",
        "since": iso(people["alice"].since),
        "until": iso(people["alice"].expires_at),
    }
    assert rows["jupyter-carol"]["state"] == "expired"
    assert rows["jupyter-carol"]["until"] == iso(people["carol"].expires_at)
    assert (rows["jupyter-carol"]["mode"], rows["jupyter-carol"]["trino_user"]) == ("L4", None)
    assert (rows["jupyter-dave"]["state"], rows["jupyter-dave"]["registered"]) == ("service-gone", False)
    assert rows["etl-batch"]["state"] == "foreign"
    assert rows["etl-batch"]["managed"] is False and rows["etl-batch"]["hub_user"] == ""
    assert granted["token"] not in result.stdout + result.stderr


async def test_table_and_filters(granted, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(granted["token"] + "\n")
    result = run_reach(granted["url"], "--token-file", str(token_file), "--hub-instance", HUB)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == list(reach.COLUMNS)
    by_source = {line.split()[1]: line.split() for line in lines[1:-1]}
    assert set(by_source) == {"jupyter-alice", "jupyter-carol", "jupyter-dave"}  # foreign left out
    people = granted["people"]
    assert by_source["jupyter-alice"] == [
        TRINO,
        "jupyter-alice",
        "alice",
        "-",
        "alice",
        iso(people["alice"].since),
        iso(people["alice"].expires_at),
        "active",
    ]
    assert by_source["jupyter-carol"][4] == "any"  # L4: the whole connection, as any Trino user
    assert by_source["jupyter-carol"][-1] == "expired"
    assert lines[-1].startswith("3 source(s) allowed at ")
    assert granted["token"] not in result.stdout + result.stderr

    only = run_reach(granted["url"], "--token-file", str(token_file), "--user", "dave", "--json")
    assert [row["source"] for row in json.loads(only.stdout)["rows"]] == ["jupyter-dave"]


async def test_after_the_janitor_removes_the_expired_grant(granted, acl_client):
    deleted = await Janitor(acl_client, hub_instance=HUB).run_pass()
    assert [d.target for d in deleted] == [f"jupyter-carol -> {TRINO}"]
    async with ConsulClient(granted["url"], granted["token"]) as consul:
        answer = await reach.survey(consul, hub_instance=HUB)
    assert [(r.source, r.state) for r in answer.rows] == [("jupyter-alice", "active"), ("jupyter-dave", "service-gone")]


async def test_a_token_that_cannot_read_is_an_error_naming_the_call(granted, acl_client):
    # A token with no policy: Consul filters the lists to nothing rather than refusing.
    nothing = (await acl_client.request("PUT", "/v1/acl/token", body={"Description": "no rights"})).body["SecretID"]
    result = run_reach(granted["url"], "--json", env_token=nothing)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["rows"] == []
    # An unknown token is refused outright: the error names the call, never the token.
    unknown = "0f0f0f0f-1111-4222-8333-444444444444"
    result = run_reach(granted["url"], env_token=unknown)
    assert result.returncode == 1
    assert "GET /v1/config/service-intentions" in result.stderr
    assert unknown not in result.stdout + result.stderr


def test_filtered_answers_are_flagged():
    class Response:
        def __init__(self, body, filtered):
            self.body = body
            self.headers = {reach.FILTERED_HEADER: "true"} if filtered else {}

    class Consul:
        async def request(self, method, path):
            return Response([] if "config" in path else {}, "config" in path)

    import asyncio

    answer = asyncio.run(reach.survey(Consul(), clock=lambda: 0))  # type: ignore[arg-type]
    assert answer.filtered
    assert json.loads(reach.as_json(answer))["filtered_by_acls"] is True


def test_marker_since_round_trips_and_old_markers_parse():
    marked = owner("erin", since=1_700_000_000, expires_at=1_700_003_600)
    assert ownership.parse(marked.describe()) == marked
    old = ownership.Owner(hub=HUB, user="erin", server="", service="jupyter-erin", expires_at=1, incarnation="x")
    assert ownership.parse(old.describe()).since is None
    assert '"since"' not in old.describe()
    forged = old.describe().replace('"expires_at":1', '"expires_at":1,"since":"yesterday"')
    assert ownership.parse(forged) is None
    assert MASTER_TOKEN  # the fixture's management token is only ever the admin's
