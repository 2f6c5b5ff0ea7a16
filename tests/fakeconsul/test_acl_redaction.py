"""SecretIDs are redacted for a token with acl:read but not acl:write.

agent/structs/aclfilter/filter.go filterToken / filterTokenStub: without acl:read the token is
dropped; with acl:read but without acl:write its SecretID becomes RedactedToken "<hidden>".
ACL.TokenRead (agent/consul/acl_endpoint.go) applies filterToken to a read by accessor (and sets
Redacted); ACL.TokenList applies filterTokenStubs. A read of one's own token by secret
(/v1/acl/token/self) is not filtered: "If you have the secret ID you can read it."
"""

import json

from .conftest import MASTER


async def _token_with_rules(raw, fake, rules: str) -> dict:
    status, _, text = await raw(
        fake, "PUT", "/v1/acl/policy", token=MASTER, json={"Name": "p-" + str(len(rules)), "Rules": rules}
    )
    assert status == 200, text
    status, _, text = await raw(
        fake, "PUT", "/v1/acl/token", token=MASTER, json={"Policies": [{"Name": json.loads(text)["Name"]}]}
    )
    assert status == 200, text
    return json.loads(text)


async def test_acl_read_token_sees_hidden_secret_on_read(acl_fake, raw):
    reader = await _token_with_rules(raw, acl_fake, 'acl = "read"')
    status, _, text = await raw(acl_fake, "PUT", "/v1/acl/token", token=MASTER, json={"Description": "victim"})
    victim = json.loads(text)
    status, _, text = await raw(acl_fake, "GET", f"/v1/acl/token/{victim['AccessorID']}", token=reader["SecretID"])
    assert status == 200, text
    body = json.loads(text)
    assert body["AccessorID"] == victim["AccessorID"]
    assert body["SecretID"] == "<hidden>"
    assert victim["SecretID"] not in text


async def test_acl_write_token_sees_secret_on_read(acl_fake, raw):
    writer = await _token_with_rules(raw, acl_fake, 'acl = "write"')
    status, _, text = await raw(acl_fake, "PUT", "/v1/acl/token", token=MASTER, json={"Description": "victim"})
    victim = json.loads(text)
    status, _, text = await raw(acl_fake, "GET", f"/v1/acl/token/{victim['AccessorID']}", token=writer["SecretID"])
    assert status == 200 and json.loads(text)["SecretID"] == victim["SecretID"]


async def test_acl_read_token_sees_hidden_secrets_in_list(acl_fake, raw):
    reader = await _token_with_rules(raw, acl_fake, 'acl = "read"')
    status, _, text = await raw(acl_fake, "GET", "/v1/acl/tokens", token=reader["SecretID"])
    assert status == 200, text
    stubs = json.loads(text)
    assert stubs and all(s["SecretID"] == "<hidden>" for s in stubs)
    assert MASTER not in text and reader["SecretID"] not in text


async def test_self_read_is_not_redacted(acl_fake, raw):
    reader = await _token_with_rules(raw, acl_fake, 'acl = "read"')
    status, _, text = await raw(acl_fake, "GET", "/v1/acl/token/self", token=reader["SecretID"])
    assert status == 200 and json.loads(text)["SecretID"] == reader["SecretID"]


async def test_the_fake_records_who_received_which_secret(acl_fake, raw):
    # Test evidence (not a Consul behaviour): FakeConsul.secret_reads lists every unredacted
    # SecretID the fake answered with, so a test can show a component never received another
    # token's secret.
    reader = await _token_with_rules(raw, acl_fake, 'acl = "read"')
    writer = await _token_with_rules(raw, acl_fake, 'acl = "write"')
    before = len(acl_fake.secret_reads)
    await raw(acl_fake, "GET", "/v1/acl/tokens", token=reader["SecretID"])
    await raw(acl_fake, "GET", f"/v1/acl/token/{writer['AccessorID']}", token=reader["SecretID"])
    assert acl_fake.secret_reads[before:] == []  # redacted answers disclose nothing
    await raw(acl_fake, "GET", f"/v1/acl/token/{reader['AccessorID']}", token=writer["SecretID"])
    await raw(acl_fake, "GET", "/v1/acl/token/self", token=reader["SecretID"])
    assert acl_fake.secret_reads[before:] == [
        {"reader": writer["AccessorID"], "accessor": reader["AccessorID"], "operation": "token-read"},
        {"reader": reader["AccessorID"], "accessor": reader["AccessorID"], "operation": "token-self"},
    ]
    await raw(acl_fake, "GET", "/v1/acl/tokens", token=writer["SecretID"])
    listed = [r for r in acl_fake.secret_reads if r["operation"] == "token-list"]
    assert {r["reader"] for r in listed} == {writer["AccessorID"]} and len(listed) >= 4
