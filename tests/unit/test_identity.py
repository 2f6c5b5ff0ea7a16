"""The pure identity room: the key file's rules, the JWT's claims and signature, the auth method
and binding rule an operator creates."""

import base64
import json
import os

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from consulspawner import identity
from consulspawner.identity import Signer, SigningKeyError


def _unb64(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def _pem(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _write(path, data: bytes, mode: int) -> str:
    path.write_bytes(data)
    os.chmod(path, mode)
    return str(path)


@pytest.mark.parametrize(
    "make", [lambda: ec.generate_private_key(ec.SECP256R1()), lambda: rsa.generate_private_key(65537, 2048)]
)
def test_a_signed_jwt_verifies_with_the_public_key_the_auth_method_holds(tmp_path, make):
    key = make()
    signer = Signer.from_file(_write(tmp_path / "key.pem", _pem(key), 0o600))
    claims = identity.server_claims(
        hub_instance="main",
        audience="consul",
        service_name="jupyter-alice",
        prefix="jupyter-",
        hub_user="alice",
        server_name="",
        incarnation="abc",
        now=1000,
    )
    jwt = signer.sign(claims)
    header_b64, payload_b64, signature_b64 = jwt.split(".")
    header = json.loads(_unb64(header_b64))
    assert header["alg"] == signer.algorithm and header["kid"] == signer.key_id
    assert json.loads(_unb64(payload_b64)) == claims
    public = serialization.load_pem_public_key(
        identity.auth_method(
            "m", hub_instance="main", audience="consul", public_pem=signer.public_pem(), token_lifetime=3600
        )["Config"]["JWTValidationPubKeys"][0].encode()
    )
    signed = f"{header_b64}.{payload_b64}".encode()
    signature = _unb64(signature_b64)
    if signer.algorithm == "ES256":
        assert len(signature) == 64  # JWS r || s, not DER
        der = encode_dss_signature(int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big"))
        public.verify(der, signed, ec.ECDSA(hashes.SHA256()))
    else:
        public.verify(signature, signed, padding.PKCS1v15(), hashes.SHA256())


def test_claims_name_the_server_bind_the_hub_and_live_minutes(tmp_path):
    claims = identity.server_claims(
        hub_instance="main",
        audience="consul",
        service_name="jupyter-bob-2",
        prefix="jupyter-",
        hub_user="bob",
        server_name="gpu",
        incarnation="i1",
        now=5000,
    )
    assert claims["iss"] == "consulspawner:main" and claims["aud"] == ["consul"]
    assert claims["service_suffix"] == "bob-2"
    assert (claims["hub_instance"], claims["hub_user"], claims["server_name"], claims["incarnation"]) == (
        "main",
        "bob",
        "gpu",
        "i1",
    )
    assert claims["nbf"] == claims["iat"] == 5000 and claims["exp"] == 5000 + identity.JWT_LIFETIME


def test_a_service_outside_the_prefix_cannot_be_claimed():
    with pytest.raises(ValueError, match="identity prefix"):
        identity.server_claims(
            hub_instance="main",
            audience="consul",
            service_name="trino-coordinator",
            prefix="jupyter-",
            hub_user="x",
            server_name="",
            incarnation="i",
        )
    with pytest.raises(ValueError):
        identity.service_suffix("jupyter-", "jupyter-")


def test_the_binding_rule_fixes_the_prefix_and_selects_this_hub():
    rule = identity.binding_rule("consulspawner-main", hub_instance="main", prefix="jupyter-")
    assert rule["BindType"] == "service"
    assert rule["BindName"] == "jupyter-${value.service_suffix}"
    assert rule["Selector"] == 'value.hub_instance == "main"'


def test_the_auth_method_binds_issuer_audience_claims_and_a_local_expiring_token():
    method = identity.auth_method("m", hub_instance="main", audience="consul", public_pem="PEM", token_lifetime=900)
    assert method["Type"] == "jwt" and method["MaxTokenTTL"] == "900s" and method["TokenLocality"] == "local"
    config = method["Config"]
    assert config["BoundIssuer"] == "consulspawner:main" and config["BoundAudiences"] == ["consul"]
    assert set(config["ClaimMappings"]) == set(identity.CLAIMS)
    with pytest.raises(ValueError, match="MaxTokenTTL"):
        identity.auth_method("m", hub_instance="main", audience="consul", public_pem="PEM", token_lifetime=30)
    with pytest.raises(ValueError, match="MaxTokenTTL"):
        identity.auth_method("m", hub_instance="main", audience="consul", public_pem="PEM", token_lifetime=90000)


def test_a_key_file_others_can_read_is_refused(tmp_path):
    path = _write(tmp_path / "key.pem", _pem(ec.generate_private_key(ec.SECP256R1())), 0o640)
    with pytest.raises(SigningKeyError, match="readable by others"):
        Signer.from_file(path)


def test_a_missing_or_weak_key_is_refused_without_showing_the_key(tmp_path):
    with pytest.raises(SigningKeyError, match="cannot read"):
        Signer.from_file(str(tmp_path / "absent.pem"))
    weak = _write(tmp_path / "p384.pem", _pem(ec.generate_private_key(ec.SECP384R1())), 0o600)
    with pytest.raises(SigningKeyError, match="P-256"):
        Signer.from_file(weak)
    garbage = _write(tmp_path / "garbage.pem", b"-----BEGIN PRIVATE KEY-----\nnot a key\n", 0o600)
    with pytest.raises(SigningKeyError) as raised:
        Signer.from_file(garbage)
    assert "not a key" not in str(raised.value)


def test_rotation_margin_leaves_room_to_retry_before_expiry():
    assert identity.rotation_margin(86400) == 8640
    assert identity.rotation_margin(600) == 60
    assert identity.rotation_margin(60) == 20


def test_a_jwt_in_a_consul_error_text_is_redacted(tmp_path):
    from consulspawner.consul import _redact

    signer = Signer.from_file(_write(tmp_path / "key.pem", _pem(ec.generate_private_key(ec.SECP256R1())), 0o600))
    jwt = signer.sign({"sub": "x"})
    assert jwt not in _redact(f"ACL not found for bearer {jwt} (login)")
