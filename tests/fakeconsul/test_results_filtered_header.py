"""X-Consul-Results-Filtered-By-ACLs says that ACLs removed results - never to an anonymous request.

agent/http.go setMeta / setResultsFilteredByACLs (header "true" when QueryMeta says so);
agent/consul/rpc.go maskResultsFilteredByACLs (blank token: flag cleared "to limit information
leaking"); agent/agent_endpoint.go AgentServices (set by hand "only if the user is authenticated");
agent/structs/aclfilter/filter.go (which filters report removals).
"""

import json

from .conftest import MASTER

HEADER = "X-Consul-Results-Filtered-By-ACLs"


async def test_header_when_acls_hid_something(acl_fake, raw):
    for name in ("jupyter-alice", "jupyter-bob"):
        reg = {"Name": name, "ID": name, "Port": 8888}
        assert (await raw(acl_fake, "PUT", "/v1/agent/service/register", token=MASTER, json=reg))[0] == 200
    rules = 'service "jupyter-alice" { policy = "read" }\nnode_prefix "" { policy = "read" }'
    status, _, text = await raw(acl_fake, "PUT", "/v1/acl/policy", token=MASTER, json={"Name": "alice", "Rules": rules})
    _, _, text = await raw(acl_fake, "PUT", "/v1/acl/token", token=MASTER, json={"Policies": [{"Name": "alice"}]})
    alice = json.loads(text)["SecretID"]
    for path in ("/v1/agent/services", "/v1/catalog/services"):
        status, headers, text = await raw(acl_fake, "GET", path, token=alice)
        assert status == 200 and "jupyter-bob" not in text
        assert headers.get(HEADER) == "true", path
        # The management token sees everything: nothing filtered, no header.
        status, headers, _ = await raw(acl_fake, "GET", path, token=MASTER)
        assert status == 200 and HEADER not in headers, path
        # Anonymous (no token): everything filtered, and still no header.
        status, headers, _ = await raw(acl_fake, "GET", path)
        assert status == 200 and HEADER not in headers, path
    status, headers, _ = await raw(acl_fake, "GET", "/v1/health/service/jupyter-bob", token=alice)
    assert status == 200 and headers.get(HEADER) == "true"
    status, headers, _ = await raw(acl_fake, "GET", "/v1/health/service/jupyter-alice", token=alice)
    assert status == 200 and HEADER not in headers
