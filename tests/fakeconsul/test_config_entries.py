"""Config entries: CRUD, check-and-set, and Consul's validation of service-intentions."""

import asyncio
import json

import consul
import pytest


def _l7(header=None):
    return {"Action": "allow", "HTTP": {"Header": [header or {"Name": "X-User", "Exact": "alice"}]}}


async def test_set_get_list_delete(fake, client):
    assert await client.config.set("service-defaults", "web", {"Protocol": "HTTP"}) is True
    entry = await client.config.get("service-defaults", "web")
    assert entry["Kind"] == "service-defaults" and entry["Name"] == "web"
    assert entry["Protocol"] == "http"  # normalised to lower case like Consul
    assert entry["CreateIndex"] == entry["ModifyIndex"] > 0
    await client.config.set("service-defaults", "api", {"Protocol": "grpc"})
    names = [e["Name"] for e in await client.config.list("service-defaults")]
    assert names == ["api", "web"]
    assert await client.config.delete("service-defaults", "web") is True
    assert await client.config.get("service-defaults", "web") is None  # 404 -> None in py-consul


async def test_get_missing_is_404_with_consuls_text(fake, raw):
    status, _, text = await raw(fake, "GET", "/v1/config/service-intentions/nope")
    assert status == 404
    assert text == 'Config entry not found for "service-intentions" / "nope"'


async def test_update_keeps_create_index_and_bumps_modify_index(fake, client):
    await client.config.set("service-defaults", "web", {"Protocol": "tcp"})
    first = await client.config.get("service-defaults", "web")
    await client.config.set("service-defaults", "web", {"Protocol": "http"})
    second = await client.config.get("service-defaults", "web")
    assert second["CreateIndex"] == first["CreateIndex"]
    assert second["ModifyIndex"] > first["ModifyIndex"]
    # An identical write is a no-op (ConfigEntry.shouldSkipOperation): no new index.
    assert await client.config.set("service-defaults", "web", {"Protocol": "http"}) is True
    assert (await client.config.get("service-defaults", "web"))["ModifyIndex"] == second["ModifyIndex"]


async def test_cas_zero_is_create_only(fake, client):
    assert await client.config.set("service-defaults", "web", {"Protocol": "tcp"}, cas=0) is True
    assert await client.config.set("service-defaults", "web", {"Protocol": "http"}, cas=0) is False
    assert (await client.config.get("service-defaults", "web"))["Protocol"] == "tcp"


async def test_cas_with_modify_index(fake, client):
    await client.config.set("service-defaults", "web", {"Protocol": "tcp"})
    idx = (await client.config.get("service-defaults", "web"))["ModifyIndex"]
    assert await client.config.set("service-defaults", "web", {"Protocol": "http"}, cas=idx + 100) is False
    assert await client.config.set("service-defaults", "web", {"Protocol": "http"}, cas=idx) is True
    assert await client.config.set("service-defaults", "web", {"Protocol": "grpc"}, cas=idx) is False  # stale now
    assert (await client.config.get("service-defaults", "web"))["Protocol"] == "http"
    # CAS on an entry that does not exist (non-zero index) fails.
    assert await client.config.set("service-defaults", "nope", {"Protocol": "http"}, cas=5) is False


async def test_delete_with_and_without_cas(fake, client, raw):
    await client.config.set("service-defaults", "web", {"Protocol": "tcp"})
    idx = (await client.config.get("service-defaults", "web"))["ModifyIndex"]
    assert await client.config.delete("service-defaults", "web", cas=idx + 1) is False
    assert await client.config.get("service-defaults", "web") is not None
    assert await client.config.delete("service-defaults", "web", cas=idx) is True
    assert await client.config.get("service-defaults", "web") is None
    # Without cas the HTTP answer is an empty object (config_endpoint.go configDelete).
    await client.config.set("service-defaults", "web", {"Protocol": "tcp"})
    status, _, text = await raw(fake, "DELETE", "/v1/config/service-defaults/web")
    assert (status, json.loads(text)) == (200, {})
    status, _, text = await raw(fake, "DELETE", "/v1/config/service-defaults/web", params={"cas": "1"})
    assert (status, json.loads(text)) == (200, True)  # deleting nothing is a successful no-op


async def test_service_intentions_sources_keep_fields_and_get_consul_additions(fake, client):
    entry = {
        "Meta": {"managed-by": "consulspawner"},
        "Sources": [
            {"Name": "*", "Action": "deny", "Description": "default deny"},
            {"Name": "hub", "Action": "allow", "Description": "owner: alice / ünïcode ✓"},
        ],
    }
    assert await client.config.set("service-intentions", "web", entry) is True
    got = await client.config.get("service-intentions", "web")
    assert got["Meta"] == {"managed-by": "consulspawner"}
    # Sorted by precedence: the exact source first.
    assert [s["Name"] for s in got["Sources"]] == ["hub", "*"]
    hub, star = got["Sources"]
    assert hub == {
        "Name": "hub",
        "Action": "allow",
        "Description": "owner: alice / ünïcode ✓",
        "Type": "consul",
        "Precedence": 9,
    }
    assert star["Precedence"] == 8 and star["Type"] == "consul"
    assert "LegacyID" not in hub


async def test_action_and_permissions_together_rejected(fake, client, raw):
    await client.config.set("service-defaults", "web", {"Protocol": "http"})
    entry = {
        "Kind": "service-intentions",
        "Name": "web",
        "Sources": [{"Name": "a", "Action": "allow", "Permissions": [_l7()]}],
    }
    status, _, text = await raw(fake, "PUT", "/v1/config", json=entry)
    assert (status, text) == (500, "Sources[0].Action must be omitted if Permissions are specified")
    with pytest.raises(consul.ConsulException):
        await client.config.set("service-intentions", "web", {"Sources": [{"Name": "a"}]})


async def test_duplicate_sources_rejected(fake, raw):
    entry = {
        "Kind": "service-intentions",
        "Name": "web",
        "Sources": [{"Name": "a", "Action": "allow"}, {"Name": "a", "Action": "deny"}],
    }
    status, _, text = await raw(fake, "PUT", "/v1/config", json=entry)
    assert (status, text) == (500, 'Sources[1] defines "a" more than once')


async def test_l7_permissions_need_an_http_protocol(fake, client, raw):
    entry = {"Kind": "service-intentions", "Name": "web", "Sources": [{"Name": "hub", "Permissions": [_l7()]}]}
    status, _, text = await raw(fake, "PUT", "/v1/config", json=entry)
    assert status == 500
    assert text == 'service "web" has protocol "tcp", which is incompatible with L7 intentions permissions'
    # Protocol from proxy-defaults works too.
    assert await client.config.set("proxy-defaults", "global", {"Config": {"protocol": "http"}}) is True
    status, _, text = await raw(fake, "PUT", "/v1/config", json=entry)
    assert (status, text) == (200, "true")
    # service-defaults overrides proxy-defaults; tcp there would break the L7 entry -> rejected.
    status, _, text = await raw(
        fake, "PUT", "/v1/config", json={"Kind": "service-defaults", "Name": "web", "Protocol": "tcp"}
    )
    assert status == 500 and "incompatible with L7 intentions permissions" in text
    assert await client.config.set("service-defaults", "web", {"Protocol": "http2"}) is True


async def test_header_permission_validation(fake, client, raw):
    await client.config.set("service-defaults", "web", {"Protocol": "http"})

    async def put(header):
        entry = {
            "Kind": "service-intentions",
            "Name": "web",
            "Sources": [{"Name": "hub", "Permissions": [_l7(header)]}],
        }
        return await raw(fake, "PUT", "/v1/config", json=entry)

    status, _, text = await put({"Name": "X-User", "Exact": "a", "Prefix": "b"})
    assert status == 500
    assert text == (
        "Sources[0].Permissions[0].HTTP.Header[0] should only contain one of Present, Exact, Prefix, Suffix, or Regex"
    )
    status, _, text = await put({"Exact": "a"})
    assert (status, text) == (500, "Sources[0].Permissions[0].HTTP.Header[0] missing required Name field")
    for matcher in ({"Exact": "a"}, {"Prefix": "a"}, {"Suffix": "a"}, {"Regex": "a.*"}, {"Present": True}):
        status, _, text = await put({"Name": "X-User", "Invert": True, **matcher})
        assert status == 200, text
    got = await client.config.get("service-intentions", "web")
    assert got["Sources"][0]["Permissions"][0]["HTTP"]["Header"] == [
        {"Name": "X-User", "Invert": True, "Present": True}
    ]


async def test_unknown_kind_and_unknown_keys(fake, raw):
    status, _, text = await raw(fake, "PUT", "/v1/config", json={"Kind": "bogus", "Name": "x"})
    assert (status, text) == (400, "Request decoding failed: invalid config entry kind: bogus")
    status, _, text = await raw(fake, "PUT", "/v1/config", json={"Name": "x"})
    assert status == 400 and "does not contain a kind/Kind key" in text
    status, _, text = await raw(
        fake,
        "PUT",
        "/v1/config",
        json={"Kind": "service-intentions", "Name": "w", "Sources": [{"Name": "a", "Action": "allow", "Nope": 1}]},
    )
    assert status == 400 and 'invalid config key "Sources[0].Nope"' in text


async def test_lower_case_keys_accepted(fake, client, raw):
    status, _, _ = await raw(
        fake,
        "PUT",
        "/v1/config",
        json={
            "kind": "service-intentions",
            "name": "web",
            "sources": [{"name": "hub", "action": "allow", "description": "d"}],
        },
    )
    assert status == 200
    got = await client.config.get("service-intentions", "web")
    assert got["Sources"][0]["Description"] == "d" and got["Sources"][0]["Action"] == "allow"


async def test_blocking_config_get(fake, client, raw, arrived, attempts_of):
    await client.config.set("service-defaults", "web", {"Protocol": "tcp"})
    _, headers, _ = await raw(fake, "GET", "/v1/config/service-defaults/web")
    index = int(headers["X-Consul-Index"])
    before = attempts_of(fake, "/v1/config/service-defaults/web")
    task = asyncio.ensure_future(
        raw(fake, "GET", "/v1/config/service-defaults/web", params={"index": str(index), "wait": "30s"})
    )
    await arrived(fake, "/v1/config/service-defaults/web", before)
    await client.config.set("service-defaults", "web", {"Protocol": "http"})
    status, headers, text = await asyncio.wait_for(task, 10)
    assert status == 200 and int(headers["X-Consul-Index"]) > index
    assert json.loads(text)["Protocol"] == "http"


async def test_proxy_defaults_name_must_be_global(fake, raw):
    status, _, text = await raw(fake, "PUT", "/v1/config", json={"Kind": "proxy-defaults", "Name": "other"})
    assert (status, text) == (500, 'invalid name ("other"), only "global" is supported')


async def test_other_kinds_are_stored_generically(fake, client):
    body = {"Redirect": {"Service": "db-v2"}, "ConnectTimeout": "5s"}
    assert await client.config.set("service-resolver", "db", body) is True
    got = await client.config.get("service-resolver", "db")
    assert got["Redirect"] == {"Service": "db-v2"} and got["ConnectTimeout"] == "5s"
    assert [e["Name"] for e in await client.config.list("service-resolver")] == ["db"]
