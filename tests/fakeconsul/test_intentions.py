"""The intentions API and its consistency with service-intentions config entries."""

import consul
import pytest


async def test_exact_put_creates_entry_and_reads_back(fake, client):
    assert await client.connect.intentions.upsert("web", "db", action="allow", description="why") is True
    entry = await client.config.get("service-intentions", "db")
    assert entry["Sources"] == [
        {"Name": "web", "Action": "allow", "Type": "consul", "Description": "why", "Precedence": 9}
    ]
    ixn = await client.connect.intentions.read("web", "db")
    assert ixn["SourceName"] == "web" and ixn["DestinationName"] == "db"
    assert ixn["SourceNS"] == ixn["DestinationNS"] == "default"
    assert (ixn["Action"], ixn["Description"], ixn["Precedence"], ixn["SourceType"]) == ("allow", "why", 9, "consul")
    assert ixn["ModifyIndex"] == entry["ModifyIndex"]


async def test_exact_put_upserts_into_existing_entry(fake, client):
    await client.config.set(
        "service-intentions", "db", {"Meta": {"k": "v"}, "Sources": [{"Name": "*", "Action": "deny"}]}
    )
    await client.connect.intentions.upsert("web", "db", action="allow")
    await client.connect.intentions.upsert("web", "db", action="deny")  # replaces, no duplicate
    entry = await client.config.get("service-intentions", "db")
    assert [(s["Name"], s["Action"]) for s in entry["Sources"]] == [("web", "deny"), ("*", "deny")]
    assert entry["Meta"] == {"k": "v"}  # the entry's Meta survives


async def test_exact_put_cannot_store_meta(fake, raw):
    status, _, text = await raw(
        fake,
        "PUT",
        "/v1/connect/intentions/exact",
        params={"source": "web", "destination": "db"},
        json={"Action": "allow", "Meta": {"a": "b"}},
    )
    assert (status, text) == (500, "Meta must not be specified")


async def test_exact_delete_removes_source_then_entry(fake, client):
    await client.connect.intentions.upsert("web", "db", action="allow")
    await client.connect.intentions.upsert("api", "db", action="allow")
    assert await client.connect.intentions.delete("web", "db") is True
    assert [s["Name"] for s in (await client.config.get("service-intentions", "db"))["Sources"]] == ["api"]
    assert await client.connect.intentions.delete("api", "db") is True
    assert await client.config.get("service-intentions", "db") is None
    # Deleting by name is idempotent.
    assert await client.connect.intentions.delete("api", "db") is True


async def test_exact_get_missing_is_404(fake, raw):
    status, _, text = await raw(fake, "GET", "/v1/connect/intentions/exact", params={"source": "a", "destination": "b"})
    assert (status, text) == (404, "Intention not found")


async def test_exact_requires_source_and_destination(fake, raw):
    status, _, text = await raw(fake, "PUT", "/v1/connect/intentions/exact", params={"source": "a"}, json={})
    assert (status, text) == (500, "required query parameter 'destination' not set")


async def test_match_by_destination_orders_exact_before_wildcard(fake, client):
    await client.connect.intentions.upsert("*", "db", action="deny")
    await client.connect.intentions.upsert("web", "db", action="allow")
    await client.connect.intentions.upsert("web", "*", action="deny")
    await client.connect.intentions.upsert("web", "other", action="allow")
    matches = await client.connect.intentions.match("destination", "db")
    got = [(i["SourceName"], i["DestinationName"], i["Precedence"]) for i in matches["db"]]
    assert got == [("web", "db", 9), ("*", "db", 8), ("web", "*", 6)]
    by_source = await client.connect.intentions.match("source", "web")
    assert {(i["SourceName"], i["DestinationName"]) for i in by_source["web"]} == {
        ("web", "db"),
        ("web", "*"),
        ("web", "other"),
        ("*", "db"),
    }


async def test_check_uses_precedence_and_default(fake, client):
    await client.connect.intentions.upsert("*", "db", action="deny")
    await client.connect.intentions.upsert("web", "db", action="allow")
    assert await client.connect.intentions.check("web", "db") is True  # exact beats *
    assert await client.connect.intentions.check("api", "db") is False  # falls to * deny
    assert await client.connect.intentions.check("api", "cache") is True  # no match: ACLs off -> allow


async def test_l7_source_counts_as_deny_for_check(fake, client):
    await client.config.set("service-defaults", "db", {"Protocol": "http"})
    await client.connect.intentions.upsert("web", "db", permissions=[{"Action": "allow", "HTTP": {"PathPrefix": "/"}}])
    assert await client.connect.intentions.check("web", "db") is False
    ixn = await client.connect.intentions.read("web", "db")
    assert "Action" not in ixn and ixn["Permissions"][0]["HTTP"] == {"PathPrefix": "/"}


async def test_list_reflects_config_entries(fake, client):
    await client.config.set(
        "service-intentions", "db", {"Sources": [{"Name": "web", "Action": "allow"}, {"Name": "*", "Action": "deny"}]}
    )
    await client.connect.intentions.upsert("web", "cache", action="allow")
    listed = await client.connect.intentions.list()
    assert [(i["SourceName"], i["DestinationName"]) for i in listed] == [("web", "cache"), ("web", "db"), ("*", "db")]


async def test_exact_put_validation_goes_through_config_entry_rules(fake, raw):
    status, _, text = await raw(
        fake, "PUT", "/v1/connect/intentions/exact", params={"source": "web", "destination": "db"}, json={}
    )
    assert (status, text) == (500, "Sources[0].Action must be set to 'allow' or 'deny'")
    status, _, text = await raw(
        fake,
        "PUT",
        "/v1/connect/intentions/exact",
        params={"source": "web", "destination": "db"},
        json={"Permissions": [{"Action": "allow", "HTTP": {"PathPrefix": "/"}}]},
    )
    assert status == 500 and "incompatible with L7 intentions permissions" in text


async def test_intention_writes_need_intentions_write(acl_fake, admin, make_client):
    token = await admin.acl.token.create(service_identities=[{"ServiceName": "db"}])
    svc = make_client(acl_fake, token["SecretID"])
    with pytest.raises(consul.ACLPermissionDenied, match="Permission denied"):
        await svc.connect.intentions.upsert("web", "db", action="allow")
    assert await admin.connect.intentions.upsert("web", "db", action="allow") is True
    # service identities grant intentions:read, so reading works.
    assert (await svc.connect.intentions.read("web", "db"))["Action"] == "allow"
