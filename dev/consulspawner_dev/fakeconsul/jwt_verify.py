"""The ``jwt`` auth method's validator: config checks, signature, time and audience, claim mapping.

Follows Consul's ``internal/go-sso/oidcauth``: ``config.go`` (``Config.Validate`` for type
``jwt`` with static ``JWTValidationPubKeys``), ``jwt.go`` (``verifyVanillaJWT``: the signature
must verify under one of the keys; expiry / not-before defaults from ``ExpirationLeeway`` /
``NotBeforeLeeway`` (150 s when zero, none when negative); ``ClaimsValidateWithLeeway`` with
``ClockSkewLeeway`` (go-jose's ``DefaultLeeway`` of 60 s when zero); the issuer must equal
``BoundIssuer`` when set; the audience check is strict), ``oidc.go`` (``validateAudience``) and
``claims.go`` (``extractStringMetadata`` / ``extractListMetadata``), plus
``agent/consul/authmethod/ssoauth/sso.go`` (``value.<name>`` / ``list.<name>`` fields) and
``authmethod.ParseConfig`` (unknown config keys refused). Only static keys are supported here;
``JWKSURL`` and ``OIDCDiscoveryURL`` would need the network and are refused.

Error texts are those of go-jose v3 (``jwt/errors.go``) and oidcauth; they reach the client as a
500 body, as every non-ACL error of ``ACL.Login`` does.
"""

from __future__ import annotations

import base64
import json

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.x509 import load_pem_x509_certificate

from .godur import DurationError, duration_value

CLAIM_DEFAULT_LEEWAY = 150.0  # oidcauth/jwt.go claimDefaultLeeway
JOSE_DEFAULT_LEEWAY = 60.0  # go-jose jwt.DefaultLeeway (1 minute)

_CONFIG_KEYS = {
    "JWTSupportedAlgs",
    "BoundAudiences",
    "ClaimMappings",
    "ListClaimMappings",
    "OIDCDiscoveryURL",
    "OIDCDiscoveryCACert",
    "JWKSURL",
    "JWKSCACert",
    "JWTValidationPubKeys",
    "BoundIssuer",
    "ExpirationLeeway",
    "NotBeforeLeeway",
    "ClockSkewLeeway",
}
_HASHES = {"256": hashes.SHA256, "384": hashes.SHA384, "512": hashes.SHA512}
_CURVES = {"ES256": ec.SECP256R1, "ES384": ec.SECP384R1, "ES512": ec.SECP521R1}


class JWTError(ValueError):
    """A config or a bearer token the jwt auth method refuses (its text is Consul's)."""


def _parse_public_key(pem: str):
    """oidcauth/jwt.go parsePublicKeyPEM: PKIX public key, else a certificate's key."""
    data = pem.encode() if isinstance(pem, str) else pem
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError:
        try:
            key = load_pem_x509_certificate(data).public_key()
        except ValueError:
            raise JWTError("data does not contain any valid RSA, ECDSA, or ED25519 public keys") from None
    if not isinstance(key, (rsa.RSAPublicKey, ec.EllipticCurvePublicKey, ed25519.Ed25519PublicKey)):
        raise JWTError("data does not contain any valid RSA, ECDSA, or ED25519 public keys")
    return key


def validate_config(raw) -> dict:
    """authmethod.ParseConfig + oidcauth Config.Validate for type jwt; returns the config."""
    config = dict(raw or {})
    unknown = sorted(k for k in config if k not in _CONFIG_KEYS)
    if unknown:
        raise JWTError(f"1 error(s) decoding:\n\n* '' has invalid keys: {', '.join(unknown)}")
    for name in ("ExpirationLeeway", "NotBeforeLeeway", "ClockSkewLeeway"):
        if config.get(name) not in (None, ""):
            try:
                duration_value(config[name])
            except DurationError as err:
                raise JWTError(f"1 error(s) decoding:\n\n* error decoding '{name}': {err}") from None
    sources = sum(1 for k in ("OIDCDiscoveryURL", "JWTValidationPubKeys", "JWKSURL") if config.get(k))
    if sources != 1:
        raise JWTError(
            "exactly one of 'JWTValidationPubKeys', 'JWKSURL', or 'OIDCDiscoveryURL' must be set for type \"jwt\""
        )
    if not config.get("JWTValidationPubKeys"):
        raise JWTError("the fake Consul agent supports only JWTValidationPubKeys (no network fetches)")
    for i, pem in enumerate(config["JWTValidationPubKeys"]):
        try:
            _parse_public_key(pem)
        except JWTError as err:
            raise JWTError(f"error parsing public key JWTValidationPubKeys[{i}]: {err}") from None
    for alg in config.get("JWTSupportedAlgs") or []:
        if alg not in ("RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "PS384", "PS512"):
            raise JWTError(f"Invalid supported algorithm: {alg}")
    for field in ("ClaimMappings", "ListClaimMappings"):
        targets = list((config.get(field) or {}).values())
        for target in targets:
            if targets.count(target) > 1:
                raise JWTError(f'{field} contains multiple mappings for key "{target}"')
    return config


def _b64(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def _verify_with(key, alg: str, signing_input: bytes, sig: bytes) -> bool:
    try:
        if alg.startswith("RS") and isinstance(key, rsa.RSAPublicKey) and alg[2:] in _HASHES:
            key.verify(sig, signing_input, padding.PKCS1v15(), _HASHES[alg[2:]]())
        elif alg.startswith("PS") and isinstance(key, rsa.RSAPublicKey) and alg[2:] in _HASHES:
            h = _HASHES[alg[2:]]()
            key.verify(sig, signing_input, padding.PSS(mgf=padding.MGF1(h), salt_length=h.digest_size), h)
        elif alg in _CURVES and isinstance(key, ec.EllipticCurvePublicKey):
            if not isinstance(key.curve, _CURVES[alg]):
                return False
            size = (key.curve.key_size + 7) // 8
            if len(sig) != 2 * size:
                return False
            r, s = int.from_bytes(sig[:size], "big"), int.from_bytes(sig[size:], "big")
            key.verify(encode_dss_signature(r, s), signing_input, ec.ECDSA(_HASHES[alg[2:]]()))
        elif alg == "EdDSA" and isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(sig, signing_input)
        else:
            return False
    except InvalidSignature:
        return False
    return True


def _leeway(config: dict, name: str, default: float) -> float:
    value = duration_value(config.get(name) or 0)
    return 0.0 if value < 0 else (default if value == 0 else value)


_UNVERIFIED = "no known key successfully validated the token signature"


def _numeric(claims: dict, name: str) -> float:
    value = claims.get(name)
    if value is None:
        return 0.0
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        # go-jose: parsedJWT.Claims(key, ...) verifies AND unmarshals; an unmarshal error makes
        # every key "fail", so Consul reports the signature error.
        raise JWTError(_UNVERIFIED)
    return float(int(value))


def _check_registered_types(claims: dict) -> None:
    """jwt.Claims unmarshal: iss/sub/jti strings, aud a string or a list of strings."""
    for name in ("iss", "sub", "jti"):
        if claims.get(name) is not None and not isinstance(claims[name], str):
            raise JWTError(_UNVERIFIED)
    aud = claims.get("aud")
    if aud is not None and not (
        isinstance(aud, str) or (isinstance(aud, list) and all(isinstance(a, str) for a in aud))
    ):
        raise JWTError(_UNVERIFIED)


def verify(config: dict, token: str, now: float) -> dict:
    """verifyVanillaJWT with static keys: all the token's claims, or :class:`JWTError`."""
    if not token:
        raise JWTError("missing jwt")
    parts = token.split(".")
    try:
        if len(parts) != 3:
            raise ValueError("compact JWS format must have three parts")
        header = json.loads(_b64(parts[0]))
        payload = _b64(parts[1])
        sig = _b64(parts[2])
        claims = json.loads(payload)
        if not isinstance(header, dict) or not isinstance(claims, dict):
            raise ValueError("not a JSON object")
    except ValueError as err:
        raise JWTError(f"error parsing token: {err}") from None
    alg = str(header.get("alg", ""))
    signing_input = f"{parts[0]}.{parts[1]}".encode()
    if not any(_verify_with(_parse_public_key(k), alg, signing_input, sig) for k in config["JWTValidationPubKeys"]):
        raise JWTError(_UNVERIFIED)
    _check_registered_types(claims)
    iat, exp, nbf = _numeric(claims, "iat"), _numeric(claims, "exp"), _numeric(claims, "nbf")
    if iat == 0 and exp == 0 and nbf == 0:
        raise JWTError("no issue time, notbefore, or expiration time encoded in token")
    if exp == 0:
        exp = max(iat, nbf) + _leeway(config, "ExpirationLeeway", CLAIM_DEFAULT_LEEWAY)
    if nbf == 0:
        nbf = iat if iat != 0 else exp - _leeway(config, "NotBeforeLeeway", CLAIM_DEFAULT_LEEWAY)
    skew = _leeway(config, "ClockSkewLeeway", JOSE_DEFAULT_LEEWAY)
    # go-jose Claims.ValidateWithLeeway, in its order: issuer, then nbf, exp, iat.
    if config.get("BoundIssuer") and claims.get("iss") != config["BoundIssuer"]:
        raise JWTError("error validating claims: go-jose/go-jose/jwt: validation failed, invalid issuer claim (iss)")
    if now + skew < nbf:
        raise JWTError("error validating claims: go-jose/go-jose/jwt: validation failed, token not valid yet (nbf)")
    if now - skew > exp:
        raise JWTError("error validating claims: go-jose/go-jose/jwt: validation failed, token is expired (exp)")
    if iat and now + skew < iat:
        raise JWTError(
            "error validating claims: go-jose/go-jose/jwt: validation field, token issued in the future (iat)"
        )
    aud = claims.get("aud")
    audiences = [aud] if isinstance(aud, str) else list(aud or [])
    bound = config.get("BoundAudiences") or []
    # oidc.go validateAudience(bound, aud, strict=true)
    if not bound and audiences:
        raise JWTError("error validating claims: audience claim found in JWT but no audiences are bound")
    if bound and not any(b in audiences for b in bound):
        raise JWTError("error validating claims: aud claim does not match any bound audience")
    return claims


def _claim(claims: dict, name: str):
    """claims.go getClaim: a JSON pointer when the name starts with '/', else a top-level key."""
    if not name.startswith("/"):
        return claims.get(name)
    value = claims
    for part in name[1:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return None
    return value


def _stringify(value) -> str | None:
    """claims.go stringifyMetadataValue."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 1e21 else repr(value)
    return None


def extract(config: dict, claims: dict) -> tuple[dict[str, str], dict[str, list[str]]]:
    """Claims -> (values, lists) for ``value.<name>`` / ``list.<name>``, empty for unmapped keys."""
    values = {name: "" for name in (config.get("ClaimMappings") or {}).values()}
    lists: dict[str, list[str]] = {name: [] for name in (config.get("ListClaimMappings") or {}).values()}
    for claim, name in (config.get("ClaimMappings") or {}).items():
        raw = _claim(claims, claim)
        if raw is None:
            continue
        text = _stringify(raw)
        if text is None:
            raise JWTError(f"error converting claim '{claim}' to string from unknown type {type(raw).__name__}")
        values[name] = text
    for claim, name in (config.get("ListClaimMappings") or {}).items():
        raw = _claim(claims, claim)
        if raw is None:
            continue
        items = raw if isinstance(raw, list) else [raw]
        out = []
        for item in items:
            text = _stringify(item)
            if text is None:
                raise JWTError(f"error converting claim '{claim}' to string from unknown type {type(item).__name__}")
            out.append(text)
        lists[name] = out
    return values, lists
