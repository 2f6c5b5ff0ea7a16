"""Constants and helpers shared by the fake agent's subsystems.

Limits and formats here are Consul's own, each citing the file it comes from
(``agent/config/default.go``, ``agent/structs/structs.go``, ``acl/validation.go``).
"""

from __future__ import annotations

import hashlib
import json
import re

from .acl import (
    ConsulError,
)

CONSUL_VERSION = "1.17.0"
SIDECAR_MIN_PORT = 21000  # agent config sidecar_min_port default
SIDECAR_MAX_PORT = 21255  # agent config sidecar_max_port default
# agent/config/default.go: check_deregister_interval_min = "1m" (agent.addCheck raises anything lower).
CHECK_DEREGISTER_INTERVAL_MIN = 60.0
# ACL token expiration bounds: acl.token_min_expiration_ttl "1m", token_max_expiration_ttl "24h".
TOKEN_MIN_TTL = 60.0
TOKEN_MAX_TTL = 24 * 3600.0
# agent/config/default.go (non-user config): CheckReapInterval 30s. agent.reapServices runs
# reapServicesInternal once per interval, so a service is removed at the first reaper run after
# its check has been critical for longer than DeregisterCriticalServiceAfter - up to 30s later.
CHECK_REAP_INTERVAL = 30.0
# The sidecar's "Connect Sidecar Listening" TCP check: agent/sidecar_service.go
# sidecarDefaultChecks, Interval 10 * time.Second.
SIDECAR_TCP_INTERVAL = 10.0
# A TCP check dial gives up after its Timeout, default 10s (agent/checks/check.go CheckTCP).
TCP_DEFAULT_TIMEOUT = 10.0

PASSING, WARNING, CRITICAL = "passing", "warning", "critical"
_STATUS_RANK = {PASSING: 0, WARNING: 1, CRITICAL: 2}
# acl/validation.go validPolicyName.
_POLICY_NAME = re.compile(r"^[A-Za-z0-9\-_]{1,128}$")
_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
# acl/validation.go validServiceIdentityName and ServiceIdentityNameMaxLength.
_SERVICE_IDENTITY_NAME = re.compile(r"^[a-z0-9]([a-z0-9\-_]*[a-z0-9])?$")
_SPIFFE_SERVICE = re.compile(
    r"^spiffe://(?P<host>[^/]+)(?:/ap/(?P<ap>[^/]+))?/ns/(?P<ns>[^/]+)/dc/(?P<dc>[^/]+)/svc/(?P<svc>[^/]+)$"
)
# Kinds known to structs.MakeConfigEntry (agent/structs/config_entry.go).
KNOWN_KINDS = {
    "service-defaults",
    "proxy-defaults",
    "service-router",
    "service-splitter",
    "service-resolver",
    "ingress-gateway",
    "terminating-gateway",
    "service-intentions",
    "mesh",
    "exported-services",
    "sameness-group",
    "api-gateway",
    "bound-api-gateway",
    "inline-certificate",
    "http-route",
    "tcp-route",
    "jwt-provider",
    "file-system-certificate",
}
HTTP_LIKE = {"http", "http2", "grpc"}  # structs.IsProtocolHTTPLike
# agent/structs/structs.go: metaKeyReservedPrefix, metaMaxKeyPairs, metaKeyMaxLength,
# metaValueMaxLength and metaKeyFormat. Go's len() on a string counts UTF-8 bytes, so every
# length below is compared against _blen(), never against len() of a Python str.
META_KEY_RESERVED_PREFIX = "consul-"
META_MAX_KEY_PAIRS = 64
META_KEY_MAX_LENGTH = 128
META_VALUE_MAX_LENGTH = 512
_META_KEY_FORMAT = re.compile(r"^[a-zA-Z0-9_-]+$")


def _strip_private(d: dict) -> dict:
    return {k: v for k, v in d.items() if not k.startswith("_")}


def _blen(value) -> int:
    """Go's len() of a string: its length in bytes of UTF-8."""
    return len(str(value).encode("utf-8", "surrogatepass"))


def _multierror(errors: list[str]) -> str:
    """hashicorp/go-multierror ListFormatFunc."""
    if len(errors) == 1:
        return f"1 error occurred:\n\t* {errors[0]}\n\n"
    points = "\n\t".join(f"* {e}" for e in errors)
    return f"{len(errors)} errors occurred:\n\t{points}\n\n"


def validate_service_meta(meta: dict, kind: str = "") -> str | None:
    """structs.ValidateServiceMetadata(kind, meta, false): the error text or None.

    A mesh-gateway may carry the one allowed "consul-wan-federation" key
    (allowedConsulMetaKeysForMeshGateway).

    agent/structs/structs.go validateMetadata / validateMetaPair. Go ranges over the map in random
    order, so with several bad pairs Consul may name any of them; the fake names the first.
    """
    if len(meta) > META_MAX_KEY_PAIRS:
        return f"Node metadata cannot contain more than {META_MAX_KEY_PAIRS} key/value pairs"
    for key, value in meta.items():
        key, value = str(key), "" if value is None else str(value)
        if key == "":
            reason = "Key cannot be blank"
        elif not _META_KEY_FORMAT.match(key):
            reason = "Key contains invalid characters"
        elif _blen(key) > META_KEY_MAX_LENGTH:
            reason = f"Key is too long (limit: {META_KEY_MAX_LENGTH} characters)"
        elif key.startswith(META_KEY_RESERVED_PREFIX) and not (
            kind == "mesh-gateway" and key == "consul-wan-federation"
        ):
            reason = f"Key prefix '{META_KEY_RESERVED_PREFIX}' is reserved for internal use"
        elif _blen(value) > META_VALUE_MAX_LENGTH:
            reason = f"Value is too long (limit: {META_VALUE_MAX_LENGTH} characters)"
        else:
            continue
        return f"Couldn't load metadata pair ('{key}', '{value}'): {reason}"
    return None


def validate_config_entry_meta(meta: dict | None) -> None:
    """agent/structs/config_entry.go validateConfigEntryMeta (a go-multierror; 500 via the RPC)."""
    errors = []
    meta = meta or {}
    if len(meta) > META_MAX_KEY_PAIRS:
        errors.append(f"Meta exceeds maximum element count {META_MAX_KEY_PAIRS}")
    for key, value in meta.items():
        if _blen(key) > META_KEY_MAX_LENGTH:
            errors.append(f'Meta key "{key}" exceeds maximum length {META_KEY_MAX_LENGTH}')
        if _blen(value) > META_VALUE_MAX_LENGTH:
            errors.append(f'Meta value for key "{key}" exceeds maximum length {META_VALUE_MAX_LENGTH}')
    if errors:
        raise ConsulError(500, _multierror(errors))


def _canonical_hash(obj) -> str:
    # Stands in for hashstructure's uint64 printed with %x: stable for equal content.
    raw = hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).digest()[:8]
    return f"{int.from_bytes(raw, 'big'):x}"


class FilteredList(list):
    """A result list that says whether ACLs removed entries (QueryMeta.ResultsFilteredByACLs)."""

    filtered_by_acls = False


class FilteredDict(dict):
    """A result map that says whether ACLs removed entries (QueryMeta.ResultsFilteredByACLs)."""

    filtered_by_acls = False


def acl_filtered(result, removed: bool):
    """``result`` marked with whether ACL filtering removed anything from it."""
    out = FilteredList(result) if isinstance(result, list) else FilteredDict(result)
    out.filtered_by_acls = bool(removed)
    return out
