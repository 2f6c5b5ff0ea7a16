"""/v1/health/connect/<svc> needs service:read on <svc> itself, not only on its proxy.

agent/consul/health_endpoint.go Health.ServiceNodes: "If we're doing a connect or ingress query,
we need read access to the service we're trying to find proxies for" - without it the answer is
empty (with the index set); the proxies that are returned are then filtered by
aclfilter.filterCheckServiceNodes (node:read and service:read on the proxy).
"""

import json

from .conftest import MASTER


async def _token(raw, fake, name: str, rules: str) -> str:
    status, _, text = await raw(fake, "PUT", "/v1/acl/policy", token=MASTER, json={"Name": name, "Rules": rules})
    assert status == 200, text
    status, _, text = await raw(fake, "PUT", "/v1/acl/token", token=MASTER, json={"Policies": [{"Name": name}]})
    assert status == 200, text
    return json.loads(text)["SecretID"]


async def test_proxy_read_alone_finds_nothing(acl_fake, raw):
    reg = {"Name": "jupyter-alice", "ID": "a1", "Port": 8888, "Connect": {"SidecarService": {}}}
    status, _, text = await raw(acl_fake, "PUT", "/v1/agent/service/register", token=MASTER, json=reg)
    assert status == 200, text
    proxy_only = await _token(
        raw,
        acl_fake,
        "proxy-only",
        'service "jupyter-alice-sidecar-proxy" { policy = "read" }\nnode_prefix "" { policy = "read" }',
    )
    both = await _token(
        raw, acl_fake, "both", 'service_prefix "jupyter-alice" { policy = "read" }\nnode_prefix "" { policy = "read" }'
    )
    status, headers, text = await raw(acl_fake, "GET", "/v1/health/connect/jupyter-alice", token=proxy_only)
    assert status == 200 and json.loads(text) == []
    assert int(headers["X-Consul-Index"]) > 0
    status, _, text = await raw(acl_fake, "GET", "/v1/health/connect/jupyter-alice", token=both)
    assert status == 200 and [e["Service"]["Service"] for e in json.loads(text)] == ["jupyter-alice-sidecar-proxy"]
