"""Length limits count bytes of UTF-8, as Go's len() on a string does.

agent/structs/structs.go: metaKeyMaxLength 128, metaValueMaxLength 512, metaMaxKeyPairs 64 and the
reserved "consul-" key prefix (validateMetadata / validateMetaPair); the service-intentions source
Description shares metaValueMaxLength (agent/structs/config_entry_intentions.go validate).
"""

import consul
import pytest

from .conftest import MASTER

CJK_540_BYTES = "漢" * 180  # 180 characters, 3 bytes each in UTF-8
CJK_510_BYTES = "漢" * 170


def test_fixture_sizes():
    assert len(CJK_540_BYTES) == 180 and len(CJK_540_BYTES.encode()) == 540
    assert len(CJK_510_BYTES.encode()) == 510


async def test_service_meta_value_counts_bytes(fake, raw):
    status, _, text = await raw(
        fake, "PUT", "/v1/agent/service/register", json={"Name": "web", "Meta": {"owner": CJK_540_BYTES}}
    )
    assert status == 400
    assert text == (
        f"Invalid Service Meta: Couldn't load metadata pair ('owner', '{CJK_540_BYTES}'): "
        "Value is too long (limit: 512 characters)"
    )
    assert "web" not in fake.snapshot()["services"]
    status, _, text = await raw(
        fake, "PUT", "/v1/agent/service/register", json={"Name": "web", "Meta": {"owner": CJK_510_BYTES}}
    )
    assert (status, text) == (200, "")
    assert fake.snapshot()["services"]["web"]["Meta"] == {"owner": CJK_510_BYTES}


@pytest.mark.parametrize(
    ("meta", "reason"),
    [
        ({"k" * 129: "v"}, "Key is too long (limit: 128 characters)"),
        ({"consul-owner": "v"}, "Key prefix 'consul-' is reserved for internal use"),
        ({"bad.key": "v"}, "Key contains invalid characters"),
        ({"ключ": "v"}, "Key contains invalid characters"),
        ({"": "v"}, "Key cannot be blank"),
    ],
)
async def test_service_meta_key_rules(fake, raw, meta, reason):
    status, _, text = await raw(fake, "PUT", "/v1/agent/service/register", json={"Name": "web", "Meta": meta})
    ((key, value),) = meta.items()
    assert (status, text) == (400, f"Invalid Service Meta: Couldn't load metadata pair ('{key}', '{value}'): {reason}")


async def test_service_meta_key_at_limit_and_pair_count(fake, raw):
    status, _, _ = await raw(fake, "PUT", "/v1/agent/service/register", json={"Name": "web", "Meta": {"k" * 128: "v"}})
    assert status == 200
    ok = {f"k{i}": "v" for i in range(64)}
    status, _, _ = await raw(fake, "PUT", "/v1/agent/service/register", json={"Name": "web", "Meta": ok})
    assert status == 200
    too_many = {f"k{i}": "v" for i in range(65)}
    status, _, text = await raw(fake, "PUT", "/v1/agent/service/register", json={"Name": "web", "Meta": too_many})
    assert (status, text) == (400, "Invalid Service Meta: Node metadata cannot contain more than 64 key/value pairs")


async def test_service_meta_checked_after_token_before_acl(acl_fake, raw):
    # AgentRegisterService resolves the token (unknown -> 403 ACL not found) before validating
    # Meta, and validates Meta before vetServiceRegister (so an unauthorised token sees the 400).
    body = {"Name": "web", "Meta": {"owner": CJK_540_BYTES}}
    status, _, text = await raw(acl_fake, "PUT", "/v1/agent/service/register", json=body, token="no-such-token")
    assert (status, text) == (403, "ACL not found")
    status, _, text = await raw(acl_fake, "PUT", "/v1/agent/service/register", json=body)
    assert status == 400 and text.startswith("Invalid Service Meta: ")
    status, _, _ = await raw(acl_fake, "PUT", "/v1/agent/service/register", json=body, token=MASTER)
    assert status == 400


async def test_service_intentions_description_counts_bytes(fake, client):
    with pytest.raises(consul.ConsulException) as exc:
        await client.config.set(
            "service-intentions", "db", {"Sources": [{"Name": "web", "Action": "allow", "Description": CJK_540_BYTES}]}
        )
    assert str(exc.value) == "500 Sources[0].Description exceeds maximum length 512"
    assert await client.config.get("service-intentions", "db") is None
    assert await client.config.set(
        "service-intentions", "db", {"Sources": [{"Name": "web", "Action": "allow", "Description": CJK_510_BYTES}]}
    )
    entry = await client.config.get("service-intentions", "db")
    assert entry["Sources"][0]["Description"] == CJK_510_BYTES


async def test_exact_intention_description_counts_bytes(fake, raw):
    params = {"source": "web", "destination": "db"}
    status, _, text = await raw(
        fake,
        "PUT",
        "/v1/connect/intentions/exact",
        params=params,
        json={"Action": "allow", "Description": CJK_540_BYTES},
    )
    assert (status, text) == (500, "Sources[0].Description exceeds maximum length 512")
    status, _, _ = await raw(fake, "GET", "/v1/connect/intentions/exact", params=params)
    assert status == 404
    status, _, text = await raw(
        fake,
        "PUT",
        "/v1/connect/intentions/exact",
        params=params,
        json={"Action": "allow", "Description": CJK_510_BYTES},
    )
    assert (status, text) == (200, "true")


async def test_service_intentions_entry_meta_counts_bytes(fake, raw):
    # agent/structs/config_entry.go validateConfigEntryMeta, wrapped in a go-multierror.
    body = {
        "Kind": "service-intentions",
        "Name": "db",
        "Meta": {"note": CJK_540_BYTES},
        "Sources": [{"Name": "web", "Action": "allow"}],
    }
    status, _, text = await raw(fake, "PUT", "/v1/config", json=body)
    assert status == 500
    assert text == '1 error occurred:\n\t* Meta value for key "note" exceeds maximum length 512\n\n'
    body["Meta"] = {"note": CJK_510_BYTES}
    status, _, text = await raw(fake, "PUT", "/v1/config", json=body)
    assert (status, text) == (200, "true")


async def test_acl_token_description_has_no_length_limit(acl_fake, admin):
    # auth/token_writer.go (Create/write) checks no Description length: Consul stores any size.
    token = await admin.acl.token.create(description=CJK_540_BYTES * 4)
    assert (await admin.acl.token.read(token["AccessorID"]))["Description"] == CJK_540_BYTES * 4
