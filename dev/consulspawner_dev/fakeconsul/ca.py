"""A Connect CA like Consul's built-in provider: an EC P-256 root that signs SPIFFE leaf certs.

Shapes follow ``website/content/api-docs/agent/connect.mdx`` (roots and leaf responses) and the
built-in provider's conventions: root ``ID`` is the colon-hex SHA-1 fingerprint of the root
certificate, ``SigningKeyID`` the colon-hex key id (SHA-256 of the public key, also used as the
subject key identifier), leaf serials are small increasing integers printed colon-hex, the
default leaf TTL is 72h and the root TTL 10 years (87600h).

Rotation (``State.rotate_ca``) follows ``agent/consul/leader_connect_ca.go``
(``CAManager.UpdateConfiguration``): the new root keeps the cluster's trust domain, the old
provider cross-signs it (``CrossSignCA``) and the cross-signed certificate becomes the new root's
``IntermediateCerts``, which ``SignCertificate`` appends to every leaf's ``CertPEM`` ("Append any
intermediates needed by this root"), so a peer that still trusts only the old root verifies new
leaves; the old root stays in ``Roots`` with ``Active: false`` until pruned.
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
    return _dt.datetime.fromtimestamp(int(ts), tz=_dt.UTC)


def serial_text(serial: int) -> str:
    # connect.EncodeSerialNumber: hex of the big-endian bytes of the serial, colon separated.
    length = max(1, (serial.bit_length() + 7) // 8)
    return colon_hex(serial.to_bytes(length, "big"))


class ConnectCA:
    """The cluster's trust domain, active root and leaf issuance."""

    def __init__(self, now: float, datacenter: str, cluster_id: str | None = None, root_serial: int = 1):
        self.datacenter = datacenter
        # A rotation keeps the cluster ID, hence the trust domain (connect.SpiffeIDSigningForCluster).
        self.cluster_id = cluster_id or str(uuid.uuid4())
        self.trust_domain = f"{self.cluster_id}.consul"
        self._key = ec.generate_private_key(ec.SECP256R1())
        self._key_id = _key_id(self._key.public_key())
        self._next_serial = root_serial + 1
        # Cross-signed certificates of this root by earlier roots (the CARoot's IntermediateCerts).
        self.intermediate_pems: list[str] = []
        self.rotated_out_at: float | None = None
        self.create_index = 0
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

    def cross_sign(self, newer: ConnectCA, now: float) -> str:
        """The newer root's certificate signed by this root's key (provider_consul CrossSignCA:
        the new root as template, issuer and authority key ID of the old one), as PEM."""
        serial = self._next_serial
        self._next_serial += 1
        template = newer.root_cert
        builder = (
            x509.CertificateBuilder()
            .subject_name(template.subject)
            .issuer_name(self.root_cert.subject)
            .public_key(newer._key.public_key())
            .serial_number(serial)
            .not_valid_before(_dt_utc(now - 60))
            .not_valid_after(_dt_utc(min(newer.root_not_after, self.root_not_after)))
        )
        for ext in template.extensions:
            if isinstance(ext.value, x509.AuthorityKeyIdentifier):
                continue
            builder = builder.add_extension(ext.value, critical=ext.critical)
        builder = builder.add_extension(x509.AuthorityKeyIdentifier(self._key_id, None, None), critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        return cert.public_bytes(serialization.Encoding.PEM).decode()

    def root_entry(self, active: bool) -> dict:
        """One CARoot of /v1/agent/connect/ca/roots."""
        entry = {
            "ID": self.root_id,
            "Name": "Consul CA Primary Cert",
            "SerialNumber": self.root_serial,
            "SigningKeyID": colon_hex(self._key_id),
            "ExternalTrustDomain": self.cluster_id,
            "NotBefore": format_time_seconds(self.root_not_before),
            "NotAfter": format_time_seconds(self.root_not_after),
            "RootCert": self.root_pem,
            "IntermediateCerts": list(self.intermediate_pems) or None,
            "Active": active,
            "PrivateKeyType": "ec",
            "PrivateKeyBits": 256,
            "CreateIndex": self.create_index,
            "ModifyIndex": self.create_index,
        }
        # RotatedOutAt is kept (self.rotated_out_at) but not answered: structs.CARoot tags it
        # `json:"-"`.
        return entry

    def roots_body(self, inactive: list[ConnectCA] | None = None) -> dict:
        """IndexedCARoots as /v1/agent/connect/ca/roots answers it: the rotated-out roots first,
        then the active one (UpdateConfiguration appends the new root after the old ones)."""
        return {
            "ActiveRootID": self.root_id,
            "TrustDomain": self.trust_domain,
            "Roots": [ca.root_entry(False) for ca in inactive or []] + [self.root_entry(True)],
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
            # SignCertificate: "Append any intermediates needed by this root" (the cross-signed
            # certificates after a rotation), so peers that trust only the old root verify it.
            "CertPEM": cert.public_bytes(serialization.Encoding.PEM).decode()
            + "".join(p if p.endswith("\n") else p + "\n" for p in self.intermediate_pems),
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
