"""ACL tokens and their enforcement (default deny, master token = initial management token)."""

import re

import consul
import pytest

from .conftest import MASTER

UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


async def test_acl_endpoints_answer_401_when_acls_are_disabled(fake, client, raw):
    with pytest.raises(consul.ACLDisabled, match="ACL support disabled"):
        await client.acl.token.create(service_identities=[{"ServiceName": "web"}])
    for method, path in (("GET", "/v1/acl/tokens"), ("GET", "/v1/acl/token/self"), ("PUT", "/v1/acl/token")):
        status, _, text = await raw(fake, method, path, json={} if method == "PUT" else None)
        assert (status, text) == (401, "ACL support disabled")


async def test_create_service_identity_token(acl_fake, admin):
    token = await admin.acl.token.create(
        service_identities=[{"ServiceName": "jupyter-alice"}], description="alice's server", expiration_ttl="1h"
    )
    assert UUID.match(token["AccessorID"]) and UUID.match(token["SecretID"])
    assert token["ServiceIdentities"] == [{"ServiceName": "jupyter-alice"}]
    assert token["Description"] == "alice's server"
    assert token["Local"] is False
    assert token["CreateTime"].endswith("Z") and token["ExpirationTime"].endswith("Z")
    assert "ExpirationTTL" not in token and "Policies" not in token
    read = await admin.acl.token.read(token["AccessorID"])
    assert read["SecretID"] == token["SecretID"] and read["ExpirationTime"] == token["ExpirationTime"]


async def test_service_identity_name_validation(acl_fake, admin):
    with pytest.raises(consul.ConsulException) as exc:
        await admin.acl.token.create(service_identities=[{"ServiceName": "Bad.Name"}])
    assert str(exc.value) == (
        '500 Service identity "Bad.Name" has an invalid name. '
        "Only lowercase alphanumeric characters, '-' and '_' are allowed"
    )
    with pytest.raises(consul.ConsulException, match="invalid name"):
        await admin.acl.token.create(service_identities=[{"ServiceName": "a" * 257}])
    ok = await admin.acl.token.create(service_identities=[{"ServiceName": "a_b-1"}])
    assert ok["ServiceIdentities"] == [{"ServiceName": "a_b-1"}]


@pytest.mark.parametrize(
    ("ttl", "text"),
    [
        ("30s", "500 ExpirationTime cannot be less than 1m0s in the future (was 30s)"),
        ("25h", "500 ExpirationTime cannot be more than 24h0m0s in the future (was 25h0m0s)"),
    ],
)
async def test_expiration_ttl_bounds(acl_fake, admin, ttl, text):
    with pytest.raises(consul.ConsulException) as exc:
        await admin.acl.token.create(service_identities=[{"ServiceName": "web"}], expiration_ttl=ttl)
    assert str(exc.value) == text


async def test_expiration_ttl_unparsable_is_400(acl_fake, raw):
    status, _, text = await raw(acl_fake, "PUT", "/v1/acl/token", token=MASTER, json={"ExpirationTTL": "soon"})
    assert status == 400 and text.startswith("Token decoding failed: time: invalid duration")


async def test_expired_token_vanishes_and_stops_working(acl_fake, admin, make_client, raw):
    token = await admin.acl.token.create(service_identities=[{"ServiceName": "web"}], expiration_ttl="10m")
    user = make_client(acl_fake, token["SecretID"])
    assert await user.agent.service.register("web") is True
    acl_fake.advance(601)
    assert await admin.acl.token.read(token["AccessorID"]) is None  # 404
    status, _, text = await raw(acl_fake, "GET", f"/v1/acl/token/{token['AccessorID']}", token=MASTER)
    assert (status, text) == (404, "Requested token does not exist: ACL not found")
    with pytest.raises(consul.ACLPermissionDenied, match=r"^ACL not found$"):
        await user.agent.service.register("web")
    assert token["AccessorID"] not in {t["AccessorID"] for t in await admin.acl.token.list()}


async def test_token_self_read_list_delete(acl_fake, admin, make_client, raw):
    token = await admin.acl.token.create(service_identities=[{"ServiceName": "web"}])
    user = make_client(acl_fake, token["SecretID"])
    me = await user.acl.token.read_self()
    assert me["AccessorID"] == token["AccessorID"]
    stubs = await admin.acl.token.list()
    by_id = {t["AccessorID"]: t for t in stubs}
    assert by_id[token["AccessorID"]]["SecretID"] == token["SecretID"]  # management sees secrets
    assert "00000000-0000-0000-0000-000000000002" in by_id  # anonymous token
    assert any(t["SecretID"] == MASTER for t in stubs)  # the initial management token
    assert await admin.acl.token.delete(token["AccessorID"]) is True
    assert await admin.acl.token.read(token["AccessorID"]) is None
    assert await admin.acl.token.delete(token["AccessorID"]) is True  # deleting nothing is fine
    status, _, text = await raw(acl_fake, "GET", "/v1/acl/token/self", token="not-a-token")
    assert (status, text) == (404, "Supplied token does not exist")


async def test_management_tokens_by_policy_name_or_id(acl_fake, admin, make_client):
    by_name = await admin.acl.token.create(policies_name=["global-management"])
    by_id = await admin.acl.token.create(policies_id=["00000000-0000-0000-0000-000000000001"])
    for tok in (by_name, by_id):
        assert tok["Policies"] == [{"ID": "00000000-0000-0000-0000-000000000001", "Name": "global-management"}]
        c = make_client(acl_fake, tok["SecretID"])
        assert await c.config.set("service-intentions", "x", {"Sources": [{"Name": "y", "Action": "allow"}]})
        assert (await c.acl.token.create(description="made by a management token"))["AccessorID"]
    with pytest.raises(consul.ConsulException, match='No such ACL policy with name "nope"'):
        await admin.acl.token.create(policies_name=["nope"])


async def test_service_identity_permissions(acl_fake, admin, make_client):
    token = await admin.acl.token.create(service_identities=[{"ServiceName": "web"}])
    acc = token["AccessorID"]
    c = make_client(acl_fake, token["SecretID"])
    # May register itself and its sidecar, with a TTL check it may pass.
    assert await c.agent.service.register(
        "web", service_id="w", port=80, check=consul.Check.ttl("1m"), connect={"sidecar_service": {}}
    )
    assert await c.agent.check.ttl_pass("service:w") is True
    # Not another service.
    with pytest.raises(consul.ACLPermissionDenied) as exc:
        await c.agent.service.register("db")
    assert (
        str(exc.value) == f"Permission denied: token with AccessorID '{acc}' lacks permission 'service:write' on \"db\""
    )
    # Not config entries it has no write on, nor ACL.
    with pytest.raises(consul.ACLPermissionDenied, match="'intentions:write' on \"web\""):
        await c.config.set("service-intentions", "web", {"Sources": [{"Name": "x", "Action": "allow"}]})
    with pytest.raises(consul.ACLPermissionDenied, match="'mesh:write'"):
        await c.config.set("proxy-defaults", "global", {"Config": {"protocol": "http"}})
    with pytest.raises(consul.ACLPermissionDenied, match="'acl:write'"):
        await c.acl.token.create(service_identities=[{"ServiceName": "web"}])
    with pytest.raises(consul.ACLPermissionDenied, match="'acl:read'"):
        await c.acl.token.list()
    # Reads on every service: its own and others registered by the admin.
    await admin.agent.service.register("db")
    assert {"w", "w-sidecar-proxy", "db"} <= set(await c.agent.services())
    _, nodes = await c.health.service("db")
    assert len(nodes) == 1
    # It may not deregister someone else's service.
    with pytest.raises(consul.ACLPermissionDenied, match="'service:write' on \"db\""):
        await c.agent.service.deregister("db")


async def test_anonymous_is_denied_with_consuls_text(acl_fake, make_client, raw, admin):
    anon = make_client(acl_fake)
    with pytest.raises(consul.ACLPermissionDenied) as exc:
        await anon.agent.service.register("web")
    assert str(exc.value) == (
        "Permission denied: anonymous token lacks permission 'service:write' on \"web\". "
        "The anonymous token is used implicitly when a request does not specify a token."
    )
    await admin.agent.service.register("web")
    assert await anon.agent.services() == {}  # filtered, not an error
    _, nodes = await anon.health.service("web")
    assert nodes == []
    status, _, text = await raw(acl_fake, "GET", "/v1/agent/self")
    assert status == 403 and "'agent:read' on \"fake-node\"" in text
    status, _, text = await raw(acl_fake, "GET", "/v1/status/leader")
    assert status == 200  # status endpoints need no token


async def test_unknown_secret_is_acl_not_found(acl_fake, raw):
    status, _, text = await raw(acl_fake, "GET", "/v1/agent/services", token="bogus")
    assert (status, text) == (403, "ACL not found")


async def test_token_sources_header_bearer_and_query(acl_fake, raw):
    for kwargs in (
        {"headers": {"X-Consul-Token": MASTER}},
        {"headers": {"Authorization": f"Bearer {MASTER}"}},
        {"params": {"token": MASTER}},
    ):
        status, _, text = await raw(acl_fake, "GET", "/v1/agent/self", **kwargs)
        assert status == 200, (kwargs, text)


async def test_token_cannot_delete_itself(acl_fake, admin, raw):
    token = await admin.acl.token.create(policies_name=["global-management"])
    status, _, text = await raw(acl_fake, "DELETE", f"/v1/acl/token/{token['AccessorID']}", token=token["SecretID"])
    assert (status, text) == (500, "Deletion of the request's authorization token is not permitted")


async def test_explicit_expiration_time_and_update(acl_fake, admin, raw):
    import datetime as dt

    exp = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
    token = await admin.acl.token.create(service_identities=[{"ServiceName": "web"}], expiration_time=exp)
    assert token["ExpirationTime"] == exp
    acc = token["AccessorID"]
    status, _, text = await raw(
        acl_fake,
        "PUT",
        f"/v1/acl/token/{acc}",
        token=MASTER,
        json={"Description": "renamed", "ServiceIdentities": [{"ServiceName": "web"}]},
    )
    assert status == 200, text
    assert (await admin.acl.token.read(acc))["Description"] == "renamed"
    status, _, text = await raw(acl_fake, "PUT", f"/v1/acl/token/{acc}", token=MASTER, json={"ExpirationTTL": "1h"})
    assert (status, text) == (500, f"Cannot change expiration time of {acc}")
    status, _, text = await raw(acl_fake, "PUT", f"/v1/acl/token/{acc}", token=MASTER, json={"AccessorID": "other"})
    assert (status, text) == (400, "Token Accessor ID in URL and payload do not match")
