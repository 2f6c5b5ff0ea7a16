"""Connect CA roots and leaf certificates."""

import asyncio
import datetime as dt

import consul
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec


def _cert(pem: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem.encode())


async def test_roots_shape(fake, client, raw):
    roots = await client.agent.connect.ca.roots()
    assert roots["TrustDomain"].endswith(".consul")
    assert len(roots["Roots"]) == 1
    root = roots["Roots"][0]
    assert root["ID"] == roots["ActiveRootID"] and root["Active"] is True
    assert root["Name"] == "Consul CA Primary Cert"
    assert (root["PrivateKeyType"], root["PrivateKeyBits"]) == ("ec", 256)
    assert len(root["ID"].split(":")) == 20  # SHA-1 fingerprint, colon-hex
    cert = _cert(root["RootCert"])
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [f"spiffe://{roots['TrustDomain']}"]
    # The non-agent endpoint answers the same roots.
    non_agent = await client.connect.ca.roots()
    assert non_agent["ActiveRootID"] == roots["ActiveRootID"]
    status, headers, _ = await raw(fake, "GET", "/v1/agent/connect/ca/roots")
    assert status == 200 and int(headers["X-Consul-Index"]) >= 1


async def test_leaf_verifies_against_root_with_spiffe_uri(fake, client):
    roots = await client.agent.connect.ca.roots()
    root = _cert(roots["Roots"][0]["RootCert"])
    leaf = await client.agent.connect.ca.leaf("web")
    cert = _cert(leaf["CertPEM"])
    cert.verify_directly_issued_by(root)  # raises if not signed by the root
    uri = f"spiffe://{roots['TrustDomain']}/ns/default/dc/dc1/svc/web"
    assert leaf["ServiceURI"] == uri
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [uri]
    assert leaf["Service"] == "web"
    assert int(leaf["SerialNumber"].replace(":", ""), 16) == cert.serial_number
    # 72h default lifetime.
    after = dt.datetime.fromisoformat(leaf["ValidAfter"].replace("Z", "+00:00"))
    before = dt.datetime.fromisoformat(leaf["ValidBefore"].replace("Z", "+00:00"))
    assert before - after == dt.timedelta(hours=72, minutes=1)  # backdated one minute
    assert cert.not_valid_after_utc == before
    # The private key matches the certificate.
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(leaf["PrivateKeyPEM"].encode(), None)
    assert key.public_key().public_numbers() == cert.public_key().public_numbers()


async def test_leaf_is_cached_and_reissued_near_expiry(fake, client):
    first = await client.agent.connect.ca.leaf("web")
    again = await client.agent.connect.ca.leaf("web")
    assert again["SerialNumber"] == first["SerialNumber"]
    other = await client.agent.connect.ca.leaf("db")
    assert other["SerialNumber"] != first["SerialNumber"]
    fake.advance(0.5 * 72 * 3600)  # half-way: still valid and not due for renewal
    assert (await client.agent.connect.ca.leaf("web"))["SerialNumber"] == first["SerialNumber"]
    fake.advance(0.45 * 72 * 3600)  # past 90%: renewed
    renewed = await client.agent.connect.ca.leaf("web")
    assert renewed["SerialNumber"] != first["SerialNumber"]
    assert renewed["ModifyIndex"] > first["ModifyIndex"]


async def test_leaf_blocking_query_returns_on_rotation(fake, client, raw, arrived, attempts_of):
    status, headers, _ = await raw(fake, "GET", "/v1/agent/connect/ca/leaf/web")
    index = int(headers["X-Consul-Index"])
    before = attempts_of(fake, "/v1/agent/connect/ca/leaf/web")
    task = asyncio.ensure_future(
        raw(fake, "GET", "/v1/agent/connect/ca/leaf/web", params={"index": str(index), "wait": "30s"})
    )
    await arrived(fake, "/v1/agent/connect/ca/leaf/web", before)
    assert not task.done()
    fake.advance(72 * 3600)  # from the test thread: forces a renewal
    status, headers, _ = await asyncio.wait_for(task, 10)
    assert status == 200 and int(headers["X-Consul-Index"]) > index


async def test_leaf_needs_service_write_under_acls(acl_fake, admin, make_client):
    token = await admin.acl.token.create(service_identities=[{"ServiceName": "web"}])
    c = make_client(acl_fake, token["SecretID"])
    assert (await c.agent.connect.ca.leaf("web"))["Service"] == "web"
    assert (await c.agent.connect.ca.leaf("web-sidecar-proxy"))["Service"] == "web-sidecar-proxy"
    with pytest.raises(consul.ACLPermissionDenied, match="'service:write' on \"db\""):
        await c.agent.connect.ca.leaf("db")
    roots = await make_client(acl_fake).agent.connect.ca.roots()  # roots need no token
    assert roots["Roots"]
