"""ACL policies: the /v1/acl/policy endpoints, linking them to tokens, and enforcing their rules.

Sources: agent/acl_endpoint.go (HTTP handlers), agent/consul/acl_endpoint.go PolicySet /
PolicyRead / PolicyDelete / PolicyList, acl/policy.go (rule syntax and Validate), acl/
policy_merger.go (deny > write > list > read per resource), acl/policy_authorizer.go (exact beats
longest prefix; service read/write implies intentions read), agent/consul/aclfilter (catalog and
health results are filtered by node:read AND service:read).
"""

import json

import consul
import pytest

from .conftest import MASTER

HUB_RULES = """
acl = "write"
service_prefix "jupyter-" {
  policy = "write"
}
# Consul refuses a service rule without a policy, so intentions ride on a read rule.
service "trino-coordinator" {
  policy     = "read"
  intentions = "write"
}
node_prefix "" { policy = "read" }
"""


async def _policy(raw, fake, name, rules, **extra):
    status, _, text = await raw(
        fake, "PUT", "/v1/acl/policy", token=MASTER, json={"Name": name, "Rules": rules, **extra}
    )
    assert status == 200, text
    return json.loads(text)


async def _token_for(admin, *policy_names):
    return await admin.acl.token.create(policies_name=list(policy_names))


async def test_policy_crud(acl_fake, raw):
    created = await _policy(raw, acl_fake, "hub", HUB_RULES, Description="the hub")
    assert created["Name"] == "hub" and created["Rules"] == HUB_RULES and created["Description"] == "the hub"
    assert created["Hash"] and created["CreateIndex"] == created["ModifyIndex"]
    pid = created["ID"]
    status, _, text = await raw(acl_fake, "GET", f"/v1/acl/policy/{pid}", token=MASTER)
    assert status == 200 and json.loads(text)["Name"] == "hub"
    status, _, text = await raw(acl_fake, "GET", "/v1/acl/policy/name/hub", token=MASTER)
    assert status == 200 and json.loads(text)["ID"] == pid
    status, _, text = await raw(acl_fake, "GET", "/v1/acl/policies", token=MASTER)
    stubs = json.loads(text)
    assert {s["Name"] for s in stubs} == {"global-management", "hub"}
    assert "Rules" not in stubs[0]
    status, _, text = await raw(
        acl_fake, "PUT", f"/v1/acl/policy/{pid}", token=MASTER, json={"Name": "hub2", "Rules": 'acl = "read"'}
    )
    assert status == 200 and json.loads(text)["Name"] == "hub2" and json.loads(text)["ID"] == pid
    status, _, text = await raw(acl_fake, "DELETE", f"/v1/acl/policy/{pid}", token=MASTER)
    assert (status, text) == (200, "true")
    status, _, text = await raw(acl_fake, "GET", f"/v1/acl/policy/{pid}", token=MASTER)
    assert (status, text) == (404, "Requested policy does not exist: ACL not found")
    # Deleting what is not there is no error.
    status, _, _ = await raw(acl_fake, "DELETE", f"/v1/acl/policy/{pid}", token=MASTER)
    assert status == 200


@pytest.mark.parametrize(
    ("body", "status", "text"),
    [
        (
            {"Name": "p", "ID": "6d6b7b4c-9bd2-4a38-9a1b-8f9b0c0d7e11"},
            400,
            "Cannot specify the ID when creating a new policy",
        ),
        ({"Rules": 'acl = "read"'}, 500, "Invalid Policy: no Name is set"),
        (
            {"Name": "has space"},
            500,
            "Invalid Policy: invalid Name. Only alphanumeric characters, '-' and '_' are allowed",
        ),
        ({"Name": "p", "Rules": 'acl = "sometimes"'}, 500, 'Invalid acl policy: "sometimes"'),
        (
            {"Name": "p", "Rules": 'service "trino-coordinator" { intentions = "write" }'},
            500,
            'Invalid service policy: &acl.ServiceRule{Name:"trino-coordinator", Policy:"", '
            'Intentions:"write", EnterpriseRule:acl.EnterpriseRule{}}',
        ),
        (
            {"Name": "p", "Rules": 'node "n" { policy = "list" }'},
            500,
            'Invalid node policy: &acl.NodeRule{Name:"n", Policy:"list", EnterpriseRule:acl.EnterpriseRule{}}',
        ),
    ],
)
async def test_policy_create_refusals(acl_fake, raw, body, status, text):
    got_status, _, got_text = await raw(acl_fake, "PUT", "/v1/acl/policy", token=MASTER, json=body)
    assert (got_status, got_text) == (status, text)


async def test_policy_syntax_error_and_duplicate_name(acl_fake, raw):
    status, _, text = await raw(acl_fake, "PUT", "/v1/acl/policy", token=MASTER, json={"Name": "p", "Rules": "acl = {"})
    assert status == 500 and text.startswith("Failed to parse ACL rules: ")
    await _policy(raw, acl_fake, "p", 'acl = "read"')
    status, _, text = await raw(acl_fake, "PUT", "/v1/acl/policy", token=MASTER, json={"Name": "p"})
    assert (status, text) == (500, 'Invalid Policy: A Policy with Name "p" already exists')


async def test_builtin_policy_is_protected(acl_fake, raw):
    gm = "00000000-0000-0000-0000-000000000001"
    status, _, text = await raw(acl_fake, "DELETE", f"/v1/acl/policy/{gm}", token=MASTER)
    assert (status, text) == (500, "Delete operation not permitted on the builtin global-management policy")
    status, _, text = await raw(
        acl_fake, "PUT", f"/v1/acl/policy/{gm}", token=MASTER, json={"Name": "global-management", "Rules": ""}
    )
    assert (status, text) == (500, "Changing the Rules for the builtin global-management policy is not permitted")


async def test_policy_endpoints_need_acl_permissions(acl_fake, raw, admin, make_client):
    await _policy(raw, acl_fake, "reader", 'service_prefix "" { policy = "read" }')
    token = await _token_for(admin, "reader")
    status, _, text = await raw(acl_fake, "GET", "/v1/acl/policies", token=token["SecretID"])
    assert (status, text) == (
        403,
        f"Permission denied: token with AccessorID '{token['AccessorID']}' lacks permission 'acl:read'",
    )
    status, _, text = await raw(acl_fake, "PUT", "/v1/acl/policy", token=token["SecretID"], json={"Name": "x"})
    assert status == 403 and "lacks permission 'acl:write'" in text


async def test_tokens_link_policies_by_name_or_id(acl_fake, raw, admin):
    p = await _policy(raw, acl_fake, "hub", HUB_RULES)
    by_name = await admin.acl.token.create(policies_name=["hub"])
    by_id = await admin.acl.token.create(policies_id=[p["ID"]], policies_name=["hub"])
    assert by_name["Policies"] == [{"ID": p["ID"], "Name": "hub"}]
    assert by_id["Policies"] == [{"ID": p["ID"], "Name": "hub"}]  # de-duplicated by ID
    with pytest.raises(consul.ConsulException) as exc:
        await admin.acl.token.create(policies_name=["nope"])
    assert str(exc.value) == '500 No such ACL policy with name "nope"'
    # A deleted policy drops out of the token's links (fixupTokenPolicyLinks).
    await raw(acl_fake, "DELETE", f"/v1/acl/policy/{p['ID']}", token=MASTER)
    assert "Policies" not in await admin.acl.token.read(by_name["AccessorID"])


async def test_read_only_token_lists_but_cannot_register(acl_fake, raw, admin, make_client):
    await admin.agent.service.register("web", service_id="web-1", port=80)
    await _policy(raw, acl_fake, "ro", 'service_prefix "" { policy = "read" }\nnode_prefix "" { policy = "read" }')
    token = await _token_for(admin, "ro")
    user = make_client(acl_fake, token["SecretID"])
    assert set(await user.agent.services()) == {"web-1"}
    _, services = await user.catalog.services()
    assert "web" in services
    _, nodes = await user.health.service("web")
    assert [n["Service"]["ID"] for n in nodes] == ["web-1"]
    with pytest.raises(consul.ACLPermissionDenied) as exc:
        await user.agent.service.register("web", service_id="web-2", port=81)
    assert str(exc.value) == (
        f"Permission denied: token with AccessorID '{token['AccessorID']}' lacks permission 'service:write' on \"web\""
    )


async def test_hub_lifecycle_with_a_scoped_policy(acl_fake, raw, admin, make_client):
    await _policy(raw, acl_fake, "hub", HUB_RULES)
    hub_token = await _token_for(admin, "hub")
    hub = make_client(acl_fake, hub_token["SecretID"])
    # 1. mint the server's token (acl = "write")
    server_token = await hub.acl.token.create(service_identities=[{"ServiceName": "jupyter-alice"}])
    # 2. register it with a sidecar and a TTL check (service:write on jupyter-alice and its proxy)
    assert await hub.agent.service.register(
        "jupyter-alice",
        service_id="jupyter-alice",
        port=8888,
        check=consul.Check.ttl("30s"),
        connect={"sidecar_service": {}},
    )
    # 3. pass its TTL check
    await hub.agent.check.ttl_pass("service:jupyter-alice")
    # 4. read health (service:read via the prefix rule, node:read via node_prefix)
    _, nodes = await hub.health.service("jupyter-alice", passing=True)
    assert [n["Service"]["ID"] for n in nodes] == ["jupyter-alice"]
    # 5. write the service-intentions entry of trino-coordinator (intentions:write on it)
    assert await hub.config.set(
        "service-intentions", "trino-coordinator", {"Sources": [{"Name": "jupyter-alice", "Action": "allow"}]}
    )
    assert (await hub.config.get("service-intentions", "trino-coordinator"))["Sources"][0]["Name"] == "jupyter-alice"
    # ...but nothing else's intentions, and no other service
    with pytest.raises(consul.ACLPermissionDenied, match=r"lacks permission 'intentions:write' on \"other\""):
        await hub.config.set("service-intentions", "other", {"Sources": [{"Name": "x", "Action": "allow"}]})
    with pytest.raises(consul.ACLPermissionDenied, match=r"lacks permission 'service:write' on \"trino-coordinator\""):
        await hub.agent.service.register("trino-coordinator", port=8080)
    # 6. tear down
    assert await hub.config.delete("service-intentions", "trino-coordinator") is not None
    assert await hub.agent.service.deregister("jupyter-alice")
    assert await hub.acl.token.delete(server_token["AccessorID"])
    assert server_token["AccessorID"] not in acl_fake.snapshot()["tokens"]


async def test_without_node_read_health_is_filtered_not_refused(acl_fake, raw, admin, make_client):
    await admin.agent.service.register("jupyter-alice", port=8888, check=consul.Check.ttl("30s"))
    await _policy(raw, acl_fake, "hub-no-node", HUB_RULES.replace('node_prefix "" { policy = "read" }', ""))
    token = await _token_for(admin, "hub-no-node")
    user = make_client(acl_fake, token["SecretID"])
    _, nodes = await user.health.service("jupyter-alice")
    assert nodes == []
    _, checks = await user.health.checks("jupyter-alice")
    assert checks == []
    _, entries = await user.catalog.service("jupyter-alice")
    assert entries == []
    # /v1/catalog/services filters by service:read only (aclfilter filterServices).
    _, services = await user.catalog.services()
    assert "jupyter-alice" in services
    # The agent-local listing needs service:read only, too.
    assert "jupyter-alice" in await user.agent.services()


async def test_service_identity_token_limits(acl_fake, admin, make_client, raw):
    await admin.agent.service.register("db", port=5432)
    token = await admin.acl.token.create(service_identities=[{"ServiceName": "web"}])
    web = make_client(acl_fake, token["SecretID"])
    acc = token["AccessorID"]
    with pytest.raises(consul.ACLPermissionDenied) as exc:
        await web.config.set("service-intentions", "web", {"Sources": [{"Name": "db", "Action": "allow"}]})
    assert (
        str(exc.value)
        == f"Permission denied: token with AccessorID '{acc}' lacks permission 'intentions:write' on \"web\""
    )
    status, _, text = await raw(
        acl_fake,
        "PUT",
        "/v1/connect/intentions/exact",
        token=token["SecretID"],
        params={"source": "db", "destination": "web"},
        json={"Action": "allow"},
    )
    assert (status, text) == (403, "Permission denied")
    with pytest.raises(consul.ACLPermissionDenied, match=r"'service:write' on \"db\""):
        await web.agent.service.register("db", service_id="db-2", port=5433)
    with pytest.raises(consul.ACLPermissionDenied, match=r"'service:write' on \"db\""):
        await web.agent.service.deregister("db")
    status, _, text = await raw(acl_fake, "GET", "/v1/agent/connect/ca/leaf/db", token=token["SecretID"])
    assert (status, text) == (
        403,
        f"Permission denied: token with AccessorID '{acc}' lacks permission 'service:write' on \"db\"",
    )
    # its own service works
    assert await web.agent.service.register("web", port=80, connect={"sidecar_service": {}})
    status, _, _ = await raw(acl_fake, "GET", "/v1/agent/connect/ca/leaf/web", token=token["SecretID"])
    assert status == 200


async def test_exact_rule_beats_prefix_and_deny_wins_merge(acl_fake, raw, admin, make_client):
    await _policy(raw, acl_fake, "broad", 'service_prefix "" { policy = "write" }\nnode_prefix "" { policy = "read" }')
    await _policy(
        raw, acl_fake, "narrow", 'service "secret" { policy = "deny" }\nservice_prefix "web" { policy = "read" }'
    )
    token = await _token_for(admin, "broad", "narrow")
    user = make_client(acl_fake, token["SecretID"])
    assert await user.agent.service.register("api", port=1)  # prefix "" write
    with pytest.raises(consul.ACLPermissionDenied, match=r"'service:write' on \"web-1\""):
        await user.agent.service.register("web-1", port=2)  # longer prefix "web" read wins
    with pytest.raises(consul.ACLPermissionDenied, match=r"'service:write' on \"secret\""):
        await user.agent.service.register("secret", port=3)  # exact deny
    await admin.agent.service.register("secret", port=3)
    assert "secret" not in await user.agent.services()
    # Two policies with the same resource: deny beats write (policy_merger.go).
    await _policy(raw, acl_fake, "allow-x", 'service "x" { policy = "write" }')
    await _policy(raw, acl_fake, "deny-x", 'service "x" { policy = "deny" }')
    both = make_client(acl_fake, (await _token_for(admin, "allow-x", "deny-x"))["SecretID"])
    with pytest.raises(consul.ACLPermissionDenied):
        await both.agent.service.register("x", port=4)


async def test_json_rules_and_agent_and_operator_rules(acl_fake, raw, admin, make_client):
    rules = json.dumps({"agent_prefix": {"": {"policy": "read"}}, "operator": "write"})
    await _policy(raw, acl_fake, "ops", rules)
    secret = (await _token_for(admin, "ops"))["SecretID"]
    user = make_client(acl_fake, secret)
    status, _, text = await raw(acl_fake, "GET", "/v1/agent/self", token=secret)
    assert status == 200 and json.loads(text)["Config"]["NodeName"]
    status, _, text = await raw(acl_fake, "GET", "/v1/agent/self")
    assert status == 403 and "lacks permission 'agent:read'" in text
    # operator = "write" stands in for mesh (MeshWrite falls back to OperatorWrite)
    assert await user.config.set("proxy-defaults", "global", {"Config": {"protocol": "http"}})
