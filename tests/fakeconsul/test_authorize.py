"""POST /v1/agent/connect/authorize decided from intentions (L4 view: L7 counts as deny)."""

import json

import consul
import pytest

from .conftest import MASTER


async def _authorize(client, target, source, trust="11111111-2222-3333-4444-555555555555.consul"):
    body = {
        "Target": target,
        "ClientCertURI": f"spiffe://{trust}/ns/default/dc/dc1/svc/{source}",
        "ClientCertSerial": "01",
    }
    # py-consul's agent.connect.authorize sends PUT, which Consul rejects; POST directly.
    return await client.http.post(
        consul.callback.CB.json(),
        "/v1/agent/connect/authorize",
        data=json.dumps(body),
        headers=client.prepare_headers(),
    )


async def test_only_post_is_accepted(fake, raw):
    for method in ("PUT", "GET"):
        status, headers, text = await raw(fake, method, "/v1/agent/connect/authorize", json={})
        assert (status, text) == (405, f"method {method} not allowed")
        assert headers["Allow"] == "OPTIONS,POST"


async def test_default_allow_without_acls(fake, client):
    got = await _authorize(client, "db", "web")
    assert got == {"Authorized": True, "Reason": "Default behavior configured by ACLs"}


async def test_l4_intentions_and_precedence(fake, client):
    await client.connect.intentions.upsert("*", "db", action="deny")
    await client.connect.intentions.upsert("web", "db", action="allow")
    got = await _authorize(client, "db", "web")
    assert got == {"Authorized": True, "Reason": "Matched L4 intention: web => db (Precedence: 9, Action: ALLOW)"}
    got = await _authorize(client, "db", "api")
    assert got == {"Authorized": False, "Reason": "Matched L4 intention: * => db (Precedence: 8, Action: DENY)"}


async def test_l7_intention_counts_as_deny(fake, client):
    await client.config.set("service-defaults", "db", {"Protocol": "http"})
    await client.config.set(
        "service-intentions",
        "db",
        {"Sources": [{"Name": "web", "Permissions": [{"Action": "allow", "HTTP": {"PathPrefix": "/"}}]}]},
    )
    got = await _authorize(client, "db", "web")
    assert got["Authorized"] is False
    assert got["Reason"] == "Matched L7 intention: web => db (Precedence: 9, Permissions: 1)"


async def test_trust_domain_is_not_checked(fake, client):
    await client.connect.intentions.upsert("web", "db", action="deny")
    assert (await _authorize(client, "db", "web", trust="other.consul"))["Authorized"] is False


@pytest.mark.parametrize(
    ("body", "text"),
    [
        ({"ClientCertURI": "spiffe://x.consul/ns/default/dc/dc1/svc/web"}, "Target service must be specified"),
        ({"Target": "db", "ClientCertURI": "http://nope"}, "ClientCertURI not a valid Connect identifier"),
        (
            {"Target": "db", "ClientCertURI": "spiffe://x.consul/agent/client/dc/dc1/id/abc"},
            "ClientCertURI not a valid Service identifier",
        ),
    ],
)
async def test_bad_requests(fake, raw, body, text):
    status, _, got = await raw(fake, "POST", "/v1/agent/connect/authorize", json=body)
    assert (status, got) == (400, text)


async def test_with_acls_default_deny_and_service_write_on_target(acl_fake, admin, make_client):
    token = await admin.acl.token.create(service_identities=[{"ServiceName": "db"}])
    db = make_client(acl_fake, token["SecretID"])
    got = await _authorize(db, "db", "web")
    assert got == {"Authorized": False, "Reason": "Default behavior configured by ACLs"}
    await admin.connect.intentions.upsert("web", "db", action="allow")
    assert (await _authorize(db, "db", "web"))["Authorized"] is True
    with pytest.raises(consul.ACLPermissionDenied, match="'service:write' on \"cache\""):
        await _authorize(db, "cache", "web")


async def test_explicit_default_intention_policy(make_client):
    from consulspawner_dev.fakeconsul import FakeConsul

    with FakeConsul(acl_master_token=MASTER, default_intention_allow=True).start() as f:
        got = await _authorize(make_client(f, MASTER), "db", "web")
        assert got == {"Authorized": True, "Reason": "Default intention policy"}
