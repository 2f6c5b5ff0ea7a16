"""A Connect CA like Consul's built-in provider: an EC P-256 root that signs SPIFFE leaf certs.

Shapes follow ``website/content/api-docs/agent/connect.mdx`` (roots and leaf responses) and the
built-in provider's conventions: root ``ID`` is the colon-hex SHA-1 fingerprint of the root
certificate, ``SigningKeyID`` the colon-hex key id (SHA-256 of the public key, also used as the
subject key identifier), leaf serials are small increasing integers printed colon-hex, the
default leaf TTL is 72h and the root TTL 10 years (87600h).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import secrets
import uuid

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .godur import format_time, format_time_seconds

LEAF_TTL = 72 * 3600.0
ROOT_TTL = 87600 * 3600.0


def colon_hex(data: bytes) -> str:
    """Consul's connect.HexString: lower-case hex bytes joined by colons."""
    return ":".join(f"{b:02x}" for b in data)


def _key_id(public_key) -> bytes:
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).digest()


def _dt_utc(ts: float) -> _dt.datetime:
    return _dt.datetime.fromtimestamp(int(ts), tz=_dt.timezone.utc)


def serial_text(serial: int) -> str:
    # connect.EncodeSerialNumber: hex of the big-endian bytes of the serial, colon separated.
    length = max(1, (serial.bit_length() + 7) // 8)
    return colon_hex(serial.to_bytes(length, "big"))


class ConnectCA:
    """The cluster's trust domain, active root and leaf issuance."""

    def __init__(self, now: float, datacenter: str):
        self.datacenter = datacenter
        self.cluster_id = str(uuid.uuid4())
        self.trust_domain = f"{self.cluster_id}.consul"
        self._key = ec.generate_private_key(ec.SECP256R1())
        self._key_id = _key_id(self._key.public_key())
        self._next_serial = 2
        root_serial = 1
        not_before = now - 60
        not_after = now + ROOT_TTL
        name = x509.Name(
            [
                x509.NameAttribute(
                    NameOID.COMMON_NAME, f"pri-{secrets.token_hex(4)}.consul.ca.{self.cluster_id[:8]}.consul"
                )
            ]
        )
        builder = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self._key.public_key())
            .serial_number(root_serial)
            .not_valid_before(_dt_utc(not_before))
            .not_valid_after(_dt_utc(not_after))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier(self._key_id), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier(self._key_id, None, None), critical=False)
            .add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(f"spiffe://{self.trust_domain}")]),
                critical=False,
            )
            .add_extension(
                x509.NameConstraints(permitted_subtrees=[x509.DNSName(self.trust_domain)], excluded_subtrees=None),
                critical=True,
            )
        )
        self.root_cert = builder.sign(self._key, hashes.SHA256())
        self.root_pem = self.root_cert.public_bytes(serialization.Encoding.PEM).decode()
        fingerprint = hashlib.sha1(self.root_cert.public_bytes(serialization.Encoding.DER)).digest()
        self.root_id = colon_hex(fingerprint)
        self.root_not_before = not_before
        self.root_not_after = not_after
        self.root_serial = root_serial

    def spiffe_service(self, service: str, namespace: str = "default") -> str:
        return f"spiffe://{self.trust_domain}/ns/{namespace}/dc/{self.datacenter}/svc/{service}"

    def roots_body(self, index: int) -> dict:
        """IndexedCARoots as /v1/agent/connect/ca/roots answers it."""
        return {
            "ActiveRootID": self.root_id,
            "TrustDomain": self.trust_domain,
            "Roots": [
                {
                    "ID": self.root_id,
                    "Name": "Consul CA Primary Cert",
                    "SerialNumber": self.root_serial,
                    "SigningKeyID": colon_hex(self._key_id),
                    "ExternalTrustDomain": self.cluster_id,
                    "NotBefore": format_time_seconds(self.root_not_before),
                    "NotAfter": format_time_seconds(self.root_not_after),
                    "RootCert": self.root_pem,
                    "IntermediateCerts": None,
                    "Active": True,
                    "PrivateKeyType": "ec",
                    "PrivateKeyBits": 256,
                    "CreateIndex": index,
                    "ModifyIndex": index,
                }
            ],
        }

    def issue_leaf(self, service: str, now: float, index: int) -> dict:
        """A new leaf certificate and key for ``service`` (IssuedCert as the agent answers it)."""
        key = ec.generate_private_key(ec.SECP256R1())
        serial = self._next_serial
        self._next_serial += 1
        uri = self.spiffe_service(service)
        valid_after = now - 60
        valid_before = now + LEAF_TTL
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, service)]))
            .issuer_name(self.root_cert.subject)
            .public_key(key.public_key())
            .serial_number(serial)
            .not_valid_before(_dt_utc(valid_after))
            .not_valid_after(_dt_utc(valid_before))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=True,
                    data_encipherment=False,
                    key_agreement=True,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]),
                critical=False,
            )
            .add_extension(x509.SubjectKeyIdentifier(_key_id(key.public_key())), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier(self._key_id, None, None), critical=False)
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
        ).decode()
        return {
            "SerialNumber": serial_text(serial),
            "CertPEM": cert.public_bytes(serialization.Encoding.PEM).decode(),
            "PrivateKeyPEM": key_pem,
            "Service": service,
            "ServiceURI": uri,
            "ValidAfter": format_time_seconds(valid_after),
            "ValidBefore": format_time_seconds(valid_before),
            "CreateIndex": index,
            "ModifyIndex": index,
            # private bookkeeping, stripped before answering
            "_valid_after": valid_after,
            "_valid_before": valid_before,
            "_issued": format_time(now),
        }
