"""Node identities: a Datacenter is required, and the identity grants node write + service read.

agent/consul/auth/token_writer.go normalizeNodeIdentities ("Node identity is missing the
datacenter field on this token", name validation, de-duplication); agent/structs/acl_ce.go
aclPolicyTemplateNodeIdentity (node "<name>" write, service_prefix "" read), applied only in the
identity's datacenter (ACLNodeIdentity.SyntheticPolicy / the resolver's datacenter check).
"""

import json

from .conftest import MASTER


async def _create(raw, fake, identities):
    status, _, text = await raw(fake, "PUT", "/v1/acl/token", token=MASTER, json={"NodeIdentities": identities})
    return status, (json.loads(text) if status == 200 else text)


async def test_node_identity_needs_a_datacenter(acl_fake, raw):
    assert await _create(raw, acl_fake, [{"NodeName": "n1"}]) == (
        500,
        "Node identity is missing the datacenter field on this token",
    )
    assert await _create(raw, acl_fake, [{"Datacenter": "dc1"}]) == (
        500,
        "Node identity is missing the node name field on this token",
    )
    status, text = await _create(raw, acl_fake, [{"NodeName": "N1", "Datacenter": "dc1"}])
    assert status == 500 and text.startswith("Node identity has an invalid name.")


async def test_node_identity_grants_service_read_in_its_datacenter(acl_fake, raw):
    reg = {"Name": "web", "ID": "web", "Port": 80}
    assert (await raw(acl_fake, "PUT", "/v1/agent/service/register", token=MASTER, json=reg))[0] == 200
    status, here = await _create(raw, acl_fake, [{"NodeName": "n1", "Datacenter": "dc1"}] * 2)
    assert status == 200 and here["NodeIdentities"] == [{"NodeName": "n1", "Datacenter": "dc1"}]
    _, elsewhere = await _create(raw, acl_fake, [{"NodeName": "n1", "Datacenter": "dc2"}])
    status, _, text = await raw(acl_fake, "GET", "/v1/catalog/services", token=here["SecretID"])
    assert status == 200 and "web" in json.loads(text)
    status, _, text = await raw(acl_fake, "GET", "/v1/catalog/services", token=elsewhere["SecretID"])
    assert status == 200 and json.loads(text) == {}
