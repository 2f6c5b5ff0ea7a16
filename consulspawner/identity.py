"""How a server gets its Consul identity: a JWT the hub signs, exchanged at Consul's JWT auth method.

No process of ours holds ``acl:write``. The hub holds only a signing key; Consul holds the
matching public key in an auth method (type ``jwt``) and a binding rule that turns a verified
JWT into a token with exactly one service identity. Nomad 1.7's workload identities and
consul-k8s' pods work the same way. What each side decides:

- the hub decides *which* server a JWT names (claims: service, hub instance, hub user, server
  name, incarnation) and signs it for a few minutes;
- Consul decides *what* that is worth: it checks the signature, issuer, audience and expiry
  (``internal/go-sso/oidcauth/jwt.go``), maps claims to ``value.*`` (``ClaimMappings``), selects
  the binding rule, and makes a token whose ``ServiceIdentities`` is ``<prefix>${value.service_suffix}``
  (``agent/consul/auth/binder.go``), local and expiring after ``MaxTokenTTL``
  (``agent/consul/auth/login.go``). Because the prefix is fixed in the rule, even a stolen
  signing key can only ever produce ``jupyter-*`` identities.

This module is pure apart from reading the key file once: the Consul calls (login, logout,
token/self) are in :mod:`consulspawner.consul`, their sequencing in the spawner.
"""

from __future__ import annotations

import base64
import json
import os
import stat
import time
import uuid
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

# Claims we sign, each mapped by the auth method to ``value.<same name>``.
CLAIM_SERVICE_SUFFIX = "service_suffix"
CLAIM_HUB = "hub_instance"
CLAIM_USER = "hub_user"
CLAIM_SERVER = "server_name"
CLAIM_INCARNATION = "incarnation"
CLAIMS = (CLAIM_SERVICE_SUFFIX, CLAIM_HUB, CLAIM_USER, CLAIM_SERVER, CLAIM_INCARNATION)

# A JWT is only ever exchanged once, at once: it needs to live just long enough for a slow
# login (retries included). Consul allows 150 s of clock skew by default
# (ExpirationLeeway/NotBeforeLeeway 0 -> jwt.DefaultLeeway, oidcauth/jwt.go).
JWT_LIFETIME = 120
# Consul refuses MaxTokenTTL outside [1m, 24h] (agent/consul/acl_endpoint.go AuthMethodSet:
# "MaxTokenTTL ... cannot be less than/more than").
MIN_TOKEN_TTL = 60
MAX_TOKEN_TTL = 24 * 3600


class SigningKeyError(ValueError):
    """The signing key file is missing, readable by others, or not an EC P-256 / RSA key."""


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


@dataclass(frozen=True)
class Signer:
    """The hub's JWT signing key: ES256 (EC P-256) or RS256 (RSA >= 2048 bits).

    Loaded from a file that only its owner may read (mode 0600 or stricter): the key is what
    lets a caller obtain ``jupyter-*`` identities, so it never travels in the environment, a
    URL or a log line. ``key_id`` is a fingerprint of the public key, never of the private one.
    """

    private_key: Any
    algorithm: str
    key_id: str

    @classmethod
    def from_file(cls, path: str) -> Signer:
        try:
            info = os.stat(path)
            with open(path, "rb") as f:
                pem = f.read()
        except OSError as e:
            raise SigningKeyError(f"cannot read the JWT signing key file {path}: {e.strerror}") from None
        if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise SigningKeyError(
                f"the JWT signing key file {path} is readable by others (mode {stat.S_IMODE(info.st_mode):o}); "
                "make it 0600: whoever reads it can log servers into Consul"
            )
        return cls.from_pem(pem, source=path)

    @classmethod
    def from_pem(cls, pem: bytes, *, source: str = "the key") -> Signer:
        try:
            key = serialization.load_pem_private_key(pem, password=None)
        except (ValueError, TypeError):
            raise SigningKeyError(f"{source} is not an unencrypted PEM private key") from None
        if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1):
            algorithm = "ES256"
        elif isinstance(key, rsa.RSAPrivateKey) and key.key_size >= 2048:
            algorithm = "RS256"
        else:
            raise SigningKeyError(f"{source} must be an EC P-256 (ES256) or RSA >= 2048-bit (RS256) key")
        public_der = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        digest = hashes.Hash(hashes.SHA256())
        digest.update(public_der)
        return cls(key, algorithm, _b64url(digest.finalize())[:16])

    def public_pem(self) -> str:
        """The public key as Consul's ``JWTValidationPubKeys`` takes it."""
        return (
            self.private_key.public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
            .decode("ascii")
        )

    def sign(self, claims: dict[str, Any]) -> str:
        """A compact JWS (RFC 7515) of ``claims``."""
        header = {"alg": self.algorithm, "typ": "JWT", "kid": self.key_id}
        signing_input = (
            _b64url(json.dumps(header, separators=(",", ":")).encode())
            + "."
            + _b64url(json.dumps(claims, separators=(",", ":"), ensure_ascii=False).encode())
        ).encode("ascii")
        if self.algorithm == "ES256":
            der = self.private_key.sign(signing_input, ec.ECDSA(hashes.SHA256()))
            r, s = decode_dss_signature(der)
            signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")  # JWS wants r || s, not DER
        else:
            signature = self.private_key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
        return signing_input.decode("ascii") + "." + _b64url(signature)


def issuer(hub_instance: str) -> str:
    """The JWT issuer, bound to one hub instance: another hub's JWTs fail ``BoundIssuer``."""
    return f"consulspawner:{hub_instance}"


def service_suffix(service_name: str, prefix: str) -> str:
    """The part of a service name the binding rule appends to its fixed prefix."""
    if not service_name.startswith(prefix) or len(service_name) == len(prefix):
        raise ValueError(f"service name {service_name!r} does not start with the identity prefix {prefix!r}")
    return service_name[len(prefix) :]


def server_claims(
    *,
    hub_instance: str,
    audience: str,
    service_name: str,
    prefix: str,
    hub_user: str,
    server_name: str,
    incarnation: str,
    now: float | None = None,
) -> dict[str, Any]:
    """The claims of one server's login JWT: who it is, for which hub, valid for a few minutes."""
    issued = int(time.time() if now is None else now)
    return {
        "iss": issuer(hub_instance),
        "aud": [audience],
        "sub": service_name,
        "iat": issued,
        "nbf": issued,
        "exp": issued + JWT_LIFETIME,
        "jti": uuid.uuid4().hex,
        CLAIM_SERVICE_SUFFIX: service_suffix(service_name, prefix),
        CLAIM_HUB: hub_instance,
        CLAIM_USER: hub_user,
        CLAIM_SERVER: server_name,
        CLAIM_INCARNATION: incarnation,
    }


def auth_method(
    name: str, *, hub_instance: str, audience: str, public_pem: str, token_lifetime: int, locality: str = "local"
) -> dict[str, Any]:
    """The ``jwt`` auth method an operator creates once per hub (docs: api-docs/acl/auth-methods,
    security/acl/auth-methods/jwt). Tokens are local (they never replicate) and expire after
    ``token_lifetime`` seconds."""
    if not MIN_TOKEN_TTL <= token_lifetime <= MAX_TOKEN_TTL:
        raise ValueError(f"token lifetime {token_lifetime}s is outside Consul's MaxTokenTTL range 60s..24h")
    return {
        "Name": name,
        "Type": "jwt",
        "DisplayName": f"consulspawner hub {hub_instance}",
        "Description": f"Notebook servers of JupyterHub {hub_instance} (consulspawner)",
        "MaxTokenTTL": f"{token_lifetime}s",
        "TokenLocality": locality,
        "Config": {
            "JWTValidationPubKeys": [public_pem],
            "BoundIssuer": issuer(hub_instance),
            "BoundAudiences": [audience],
            "JWTSupportedAlgs": ["ES256", "RS256"],
            "ClaimMappings": {claim: claim for claim in CLAIMS},
        },
    }


def binding_rule(auth_method_name: str, *, hub_instance: str, prefix: str) -> dict[str, Any]:
    """The one binding rule: a JWT of this hub becomes the service identity ``<prefix><suffix>``.

    The prefix is part of the rule, not of the JWT, so no JWT can name a service outside it;
    Consul refuses a login whose interpolated name is not a valid service identity name
    (``agent/consul/auth/binder.go``), which also refuses a suffix with characters Consul's
    names do not allow.
    """
    return {
        "AuthMethod": auth_method_name,
        "Description": f"consulspawner: servers of hub {hub_instance} as {prefix}*",
        "Selector": f'value.{CLAIM_HUB} == "{hub_instance}"',
        "BindType": "service",
        "BindName": prefix + "${value." + CLAIM_SERVICE_SUFFIX + "}",
    }


def rotation_margin(token_lifetime: float) -> float:
    """How long before its token expires a running server logs in again: a tenth of the
    lifetime, or a minute when that leaves a third of it, so failed attempts are retried before
    the old token ends."""
    return max(token_lifetime / 10, min(60.0, token_lifetime / 3))
