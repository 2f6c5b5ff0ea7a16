"""No token in any log line (DEBUG, every logger) or error message during a full
register/grant/revoke/deregister cycle with ACLs on, including the failure paths."""

import logging

import pytest

from consulspawner.consul import ConsulClient, ConsulError
from consulspawner.entries import L4
from consulspawner.identity import Signer
from consulspawner.intentions import IntentionWriter
from consulspawner.mesh import MeshState, ServerMesh
from consulspawner.plan import MeshSettings, build_plan
from consulspawner_dev.bootstrap import bootstrap_identity, write_signing_key

from .conftest import MASTER_TOKEN


async def test_full_cycle_logs_no_token(acl_consul, acl_client, caplog, tmp_path):
    caplog.set_level(logging.DEBUG)
    key_file = write_signing_key(tmp_path / "key.pem")
    method = await bootstrap_identity(acl_client, hub_instance="leakcheck", key_file=key_file)
    plan = build_plan(MeshSettings(hub_instance="leakcheck", intention_mode=L4), "alice")
    mesh = ServerMesh(acl_client, IntentionWriter(acl_client, "leakcheck"), plan, MeshState(), retry_budget=1)
    secret = await mesh.login(Signer.from_file(key_file), method, "consul", "jupyter-")
    await mesh.register("127.0.0.1")
    await mesh.heartbeat()
    await mesh.grant()

    # The server's own token at work, and refused where its service identity does not reach.
    as_server = ConsulClient(acl_consul.url, secret)
    leaf = (await as_server.request("GET", f"/v1/agent/connect/ca/leaf/{plan.service_name}")).body
    assert leaf["Service"] == plan.service_name
    errors = []
    with pytest.raises(ConsulError) as denied:
        await as_server.register_service({"ID": "jupyter-bob", "Name": "jupyter-bob", "Port": 1})
    errors.append(str(denied.value))
    assert denied.value.status == 403
    # A failure whose body would echo the token back must be scrubbed too.
    acl_consul.fail("GET", r"^/v1/agent/self$", status=500, times=1, body=f"boom {secret} {MASTER_TOKEN}")
    with pytest.raises(ConsulError) as echoed:
        await acl_client.request("GET", "/v1/agent/self")
    errors.append(str(echoed.value))
    await as_server.close()

    await mesh.revoke()
    await mesh.deregister()
    accessor = mesh.state.token_accessor
    await mesh.logout()
    assert await acl_client.read_token(accessor) is None

    logged = "\n".join(f"{r.name} {r.getMessage()} {r.args}" for r in caplog.records)
    assert "Registered Consul service jupyter-alice" in logged  # the log really was captured
    for text in (logged, *errors):
        assert secret not in text
        assert MASTER_TOKEN not in text
        assert "eyJ" not in text  # no JWT (the login's bearer) either
    assert "<redacted>" in errors[1]
