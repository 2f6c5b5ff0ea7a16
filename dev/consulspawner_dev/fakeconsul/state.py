"""The fake agent's state and Consul's rules for changing it.

Everything here is synchronous and guarded by one re-entrant lock, so the HTTP handlers (on the
server's event loop) and the test thread (``advance()``, ``snapshot()``) can both use it. Every
write bumps a global raft-like index; each query reports the highest index of the tables it reads
(``table_index``), which is what blocking queries compare against - so a write to service A does
not wake a blocking query on service B, as in Consul's per-service index tracking
(``agent/consul/state/catalog.go`` ``maxIndexForService``).

Errors are raised as :class:`ConsulError` carrying the status code and text Consul would answer.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import random
import re
import threading
import time
import uuid

from . import decode
from .acl import (
    ACL_DISABLED,
    ALLOW_ALL,
    ANONYMOUS_ACCESSOR,
    GLOBAL_MANAGEMENT_ID,
    GLOBAL_MANAGEMENT_NAME,
    GLOBAL_MANAGEMENT_RULES,
    PERMISSION_DENIED,
    Authorizer,
    ConsulError,
    RulesError,
    not_found_acl,
    parse_rules,
)
from .ca import ConnectCA
from .godur import DurationError, duration_value, format_duration, format_time, parse_time

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


class State:
    """All agent, catalog, config-entry, ACL and CA state of one fake Consul agent."""

    def __init__(
        self,
        datacenter: str = "dc1",
        node_name: str = "fake-node",
        acl_master_token: str | None = None,
        default_intention_allow: bool | None = None,
        check_interval_override: float | None = None,
        check_initial_stagger: bool = False,
    ):
        self.lock = threading.RLock()
        self.datacenter = datacenter
        self.node_name = node_name
        self.node_id = str(uuid.uuid4())
        self.acl_enabled = acl_master_token is not None
        self.default_intention_allow = default_intention_allow
        self.check_interval_override = check_interval_override
        self.check_initial_stagger = check_initial_stagger
        self.clock_offset = 0.0
        self._reap_epoch = time.time()
        self._reap_runs = 0
        self.index = 0
        self.table_index: dict[str, int] = {}
        self._waiters: set = set()
        self.services: dict[str, dict] = {}
        self.checks: dict[str, dict] = {}
        self.config_entries: dict[tuple[str, str], dict] = {}
        self.tokens: dict[str, dict] = {}
        self.policies: dict[str, dict] = {}
        self._parsed_rules: dict[str, dict] = {}
        self.leaves: dict[str, dict] = {}
        self._bump("nodes")  # the node itself registers first, as the first raft writes do
        self.ca = ConnectCA(self.now(), datacenter)
        self.ca.create_index = self._bump("ca-roots")
        self.inactive_cas: list[ConnectCA] = []
        if self.acl_enabled:
            self._add_builtin_tokens(acl_master_token)

    # ------------------------------------------------------------------ clock / index / waiters
    def now(self) -> float:
        """The fake clock: wall clock plus everything ``advance()`` added."""
        return time.time() + self.clock_offset

    def _bump(self, *keys: str) -> int:
        self.index += 1
        for key in keys:
            self.table_index[key] = self.index
        self.notify()
        return self.index

    def idx(self, *keys: str) -> int:
        """The index a read of these tables reports (never below 1, agent/http.go setIndex)."""
        return max([self.table_index.get(k, 0) for k in keys] + [1])

    def add_waiter(self, waiter) -> None:
        with self.lock:
            self._waiters.add(waiter)

    def remove_waiter(self, waiter) -> None:
        with self.lock:
            self._waiters.discard(waiter)

    def notify(self) -> None:
        """Wake every blocked query so it re-evaluates (safe from any thread)."""
        with self.lock:
            for loop, event in list(self._waiters):
                try:
                    loop.call_soon_threadsafe(event.set)
                except RuntimeError:  # loop already closed
                    self._waiters.discard((loop, event))

    # ------------------------------------------------------------------ ACL
    def _add_builtin_tokens(self, master: str) -> None:
        now = self.now()
        # The builtin global-management policy (agent/structs/acl.go ACLPolicyGlobalManagement*).
        self._store_policy(
            {
                "ID": GLOBAL_MANAGEMENT_ID,
                "Name": GLOBAL_MANAGEMENT_NAME,
                "Description": "Builtin Policy that grants unlimited access",
                "Rules": GLOBAL_MANAGEMENT_RULES,
                "Datacenters": [],
            }
        )
        # The anonymous token always exists (structs.ACLTokenAnonymousID).
        self._store_token(
            {
                "AccessorID": ANONYMOUS_ACCESSOR,
                "SecretID": "anonymous",
                "Description": "Anonymous Token",
                "Local": False,
                "CreateTime": format_time(now),
            }
        )
        self._store_token(
            {
                "AccessorID": str(uuid.uuid4()),
                "SecretID": master,
                "Description": "Initial Management Token",
                "Policies": [{"ID": GLOBAL_MANAGEMENT_ID, "Name": GLOBAL_MANAGEMENT_NAME}],
                "Local": False,
                "CreateTime": format_time(now),
            }
        )

    def _store_token(self, token: dict) -> dict:
        idx = self._bump("acl-tokens")
        token.setdefault("CreateIndex", idx)
        token["ModifyIndex"] = idx
        token["Hash"] = base64.b64encode(self._token_hash(token)).decode()
        self.tokens[token["AccessorID"]] = token
        return token

    @staticmethod
    def _token_hash(token: dict) -> bytes:
        # ACLToken.SetHash: blake2b-256 over the user-settable content.
        h = hashlib.blake2b(digest_size=32)
        h.update(token.get("Description", "").encode())
        h.update(b"local" if token.get("Local") else b"global")
        for link in token.get("Policies") or []:
            h.update(link["ID"].encode())
        for sid in token.get("ServiceIdentities") or []:
            h.update(sid["ServiceName"].encode())
            for dc in sid.get("Datacenters") or []:
                h.update(dc.encode())
        return h.digest()

    def _token_expired(self, token: dict) -> bool:
        exp = token.get("_expires")
        return exp is not None and exp < self.now()

    def _token_by_secret(self, secret: str) -> dict | None:
        for token in self.tokens.values():
            if token["SecretID"] == secret and not self._token_expired(token):
                return token
        return None

    def resolve(self, secret: str | None) -> Authorizer:
        """The authorizer for a request's token; ACL not found (403) for unknown/expired secrets."""
        with self.lock:
            if not self.acl_enabled:
                return ALLOW_ALL
            if not secret:
                return Authorizer(ANONYMOUS_ACCESSOR)  # default deny: the anonymous token has no rules
            token = self._token_by_secret(secret)
            if token is None:
                raise not_found_acl()
            if token["AccessorID"] == ANONYMOUS_ACCESSOR:
                return Authorizer(ANONYMOUS_ACCESSOR)
            # ACLResolver: the token's policies that exist and apply in this datacenter, plus one
            # synthetic policy per service identity, merged into one authorizer.
            management = False
            rules = []
            for link in token.get("Policies") or []:
                policy = self.policies.get(link["ID"])
                if policy is None or (policy.get("Datacenters") and self.datacenter not in policy["Datacenters"]):
                    continue
                if policy["ID"] == GLOBAL_MANAGEMENT_ID:
                    management = True
                    continue
                rules.append(self._rules_of(policy))
            services = tuple(
                s["ServiceName"]
                for s in token.get("ServiceIdentities") or []
                if not s.get("Datacenters") or self.datacenter in s["Datacenters"]
            )
            return Authorizer(token["AccessorID"], management=management, services=services, rules=rules)

    def _rules_of(self, policy: dict) -> dict:
        cached = self._parsed_rules.get(policy["Hash"])
        if cached is None:
            cached = self._parsed_rules[policy["Hash"]] = parse_rules(policy.get("Rules") or "")
        return cached

    def _policy_links_view(self, links) -> list:
        """state/acl.go fixupTokenPolicyLinks: current names; links to deleted policies dropped."""
        out = []
        for link in links or []:
            policy = self.policies.get(link["ID"])
            if policy is not None:
                out.append({"ID": policy["ID"], "Name": policy["Name"]})
        return out

    def _require_acls(self) -> None:
        if not self.acl_enabled:
            raise ConsulError(401, ACL_DISABLED)

    def _token_view(self, token: dict) -> dict:
        out = _strip_private(token)
        out["Policies"] = self._policy_links_view(out.get("Policies"))
        for key in ("Policies", "ServiceIdentities", "Roles", "NodeIdentities"):
            if not out.get(key):
                out.pop(key, None)
        return copy.deepcopy(out)

    def acl_token_create(self, body: dict, secret: str | None, accessor_in_url: str | None = None) -> dict:
        """PUT /v1/acl/token (create) or /v1/acl/token/<accessor> (update)."""
        with self.lock:
            self._require_acls()
            authz = self.resolve(secret)
            body = decode.normalize(body, decode.TOKEN)
            if accessor_in_url is not None:
                if not body.get("AccessorID"):
                    body["AccessorID"] = accessor_in_url
                if body["AccessorID"] != accessor_in_url:
                    raise ConsulError(400, "Token Accessor ID in URL and payload do not match")
            # ACL.TokenSet: acl:write is checked before anything else (agent/consul/acl_endpoint.go).
            authz.require(authz.acl_write(), "acl", "write")
            now = self.now()
            existing = self.tokens.get(body.get("AccessorID", "")) if accessor_in_url else None
            if accessor_in_url is not None:
                if existing is None or self._token_expired(existing):
                    raise ConsulError(500, f'Cannot find token "{accessor_in_url}"')
                if body.get("ExpirationTTL") not in (None, 0, "", "0s"):
                    raise ConsulError(500, f"Cannot change expiration time of {accessor_in_url}")
                token = dict(existing)
                token["Description"] = body.get("Description", "")
            else:
                token = {"Description": body.get("Description", "") or "", "Local": bool(body.get("Local", False))}
                for field in ("AccessorID", "SecretID"):
                    value = body.get(field)
                    if value:
                        # auth/token_writer.go validateTokenID + tokenIDInUse
                        if value.startswith("00000000-0000-0000-0000-0000000000"):
                            reserved = '"00000000-0000-0000-0000-0000000000"'
                            raise ConsulError(
                                500, f"Invalid Token: {field} - UUIDs with the prefix {reserved} are reserved"
                            )
                        if not _UUID.match(value):
                            raise ConsulError(500, f"Invalid Token: {field} - not a valid UUID")
                        if any(value in (t["AccessorID"], t["SecretID"]) for t in self.tokens.values()):
                            raise ConsulError(500, f"Invalid Token: {field} is already in use")
                        token[field] = value
                    else:
                        token[field] = str(uuid.uuid4())
                token["CreateTime"] = format_time(now)
                self._apply_expiry(token, body, now)
                if body.get("AuthMethod"):
                    raise ConsulError(500, "AuthMethod field is disallowed outside of login")
            token["Policies"] = self._normalize_policy_links(body.get("Policies"))
            if body.get("Roles"):
                link = body["Roles"][0]
                if link.get("ID"):
                    raise ConsulError(500, f'No such ACL role with ID "{link["ID"]}"')
                raise ConsulError(500, f'No such ACL role with name "{link.get("Name", "")}"')
            token["ServiceIdentities"] = self._normalize_service_identities(
                body.get("ServiceIdentities"), token.get("Local", False)
            )
            if body.get("NodeIdentities"):
                token["NodeIdentities"] = body["NodeIdentities"]
            stored = self._store_token(token)
            return self._token_view(stored)

    def _apply_expiry(self, token: dict, body: dict, now: float) -> None:
        # auth/token_writer.go Create: TTL -> ExpirationTime, then the min/max bounds.
        ttl_raw = body.get("ExpirationTTL")
        try:
            ttl = duration_value(ttl_raw) if ttl_raw not in (None, "") else 0.0
        except DurationError as err:
            raise ConsulError(400, f"Token decoding failed: {err}") from None
        exp = None
        if ttl < 0:
            raise ConsulError(500, f"Token Expiration TTL '{format_duration(ttl)}' should be > 0")
        if ttl > 0:
            if body.get("ExpirationTime"):
                raise ConsulError(500, "Token Expiration TTL and Expiration Time cannot both be set")
            exp = now + ttl
        elif body.get("ExpirationTime"):
            try:
                exp = parse_time(body["ExpirationTime"])
            except ValueError as err:
                raise ConsulError(400, f"Token decoding failed: {err}") from None
        if exp is None:
            return
        if exp < now:
            raise ConsulError(500, "ExpirationTime cannot be before CreateTime")
        expires_in = exp - now
        if expires_in > TOKEN_MAX_TTL:
            raise ConsulError(
                500,
                f"ExpirationTime cannot be more than {format_duration(TOKEN_MAX_TTL)} in the future "
                f"(was {format_duration(expires_in)})",
            )
        if expires_in < TOKEN_MIN_TTL:
            raise ConsulError(
                500,
                f"ExpirationTime cannot be less than {format_duration(TOKEN_MIN_TTL)} in the future "
                f"(was {format_duration(expires_in)})",
            )
        token["_expires"] = exp
        token["ExpirationTime"] = format_time(exp)

    def _normalize_policy_links(self, links) -> list:
        """auth/token_writer.go normalizePolicyLinks: by ID, else by name; de-duplicated by ID."""
        out: list = []
        for link in links or []:
            pid, name = link.get("ID") or "", link.get("Name") or ""
            if not pid:
                policy = next((p for p in self.policies.values() if p["Name"] == name), None)
                if policy is None:
                    raise ConsulError(500, f"No such ACL policy with name {json.dumps(name)}")
            else:
                policy = self.policies.get(pid)
                if policy is None:
                    raise ConsulError(500, f"No such ACL policy with ID {json.dumps(pid)}")
            if all(entry["ID"] != policy["ID"] for entry in out):
                out.append({"ID": policy["ID"], "Name": policy["Name"]})
        return out

    # ------------------------------------------------------------------ ACL policies
    @staticmethod
    def _policy_hash(policy: dict) -> bytes:
        # ACLPolicy.SetHash: blake2b-256 over name, description, rules, datacenters.
        h = hashlib.blake2b(digest_size=32)
        for part in (policy.get("Name", ""), policy.get("Description", ""), policy.get("Rules", "")):
            h.update(part.encode())
        for dc in policy.get("Datacenters") or []:
            h.update(dc.encode())
        return h.digest()

    def _store_policy(self, policy: dict) -> dict:
        idx = self._bump("acl-policies", "acl-tokens")
        prev = self.policies.get(policy["ID"])
        policy["Hash"] = base64.b64encode(self._policy_hash(policy)).decode()
        policy["CreateIndex"] = prev["CreateIndex"] if prev else idx
        policy["ModifyIndex"] = idx
        self.policies[policy["ID"]] = policy
        return policy

    @staticmethod
    def _policy_view(policy: dict) -> dict:
        out = copy.deepcopy(policy)
        if not out.get("Datacenters"):
            out.pop("Datacenters", None)
        return out

    def acl_policy_set(self, body, secret: str | None, policy_id: str | None = None) -> dict:
        """PUT /v1/acl/policy (create) or /v1/acl/policy/<id> (update): ACL.PolicySet.

        agent/acl_endpoint.go aclPolicyWriteInternal, then agent/consul/acl_endpoint.go
        PolicySet: acl:write, name present and valid, ID valid and known, names unique, rules
        parse (acl.NewPolicyFromSource), builtin rules unchangeable.
        """
        with self.lock:
            self._require_acls()
            if not isinstance(body, dict):
                raise ConsulError(
                    400, "Policy decoding failed: json: cannot unmarshal into Go value of type structs.ACLPolicy"
                )
            body = decode.normalize(body, decode.POLICY)
            if policy_id is None:
                if body.get("ID"):
                    raise ConsulError(400, "Cannot specify the ID when creating a new policy")
            elif body.get("ID") and body["ID"] != policy_id:
                raise ConsulError(400, "Policy ID in URL and payload do not match")
            else:
                body["ID"] = policy_id
            authz = self.resolve(secret)
            authz.require(authz.acl_write(), "acl", "write")
            name = body.get("Name") or ""
            if not name:
                raise ConsulError(500, "Invalid Policy: no Name is set")
            if not _POLICY_NAME.match(name):
                raise ConsulError(
                    500, "Invalid Policy: invalid Name. Only alphanumeric characters, '-' and '_' are allowed"
                )
            name_match = next((p for p in self.policies.values() if p["Name"] == name), None)
            pid = body.get("ID") or ""
            existing = None
            if pid:
                if not _UUID.match(pid):
                    raise ConsulError(500, "Policy ID invalid UUID")
                existing = self.policies.get(pid)
                if existing is None:
                    raise ConsulError(500, f"cannot find policy {pid}")
                if existing["Name"] != name and name_match is not None:
                    raise ConsulError(500, f"Invalid Policy: A policy with name {json.dumps(name)} already exists")
                if pid == GLOBAL_MANAGEMENT_ID:
                    if body.get("Datacenters"):
                        raise ConsulError(
                            500, "Changing the Datacenters of the builtin global-management policy is not permitted"
                        )
                    if (body.get("Rules") or "") != existing["Rules"]:
                        raise ConsulError(
                            500, "Changing the Rules for the builtin global-management policy is not permitted"
                        )
            else:
                if name_match is not None:
                    raise ConsulError(500, f"Invalid Policy: A Policy with Name {json.dumps(name)} already exists")
                pid = str(uuid.uuid4())
            rules = body.get("Rules") or ""
            try:
                parse_rules(rules)
            except RulesError as err:
                raise ConsulError(500, str(err)) from None
            policy = {
                "ID": pid,
                "Name": name,
                "Description": body.get("Description") or "",
                "Rules": rules,
                "Datacenters": list(body.get("Datacenters") or []),
            }
            return self._policy_view(self._store_policy(policy))

    def acl_policy_read(self, secret: str | None, policy_id: str = "", name: str = "") -> tuple[int, dict]:
        """GET /v1/acl/policy/<id> or /v1/acl/policy/name/<name> (ACL.PolicyRead: acl:read)."""
        with self.lock:
            self._require_acls()
            authz = self.resolve(secret)
            authz.require(authz.acl_read(), "acl", "read")
            if policy_id:
                policy = self.policies.get(policy_id)
            else:
                policy = next((p for p in self.policies.values() if p["Name"] == name), None)
            if policy is None:
                # agent/acl_endpoint.go ACLPolicyRead: acl.ACLResourceNotExistError("policy", ...)
                raise ConsulError(404, "Requested policy does not exist: ACL not found")
            return self.idx("acl-policies"), self._policy_view(policy)

    def acl_policy_delete(self, policy_id: str, secret: str | None) -> bool:
        """DELETE /v1/acl/policy/<id> (ACL.PolicyDelete: acl:write; a missing policy is a no-op)."""
        with self.lock:
            self._require_acls()
            authz = self.resolve(secret)
            authz.require(authz.acl_write(), "acl", "write")
            policy = self.policies.get(policy_id)
            if policy is None:
                return True
            if policy_id == GLOBAL_MANAGEMENT_ID:
                raise ConsulError(500, "Delete operation not permitted on the builtin global-management policy")
            del self.policies[policy_id]
            self._bump("acl-policies", "acl-tokens")
            return True

    def acl_policy_list(self, secret: str | None) -> tuple[int, list]:
        """GET /v1/acl/policies: ACLPolicyListStub for each policy (ACL.PolicyList: acl:read)."""
        with self.lock:
            self._require_acls()
            authz = self.resolve(secret)
            authz.require(authz.acl_read(), "acl", "read")
            stubs = []
            for policy in sorted(self.policies.values(), key=lambda p: p["Name"]):
                stub = {k: copy.deepcopy(policy[k]) for k in ("ID", "Name", "Description")}
                if policy.get("Datacenters"):
                    stub["Datacenters"] = list(policy["Datacenters"])
                stub.update({k: policy[k] for k in ("Hash", "CreateIndex", "ModifyIndex")})
                stubs.append(stub)
            return self.idx("acl-policies"), stubs

    @staticmethod
    def _normalize_service_identities(ids, local: bool) -> list:
        out: dict[str, dict] = {}
        for sid in ids or []:
            name = sid.get("ServiceName") or ""
            if not name:
                raise ConsulError(500, "Service identity is missing the service name field on this token")
            dcs = sid.get("Datacenters") or []
            if local and dcs:
                raise ConsulError(
                    500, f'Service identity "{name}" cannot specify a list of datacenters on a local token'
                )
            if len(name) > 256 or not _SERVICE_IDENTITY_NAME.match(name):
                raise ConsulError(
                    500,
                    f'Service identity "{name}" has an invalid name. '
                    "Only lowercase alphanumeric characters, '-' and '_' are allowed",
                )
            if name in out:  # ACLServiceIdentities.Deduplicate merges datacenters
                merged = sorted(set(out[name].get("Datacenters", [])) | set(dcs))
                out[name] = {"ServiceName": name, **({"Datacenters": merged} if merged else {})}
            else:
                out[name] = {"ServiceName": name, **({"Datacenters": sorted(dcs)} if dcs else {})}
        return list(out.values())

    def acl_token_read(self, accessor: str, secret: str | None) -> tuple[int, dict]:
        with self.lock:
            self._require_acls()
            authz = self.resolve(secret)
            authz.require(authz.acl_read(), "acl", "read")
            token = self.tokens.get(accessor)
            if token is None or self._token_expired(token):
                # acl.ACLResourceNotExistError("token", ...) as a 404
                raise ConsulError(404, "Requested token does not exist: ACL not found")
            return self.idx("acl-tokens"), self._token_view(token)

    def acl_token_self(self, secret: str | None) -> tuple[int, dict]:
        with self.lock:
            self._require_acls()
            token = self._token_by_secret(secret or "")
            if token is None:
                raise ConsulError(404, "Supplied token does not exist")
            return self.idx("acl-tokens"), self._token_view(token)

    def acl_token_delete(self, accessor: str, secret: str | None) -> bool:
        with self.lock:
            self._require_acls()
            authz = self.resolve(secret)
            authz.require(authz.acl_write(), "acl", "write")
            if not _UUID.match(accessor):
                raise ConsulError(500, "Accessor ID is missing or an invalid UUID")
            if accessor == ANONYMOUS_ACCESSOR:
                raise ConsulError(500, "Delete operation not permitted on the anonymous token")
            token = self.tokens.get(accessor)
            if token is None:
                return True  # ACL.TokenDelete: nothing to do for a missing token in the primary DC
            if secret == token["SecretID"]:
                raise ConsulError(500, "Deletion of the request's authorization token is not permitted")
            del self.tokens[accessor]
            self._bump("acl-tokens")
            return True

    def acl_token_list(
        self, secret: str | None, policy: str = "", role: str = "", authmethod: str = "", servicename: str = ""
    ) -> tuple[int, list]:
        """GET /v1/acl/tokens with its optional policy/role/authmethod/servicename filters.

        ACL.TokenList (agent/consul/acl_endpoint.go) checks acl:read first; the state store's
        ACLTokenListWithParameters (agent/consul/state/acl.go) then takes at most one filter:
        policy and role by link ID, authmethod by name, servicename by a service identity's
        name through a lower-cased index.
        """
        with self.lock:
            self._require_acls()
            authz = self.resolve(secret)
            authz.require(authz.acl_read(), "acl", "read")
            if sum(1 for f in (policy, role, authmethod, servicename) if f) > 1:
                raise ConsulError(500, "can only filter by one of policy, role, serviceName, or methodName at a time")

            def wanted(token: dict) -> bool:
                if policy:
                    return any(link.get("ID") == policy for link in token.get("Policies") or [])
                if role:
                    return any(link.get("ID") == role for link in token.get("Roles") or [])
                if authmethod:
                    return token.get("AuthMethod") == authmethod
                if servicename:
                    name = servicename.lower()
                    return any(s["ServiceName"].lower() == name for s in token.get("ServiceIdentities") or [])
                return True

            stubs = []
            for token in sorted(self.tokens.values(), key=lambda t: t["AccessorID"]):
                if self._token_expired(token) or not wanted(token):
                    continue
                stub = {
                    k: token[k]
                    for k in (
                        "AccessorID",
                        "SecretID",
                        "Description",
                        "Policies",
                        "ServiceIdentities",
                        "Local",
                        "ExpirationTime",
                        "CreateTime",
                        "Hash",
                        "CreateIndex",
                        "ModifyIndex",
                    )
                    if k in token and (token[k] or k in ("Local", "Description"))
                }
                if "Policies" in stub:
                    stub["Policies"] = self._policy_links_view(stub["Policies"])
                    if not stub["Policies"]:
                        del stub["Policies"]
                if not authz.acl_write():
                    stub["SecretID"] = "<hidden>"  # aclfilter.RedactedToken
                stubs.append(copy.deepcopy(stub))
            return self.idx("acl-tokens"), stubs

    # ------------------------------------------------------------------ services & checks
    def _agent_service_view(self, svc: dict) -> dict:
        """api.AgentService as agent/agent_endpoint.go buildAgentService renders it."""
        out = {}
        if svc.get("Kind"):
            out["Kind"] = svc["Kind"]
        out.update(
            {
                "ID": svc["ID"],
                "Service": svc["Service"],
                "Tags": list(svc.get("Tags") or []),
                "Meta": dict(svc.get("Meta") or {}),
                "Port": svc.get("Port", 0),
                "Address": svc.get("Address", ""),
            }
        )
        if svc.get("SocketPath"):
            out["SocketPath"] = svc["SocketPath"]
        if svc.get("TaggedAddresses"):
            out["TaggedAddresses"] = copy.deepcopy(svc["TaggedAddresses"])
        out["Weights"] = dict(svc["Weights"])
        out["EnableTagOverride"] = bool(svc.get("EnableTagOverride"))
        if svc.get("Kind") == "connect-proxy":
            out["Proxy"] = copy.deepcopy(svc["Proxy"])
        if (svc.get("Connect") or {}).get("Native"):
            out["Connect"] = {"Native": True}
        out["Datacenter"] = self.datacenter
        return out

    def _check_view(self, chk: dict) -> dict:
        out = _strip_private(chk)
        return copy.deepcopy(out)

    def _touch_service(self, svc: dict) -> list[str]:
        keys = ["services", "checks", f"service:{svc['Service']}"]
        if svc.get("Kind") == "connect-proxy":
            dest = (svc.get("Proxy") or {}).get("DestinationServiceName")
            if dest:
                keys.append(f"connect:{dest}")
        if (svc.get("Connect") or {}).get("Native"):
            keys.append(f"connect:{svc['Service']}")
        return keys

    def register_service(self, raw: dict, secret: str | None, replace_existing_checks: bool) -> None:
        """PUT /v1/agent/service/register (agent/agent_endpoint.go AgentRegisterService)."""
        with self.lock:
            body = decode.normalize(raw, decode.SERVICE)
            name = body.get("Name") or ""
            if not name:
                raise ConsulError(400, "Missing service name")
            authz = self.resolve(secret)
            # AgentRegisterService: after resolving the token, before ns.Validate, the check types
            # and vetServiceRegister, structs.ValidateServiceMetadata(ns.Kind, ns.Meta, false)
            # -> 400 "Invalid Service Meta: ...". A sidecar_service's own Meta is not checked here
            # (Consul only fails it later in anti-entropy catalog sync; not modelled).
            meta = body.get("Meta") or {}
            if isinstance(meta, dict):
                problem = validate_service_meta(meta, body.get("Kind") or "")
                if problem:
                    raise ConsulError(400, f"Invalid Service Meta: {problem}")
            ns = self._node_service(body)
            chk_types = self._check_types(body, "Invalid check")
            sidecar = sidecar_checks = None
            sidecar_def = (body.get("Connect") or {}).get("SidecarService")
            if sidecar_def is not None:
                sidecar_checks = self._check_types(sidecar_def, "Invalid check in sidecar_service")
            # vetServiceRegisterWithAuthorizer
            self._vet_register(authz, ns)
            if sidecar_def is not None:
                sidecar = self._sidecar_service(ns, sidecar_def)
                sidecar_authz = self.resolve(sidecar_def["Token"]) if sidecar_def.get("Token") else authz
                self._vet_register(sidecar_authz, sidecar)
            self._add_service(ns, chk_types, replace_existing_checks)
            if sidecar is not None:
                if sidecar.get("Port", 0) < 1:
                    sidecar["Port"] = self._sidecar_port(sidecar["ID"])
                if not sidecar_checks:
                    sidecar_checks = self._sidecar_default_checks(sidecar)
                self._set_default_tagged_addresses(sidecar)
                self._add_service(sidecar, sidecar_checks, replace_existing_checks)
            self._recompute_aliases()

    def _vet_register(self, authz: Authorizer, ns: dict) -> None:
        authz.require(authz.service_write(ns["Service"]), "service", "write", ns["Service"])
        existing = self.services.get(ns["ID"])
        if existing is not None:
            authz.require(authz.service_write(existing["Service"]), "service", "write", existing["Service"])
        if ns.get("Kind") == "connect-proxy":
            dest = ns["Proxy"].get("DestinationServiceName", "")
            authz.require(authz.service_write(dest), "service", "write", dest)

    def _node_service(self, body: dict, sidecar: bool = False) -> dict:
        kind = body.get("Kind") or ""
        ns = {
            "Kind": kind,
            "ID": body.get("ID") or body["Name"],
            "Service": body["Name"],
            "Tags": list(body.get("Tags") or []),
            "Meta": dict(body.get("Meta") or {}),
            "Port": int(body.get("Port") or 0),
            "Address": body.get("Address") or "",
            "SocketPath": body.get("SocketPath") or "",
            "TaggedAddresses": copy.deepcopy(body.get("TaggedAddresses") or {}),
            "Weights": {
                "Passing": int((body.get("Weights") or {}).get("Passing") or 1),
                "Warning": int((body.get("Weights") or {}).get("Warning") or (0 if body.get("Weights") else 1)),
            },
            "EnableTagOverride": bool(body.get("EnableTagOverride")),
            "Connect": {"Native": True} if (body.get("Connect") or {}).get("Native") else {},
            "Proxy": self._proxy(body.get("Proxy") or {}),
        }
        if ns["Address"] in ("0.0.0.0", "::", "[::]"):
            raise ConsulError(400, "Invalid service address")  # ipaddr.IsAny check
        if kind == "connect-proxy":
            if not ns["Proxy"].get("DestinationServiceName"):
                raise ConsulError(
                    400,
                    "Validation failed: Proxy.DestinationServiceName must be non-empty for Connect proxy services",
                )
            if ns["Port"] < 1 and not ns["SocketPath"] and not sidecar:
                raise ConsulError(400, "Validation failed: Port or SocketPath must be set for a Connect proxy")
        self._set_default_tagged_addresses(ns)
        return ns

    @staticmethod
    def _set_default_tagged_addresses(ns: dict) -> None:
        # addServiceInternal: lan_ipv4 / wan_ipv4 default to the service address and port.
        addr = ns.get("Address") or ""
        if re.match(r"^\d{1,3}(\.\d{1,3}){3}$", addr):
            for key in ("lan_ipv4", "wan_ipv4"):
                ns["TaggedAddresses"].setdefault(key, {"Address": addr, "Port": ns.get("Port", 0)})

    @staticmethod
    def _proxy(raw: dict) -> dict:
        proxy = {
            "DestinationServiceName": raw.get("DestinationServiceName") or "",
            "DestinationServiceID": raw.get("DestinationServiceID") or "",
            "LocalServiceAddress": raw.get("LocalServiceAddress") or "",
            "LocalServicePort": int(raw.get("LocalServicePort") or 0),
        }
        if raw.get("Mode"):
            proxy["Mode"] = raw["Mode"]
        if raw.get("Config"):
            proxy["Config"] = copy.deepcopy(raw["Config"])
        ups = []
        for up in raw.get("Upstreams") or []:
            u = {"DestinationType": up.get("DestinationType") or "service"}
            for key in ("DestinationNamespace", "DestinationPartition", "DestinationPeer"):
                if up.get(key):
                    u[key] = up[key]
            u["DestinationName"] = up.get("DestinationName") or ""
            for key in ("Datacenter", "LocalBindAddress", "LocalBindSocketPath", "LocalBindSocketMode"):
                if up.get(key):
                    u[key] = up[key]
            if up.get("LocalBindPort"):
                u["LocalBindPort"] = int(up["LocalBindPort"])
            if up.get("Config"):
                u["Config"] = copy.deepcopy(up["Config"])
            u["MeshGateway"] = copy.deepcopy(up.get("MeshGateway") or {})
            ups.append(u)
        if ups:
            proxy["Upstreams"] = ups
        proxy["MeshGateway"] = copy.deepcopy(raw.get("MeshGateway") or {})
        proxy["Expose"] = copy.deepcopy(raw.get("Expose") or {})
        return proxy

    def _sidecar_service(self, ns: dict, sdef: dict) -> dict:
        """agent/sidecar_service.go sidecarServiceFromNodeService."""
        sdef = dict(sdef)
        sdef.setdefault("Name", "")
        if not sdef["Name"]:
            sdef["Name"] = ns["Service"] + "-sidecar-proxy"
        proxy_def = dict(sdef.get("Proxy") or {})
        proxy_def["DestinationServiceName"] = proxy_def.get("DestinationServiceName") or ns["Service"]
        sidecar = self._node_service(
            {**sdef, "Kind": sdef.get("Kind") or "connect-proxy", "Proxy": proxy_def}, sidecar=True
        )
        sidecar["ID"] = ns["ID"] + "-sidecar-proxy"
        sidecar["_sidecar_of"] = ns["ID"]
        if not sidecar["Meta"] and ns["Meta"]:
            sidecar["Meta"] = dict(ns["Meta"])
        if not sidecar["Tags"] and ns["Tags"]:
            sidecar["Tags"] = list(ns["Tags"])
        if not sidecar["Address"]:
            sidecar["Address"] = ns["Address"]
        proxy = sidecar["Proxy"]
        if not proxy["DestinationServiceID"]:
            proxy["DestinationServiceID"] = ns["ID"]
        if not proxy.get("LocalServiceSocketPath") and (
            not proxy["LocalServiceAddress"] or proxy["LocalServicePort"] < 1
        ):
            if ns.get("SocketPath"):
                proxy["LocalServiceSocketPath"] = ns["SocketPath"]
            else:
                if not proxy["LocalServiceAddress"]:
                    proxy["LocalServiceAddress"] = "127.0.0.1"
                if proxy["LocalServicePort"] < 1:
                    proxy["LocalServicePort"] = ns["Port"]
        sidecar["TaggedAddresses"] = copy.deepcopy(sdef.get("TaggedAddresses") or {})
        return sidecar

    def _sidecar_port(self, sidecar_id: str) -> int:
        """agent/sidecar_service.go sidecarPortFromServiceIDLocked: lowest free port in range."""
        used = set()
        for other in self.services.values():
            if SIDECAR_MIN_PORT <= other.get("Port", 0) <= SIDECAR_MAX_PORT:
                if other["ID"] == sidecar_id:
                    return other["Port"]  # keep the port of a re-registered sidecar
                used.add(other["Port"])
        for port in range(SIDECAR_MIN_PORT, SIDECAR_MAX_PORT + 1):
            if port not in used:
                return port
        raise ConsulError(
            500,
            f"no port provided for sidecar_service and none left in the configured range "
            f"[{SIDECAR_MIN_PORT}, {SIDECAR_MAX_PORT}]",
        )

    @staticmethod
    def _sidecar_default_checks(sidecar: dict) -> list[dict]:
        """agent/sidecar_service.go sidecarDefaultChecks."""
        addr = sidecar.get("Address") or sidecar["Proxy"].get("LocalServiceAddress") or ""
        host = f"[{addr}]" if ":" in addr else addr
        parent_id = sidecar["ID"][: -len("-sidecar-proxy")]
        return [
            {
                "Name": "Connect Sidecar Listening",
                "TCP": f"{host}:{sidecar['Port']}",
                "_interval": SIDECAR_TCP_INTERVAL,
            },
            {"Name": f"Connect Sidecar Aliasing {parent_id}", "AliasService": parent_id},
        ]

    def _check_types(self, body: dict, prefix: str) -> list[dict]:
        """ServiceDefinition.CheckTypes with CheckType.Validate and status validation."""
        raw = []
        if body.get("Check"):
            raw.append(body["Check"])
        raw.extend(c for c in (body.get("Checks") or []) if c)
        out = []
        for chk in raw:
            chk = dict(chk)
            if "Args" in chk and "ScriptArgs" not in chk:
                chk["ScriptArgs"] = chk.pop("Args")
            try:
                for key in ("Interval", "Timeout", "TTL", "DeregisterCriticalServiceAfter"):
                    chk["_" + key.lower()] = duration_value(chk.get(key))
            except DurationError as err:
                raise ConsulError(400, f"Request decode failed: {err}") from None
            interval_check = any(
                chk.get(k) for k in ("ScriptArgs", "HTTP", "TCP", "UDP", "GRPC", "H2PING", "OSService")
            )
            alias = bool(chk.get("AliasService") or chk.get("AliasNode"))
            if interval_check and chk["_interval"] <= 0:
                raise ConsulError(
                    400, f"{prefix}: Interval must be > 0 for Script, HTTP, H2PING, TCP, UDP or OSService checks"
                )
            if alias and chk["_ttl"] > 0:
                raise ConsulError(400, f"{prefix}: TTL must be not be set for Alias checks")
            if not interval_check and not alias and chk["_ttl"] <= 0:
                raise ConsulError(400, f"{prefix}: TTL must be > 0 for TTL checks")
            if chk.get("Status") and chk["Status"] not in _STATUS_RANK:
                raise ConsulError(400, "Status for checks must 'passing', 'warning', 'critical'")
            out.append(chk)
        return out

    @staticmethod
    def _check_type_name(chk: dict) -> str:
        # CheckType.Type()
        for key, name in (
            ("TTL", "ttl"),
            ("HTTP", "http"),
            ("TCP", "tcp"),
            ("UDP", "udp"),
            ("GRPC", "grpc"),
            ("H2PING", "h2ping"),
            ("OSService", "os_service"),
            ("ScriptArgs", "script"),
        ):
            if chk.get("_ttl") if key == "TTL" else chk.get(key):
                return name
        if chk.get("AliasService") or chk.get("AliasNode"):
            return "alias"
        if chk.get("DockerContainerID"):
            return "docker"
        return ""

    def _add_service(self, ns: dict, chk_types: list[dict], replace_existing: bool) -> None:
        """agent.addServiceInternal: store the service, (re)create its checks keeping prior state."""
        now = self.now()
        prev_svc = self.services.get(ns["ID"])
        existing_ids = {cid for cid, c in self.checks.items() if c["ServiceID"] == ns["ID"]}
        new_checks = []
        for i, ct in enumerate(chk_types):
            cid = ct.get("CheckID") or ""
            if not cid:
                cid = f"service:{ns['ID']}"
                if len(chk_types) > 1:
                    cid += f":{i + 1}"
            prev = self.checks.get(cid)
            ctype = self._check_type_name(ct)
            interval = ct.get("_interval") or 0.0
            chk = {
                "Node": self.node_name,
                "CheckID": cid,
                "Name": ct.get("Name") or f"Service '{ns['Service']}' check",
                "Status": ct.get("Status") or CRITICAL,
                "Notes": ct.get("Notes") or "",
                "Output": "",
                "ServiceID": ns["ID"],
                "ServiceName": ns["Service"],
                "ServiceTags": list(ns["Tags"]),
                "Type": ctype,
                "Interval": format_duration(interval) if interval else "",
                "Timeout": format_duration(ct["_timeout"]) if ct.get("_timeout") else "",
                "ExposedPort": 0,
                "Definition": {},
                "_ttl": ct.get("_ttl") or 0.0,
                "_tcp": ct.get("TCP") or "",
                "_alias": ct.get("AliasService") or "",
                "_interval": interval,
                "_timeout": ct.get("_timeout") or 0.0,
                "_deregister": 0.0,
                "_critical_since": None,
                "_ttl_deadline": None,
                "_next_run": None,
            }
            if ct.get("_deregistercriticalserviceafter"):
                # agent.addCheck: deregister intervals below the minimum are raised to it.
                chk["_deregister"] = max(ct["_deregistercriticalserviceafter"], CHECK_DEREGISTER_INTERVAL_MIN)
            if prev is not None:
                # "Restore the fields from the snapshot": a re-registered check keeps its state.
                chk["Status"] = prev["Status"]
                chk["Output"] = prev["Output"]
                chk["_critical_since"] = prev.get("_critical_since")
                chk["CreateIndex"] = prev.get("CreateIndex")
            if chk["_ttl"]:
                chk["_ttl_deadline"] = now + chk["_ttl"]  # a new CheckTTL timer starts
            if chk["_tcp"]:
                chk["_next_run"] = now  # run promptly, then every interval
                if self.check_initial_stagger:
                    # As Consul does: every interval check's runner first waits
                    # lib.RandomStagger(Interval), a uniform draw in [0, Interval)
                    # (agent/checks/check.go, CheckTCP.run: initialPauseTime).
                    interval = self.check_interval_override or chk["_interval"] or 10.0
                    chk["_next_run"] = now + random.uniform(0, interval)
            new_checks.append(chk)
        keys = self._touch_service(ns)
        if prev_svc is not None:
            keys += self._touch_service(prev_svc)
        idx = self._bump(*keys)
        ns["CreateIndex"] = prev_svc["CreateIndex"] if prev_svc else idx
        ns["ModifyIndex"] = idx
        if prev_svc is not None and prev_svc.get("_sidecar_of") and not ns.get("_sidecar_of"):
            ns["_sidecar_of"] = prev_svc["_sidecar_of"]
        self.services[ns["ID"]] = ns
        for chk in new_checks:
            if chk.get("CreateIndex") is None:  # new check (a re-registered one keeps its own)
                chk["CreateIndex"] = idx
            chk["ModifyIndex"] = idx
            self.checks[chk["CheckID"]] = chk
        if replace_existing:
            for cid in existing_ids - {c["CheckID"] for c in new_checks}:
                self.checks.pop(cid, None)

    def _remove_service(self, sid: str) -> None:
        """agent.removeServiceLocked: the service, its checks, then its sidecar."""
        svc = self.services.pop(sid, None)
        if svc is None:
            return
        for cid in [cid for cid, c in self.checks.items() if c["ServiceID"] == sid]:
            del self.checks[cid]
        self._bump(*self._touch_service(svc))
        sidecar = self.services.get(sid + "-sidecar-proxy")
        if sidecar is not None and sidecar.get("_sidecar_of") == sid:
            self._remove_service(sidecar["ID"])

    def deregister_service(self, sid: str, secret: str | None) -> None:
        with self.lock:
            authz = self.resolve(secret)
            existing = self.services.get(sid)
            if existing is None:
                # agent/acl.go vetServiceUpdateWithAuthorizer
                raise ConsulError(
                    404, f'Unknown service ID "{sid}". Ensure that the service ID is passed, not the service name.'
                )
            authz.require(authz.service_write(existing["Service"]), "service", "write", existing["Service"])
            self._remove_service(sid)
            self._recompute_aliases()

    def agent_services(self, secret: str | None) -> dict:
        with self.lock:
            authz = self.resolve(secret)
            return {
                sid: self._agent_service_view(svc)
                for sid, svc in sorted(self.services.items())
                if authz.service_read(svc["Service"])
            }

    def agent_service(self, sid: str, secret: str | None) -> tuple[str, dict]:
        """GET /v1/agent/service/<id>: the service and its ContentHash."""
        with self.lock:
            self.resolve(secret)
            svc = self.services.get(sid)
            if svc is None:
                raise ConsulError(404, f"unknown service ID: {sid}")
            authz = self.resolve(secret)
            authz.require(authz.service_read(svc["Service"]), "service", "read", svc["Service"])
            view = self._agent_service_view(svc)
            content_hash = _canonical_hash(view)
            view["ContentHash"] = content_hash
            return content_hash, view

    def agent_checks(self, secret: str | None) -> dict:
        with self.lock:
            authz = self.resolve(secret)
            out = {}
            for cid, chk in sorted(self.checks.items()):
                allowed = (
                    authz.service_read(chk["ServiceName"]) if chk["ServiceName"] else authz.node_read(self.node_name)
                )
                if allowed:
                    view = self._check_view(chk)
                    # Agent-local checks carry no raft index (zero values in the JSON).
                    view["CreateIndex"] = 0
                    view["ModifyIndex"] = 0
                    out[cid] = view
            return out

    def check_update(self, cid: str, status: str, output: str, secret: str | None) -> None:
        """PUT /v1/agent/check/pass|warn|fail/<id> (agentCheckUpdate + updateTTLCheck)."""
        with self.lock:
            authz = self.resolve(secret)
            chk = self.checks.get(cid)
            if chk is None:
                raise ConsulError(
                    404, f'Unknown check ID "{cid}". Ensure that the check ID is passed, not the check name.'
                )
            if chk["ServiceName"]:
                authz.require(authz.service_write(chk["ServiceName"]), "service", "write", chk["ServiceName"])
            else:
                authz.require(authz.node_write(self.node_name), "node", "write", self.node_name)
            if not chk["_ttl"]:
                raise ConsulError(500, f'CheckID "{cid}" does not have associated TTL')
            chk["_ttl_deadline"] = self.now() + chk["_ttl"]
            self._set_check_status(chk, status, output, self.now())
            self._recompute_aliases()

    def _set_check_status(self, chk: dict, status: str, output: str, when: float) -> bool:
        """local.State.UpdateCheck: record status/output, track when it became critical."""
        if status == CRITICAL:
            if chk["_critical_since"] is None:
                chk["_critical_since"] = when
        else:
            chk["_critical_since"] = None
        if chk["Status"] == status and chk["Output"] == output:
            return False
        chk["Status"] = status
        chk["Output"] = output
        svc = self.services.get(chk["ServiceID"])
        keys = ["checks"] + (self._touch_service(svc) if svc else [])
        chk["ModifyIndex"] = self._bump(*keys)
        return True

    def _recompute_aliases(self) -> None:
        """Alias checks mirror the aggregate health of the aliased local service."""
        for chk in list(self.checks.values()):
            target = chk.get("_alias")
            if not target:
                continue
            if target not in self.services:
                status, output = CRITICAL, f"Service {target} could not be found on node {self.node_name}"
            else:
                statuses = [
                    c["Status"] for c in self.checks.values() if c["ServiceID"] == target and not c.get("_alias")
                ]
                if not statuses:
                    status, output = PASSING, "No checks found."
                else:
                    status = max(statuses, key=lambda s: _STATUS_RANK.get(s, 2))
                    output = "All checks passing." if status == PASSING else f"Aliased service has {status} checks"
            self._set_check_status(chk, status, output, self.now())

    # ------------------------------------------------------------------ periodic pass
    def run_pass(self) -> list[tuple[str, str, float]]:
        """TTL expiry, alias refresh, reaping, leaf renewal and token expiry at the fake clock.

        Returns the TCP checks now due, as (check id, address, timeout), for the caller to dial.
        """
        with self.lock:
            now = self.now()
            for chk in list(self.checks.values()):
                deadline = chk.get("_ttl_deadline")
                if chk["_ttl"] and deadline is not None and now > deadline:
                    # CheckTTL timer fired at the deadline: critical, "TTL expired".
                    chk["_ttl_deadline"] = None
                    self._set_check_status(chk, CRITICAL, "TTL expired", deadline)
            self._recompute_aliases()
            # The reaper runs on its own 30s timer (fake clock), not on every pass.
            runs = int((now - self._reap_epoch) // CHECK_REAP_INTERVAL)
            if runs > self._reap_runs:
                self._reap_runs = runs
                self._reap(self._reap_epoch + runs * CHECK_REAP_INTERVAL)
            for service, leaf in list(self.leaves.items()):
                if now >= leaf["_soft_expiry"]:
                    self._issue_leaf(service)
            expired = [a for a, t in self.tokens.items() if self._token_expired(t)]
            for accessor in expired:
                del self.tokens[accessor]
            if expired:
                self._bump("acl-tokens")
            due = []
            for chk in self.checks.values():
                if chk["_tcp"] and chk["_next_run"] is not None and chk["_next_run"] <= now:
                    interval = self.check_interval_override or chk["_interval"] or 10.0
                    chk["_next_run"] = now + interval
                    timeout = min(chk["_timeout"] or TCP_DEFAULT_TIMEOUT, 5.0)
                    due.append((chk["CheckID"], chk["_tcp"], timeout))
            return due

    def _reap(self, now: float) -> None:
        """agent.reapServicesInternal: remove services critical longer than their deregister time."""
        reaped = set()
        for chk in list(self.checks.values()):
            sid = chk["ServiceID"]
            if not sid or sid in reaped or chk.get("_critical_since") is None or not chk["_deregister"]:
                continue
            # CriticalFor() at the reaper run's time
            if now - chk["_critical_since"] > chk["_deregister"]:
                reaped.add(sid)
                self._remove_service(sid)
        if reaped:
            self._recompute_aliases()

    def set_tcp_result(self, cid: str, ok: bool, output: str) -> None:
        with self.lock:
            chk = self.checks.get(cid)
            if chk is None:
                return
            self._set_check_status(chk, PASSING if ok else CRITICAL, output, self.now())
            self._recompute_aliases()

    def advance(self, seconds: float) -> list[tuple[str, str, float]]:
        with self.lock:
            self.clock_offset += seconds
            return self.run_pass()

    # ------------------------------------------------------------------ catalog & health
    def _node_view(self) -> dict:
        return {
            "ID": self.node_id,
            "Node": self.node_name,
            "Address": "127.0.0.1",
            "Datacenter": self.datacenter,
            "TaggedAddresses": {
                "lan": "127.0.0.1",
                "lan_ipv4": "127.0.0.1",
                "wan": "127.0.0.1",
                "wan_ipv4": "127.0.0.1",
            },
            "Meta": {"consul-network-segment": ""},
            "CreateIndex": self.table_index.get("nodes", 1),
            "ModifyIndex": self.table_index.get("nodes", 1),
        }

    def _serf_check(self) -> dict:
        idx = self.table_index.get("nodes", 1)
        return {
            "Node": self.node_name,
            "CheckID": "serfHealth",
            "Name": "Serf Health Status",
            "Status": PASSING,
            "Notes": "",
            "Output": "Agent alive and reachable",
            "ServiceID": "",
            "ServiceName": "",
            "ServiceTags": [],
            "Type": "",
            "Interval": "",
            "Timeout": "",
            "ExposedPort": 0,
            "Definition": {},
            "CreateIndex": idx,
            "ModifyIndex": idx,
        }

    def _node_service_view(self, svc: dict) -> dict:
        """structs.NodeService JSON as it appears in /v1/health/service entries."""
        out = {}
        if svc.get("Kind"):
            out["Kind"] = svc["Kind"]
        out.update(
            {
                "ID": svc["ID"],
                "Service": svc["Service"],
                "Tags": list(svc["Tags"]),
                "Address": svc["Address"],
            }
        )
        if svc.get("TaggedAddresses"):
            out["TaggedAddresses"] = copy.deepcopy(svc["TaggedAddresses"])
        out.update(
            {
                "Meta": dict(svc["Meta"]),
                "Port": svc["Port"],
                "Weights": dict(svc["Weights"]),
                "EnableTagOverride": svc["EnableTagOverride"],
                "Proxy": copy.deepcopy(svc["Proxy"]) if svc.get("Kind") else {"MeshGateway": {}, "Expose": {}},
                "Connect": dict(svc.get("Connect") or {}),
                "PeerName": "",
                "CreateIndex": svc["CreateIndex"],
                "ModifyIndex": svc["ModifyIndex"],
            }
        )
        return out

    def _visible(self, authz: Authorizer, svc: dict) -> bool:
        # aclfilter filterServiceNodes / CheckServiceNode.CanRead: node:read AND service:read.
        return authz.service_read(svc["Service"]) and authz.node_read(self.node_name)

    def catalog_services(self, secret: str | None) -> tuple[int, dict]:
        with self.lock:
            authz = self.resolve(secret)
            out: dict[str, list] = {}
            for svc in self.services.values():
                # aclfilter filterServices: the name->tags map is filtered by service:read only.
                if not authz.service_read(svc["Service"]):
                    continue
                tags = out.setdefault(svc["Service"], [])
                for tag in svc["Tags"]:
                    if tag not in tags:
                        tags.append(tag)
            return self.idx("services", "nodes"), dict(sorted(out.items()))

    def catalog_service(self, name: str, secret: str | None, tags: list[str]) -> tuple[int, list]:
        with self.lock:
            authz = self.resolve(secret)
            out = []
            node = self._node_view()
            for svc in sorted(self.services.values(), key=lambda s: s["ID"]):
                if svc["Service"] != name or not self._visible(authz, svc):
                    continue
                if any(t not in svc["Tags"] for t in tags):
                    continue
                out.append(
                    {
                        "ID": node["ID"],
                        "Node": node["Node"],
                        "Address": node["Address"],
                        "Datacenter": node["Datacenter"],
                        "TaggedAddresses": node["TaggedAddresses"],
                        "NodeMeta": node["Meta"],
                        "ServiceKind": svc.get("Kind", ""),
                        "ServiceID": svc["ID"],
                        "ServiceName": svc["Service"],
                        "ServiceTags": list(svc["Tags"]),
                        "ServiceAddress": svc["Address"],
                        "ServiceTaggedAddresses": copy.deepcopy(svc.get("TaggedAddresses") or None),
                        "ServiceWeights": dict(svc["Weights"]),
                        "ServiceMeta": dict(svc["Meta"]),
                        "ServicePort": svc["Port"],
                        "ServiceSocketPath": svc.get("SocketPath", ""),
                        "ServiceEnableTagOverride": svc["EnableTagOverride"],
                        "ServiceProxy": copy.deepcopy(svc["Proxy"])
                        if svc.get("Kind")
                        else {"MeshGateway": {}, "Expose": {}},
                        "ServiceConnect": dict(svc.get("Connect") or {}),
                        "ServicePeerName": "",
                        "CreateIndex": svc["CreateIndex"],
                        "ModifyIndex": svc["ModifyIndex"],
                    }
                )
            return self.idx(f"service:{name}", "nodes"), out

    def health_service(
        self, name: str, secret: str | None, passing: bool, tags: list[str], connect: bool = False
    ) -> tuple[int, list]:
        """/v1/health/service/<name> or, with connect=True, /v1/health/connect/<name>."""
        with self.lock:
            authz = self.resolve(secret)
            if connect:
                # Connect-capable instances: proxies for the service, or connect-native instances.
                def matches(svc):
                    if svc.get("Kind") == "connect-proxy":
                        return svc["Proxy"].get("DestinationServiceName") == name
                    return svc["Service"] == name and (svc.get("Connect") or {}).get("Native")

                index = self.idx(f"connect:{name}", "nodes")
            else:

                def matches(svc):
                    return svc["Service"] == name

                index = self.idx(f"service:{name}", "nodes")
            out = []
            for svc in sorted(self.services.values(), key=lambda s: s["ID"]):
                if not matches(svc) or not self._visible(authz, svc):
                    continue
                if any(t not in svc["Tags"] for t in tags):
                    continue
                checks = [self._serf_check()] + [
                    self._check_view(c) for c in self.checks.values() if c["ServiceID"] == svc["ID"]
                ]
                if passing and any(c["Status"] != PASSING for c in checks):
                    continue
                out.append({"Node": self._node_view(), "Service": self._node_service_view(svc), "Checks": checks})
            return index, out

    def health_checks(self, name: str, secret: str | None) -> tuple[int, list]:
        with self.lock:
            authz = self.resolve(secret)
            out = []
            # aclfilter filterHealthChecks: node:read on the check's node AND service:read.
            if authz.service_read(name) and authz.node_read(self.node_name):
                for chk in sorted(self.checks.values(), key=lambda c: c["CheckID"]):
                    if chk["ServiceName"] == name:
                        out.append(self._check_view(chk))
            return self.idx(f"service:{name}", "nodes"), out

    # ------------------------------------------------------------------ config entries
    def _entry_can_write(self, authz: Authorizer, kind: str, name: str) -> None:
        # <Kind>ConfigEntry.CanWrite in agent/structs/config_entry*.go
        if kind == "service-intentions":
            authz.require(authz.intention_write(name), "intentions", "write", name)
        elif kind == "service-defaults":
            authz.require(authz.service_write(name), "service", "write", name)
        elif kind in ("proxy-defaults", "mesh"):
            authz.require(authz.mesh_write(), "mesh", "write")
        else:
            authz.require(authz.operator_write(), "operator", "write")

    def _entry_can_read(self, authz: Authorizer, kind: str, name: str) -> bool:
        if kind == "service-intentions":
            return authz.intention_read(name)
        if kind == "service-defaults":
            return authz.service_read(name)
        return True  # proxy-defaults and the rest are readable by anyone (CanRead returns nil)

    def _decode_entry(self, raw) -> dict:
        """structs.DecodeConfigEntry: kind lookup, key canonicalisation, unknown-key rejection."""
        if not isinstance(raw, dict):
            raise ConsulError(400, "Request decoding failed: Payload does not contain a kind/Kind key at the top level")
        kind = None
        for key in ("Kind", "kind"):
            if isinstance(raw.get(key), str):
                kind = raw[key]
                break
        if kind is None:
            raise ConsulError(400, "Request decoding failed: Payload does not contain a kind/Kind key at the top level")
        if kind not in KNOWN_KINDS:
            raise ConsulError(400, f"Request decoding failed: invalid config entry kind: {kind}")
        schema = {
            "service-intentions": decode.SERVICE_INTENTIONS,
            "service-defaults": decode.SERVICE_DEFAULTS,
            "proxy-defaults": decode.PROXY_DEFAULTS,
        }.get(kind)
        if schema is None:
            entry = decode.normalize(raw, decode.GENERIC_ENTRY)
        else:
            unknown: list = []
            entry = decode.normalize(raw, schema, unknown)
            if unknown:
                lines = "".join(f'\t* invalid config key "{k}"\n' for k in unknown)
                noun = "error" if len(unknown) == 1 else "errors"
                raise ConsulError(400, f"Request decoding failed: {len(unknown)} {noun} occurred:\n{lines}\n")
        entry["Kind"] = kind
        entry.pop("CreateIndex", None)
        entry.pop("ModifyIndex", None)
        entry.pop("Hash", None)
        return entry

    def _normalize_intentions(self, entry: dict) -> dict:
        """ServiceIntentionsConfigEntry Normalize then Validate (agent/structs/config_entry_intentions.go).

        Like Consul, precedence is computed and the sources sorted (highest first, stable) before
        validation, so "Sources[i]" in error texts counts in the stored order.
        """
        name = entry.get("Name") or ""
        dest_wild = name == "*"
        meta = entry.get("Meta")
        if meta is not None and not isinstance(meta, dict):
            raise ConsulError(400, "Request decoding failed: Meta must be a map")
        sources = []
        for i, src in enumerate(entry.get("Sources") or []):
            if not isinstance(src, dict):
                raise ConsulError(400, f"Request decoding failed: Sources[{i}] must be an object")
            src = dict(src)
            if not src.get("Type"):
                src["Type"] = "consul"  # default source type
            # computeIntentionPrecedence with CE namespaces (always the exact "default"): an exact
            # destination allows 9, a wildcard one 6; a wildcard source counts one less.
            src["Precedence"] = (9 if not dest_wild else 6) - (1 if src.get("Name") == "*" else 0)
            perms = src.get("Permissions") or []
            for perm in perms:
                methods = ((perm or {}).get("HTTP") or {}).get("Methods")
                if isinstance(methods, list):
                    perm["HTTP"]["Methods"] = [str(m).upper() for m in methods]
            for field in ("LegacyID", "LegacyCreateTime", "LegacyUpdateTime"):
                src.pop(field, None)  # legacy fields are cleared on non-legacy writes
            sources.append(src)
        sources.sort(key=lambda s: -s["Precedence"])
        if not name:
            raise ConsulError(500, "Name is required")
        self._wildcard_check(name, "")
        validate_config_entry_meta(meta)  # validate(): after the name checks, before Sources
        if not sources:
            raise ConsulError(500, "At least one source is required")
        seen = set()
        for i, src in enumerate(sources):
            if not src.get("Name"):
                raise ConsulError(500, f"Sources[{i}].Name is required")
            self._wildcard_check(src["Name"], f"Sources[{i}].")
            # config_entry_intentions.go validate: len(src.Description) > metaValueMaxLength, in bytes.
            if _blen(src.get("Description") or "") > META_VALUE_MAX_LENGTH:
                raise ConsulError(500, f"Sources[{i}].Description exceeds maximum length {META_VALUE_MAX_LENGTH}")
            if src.get("LegacyMeta"):
                raise ConsulError(500, f"Sources[{i}].LegacyMeta must be omitted")
            src.pop("LegacyMeta", None)
            perms = src.get("Permissions") or []
            if not perms and src.get("Action") not in ("allow", "deny"):
                raise ConsulError(500, f"Sources[{i}].Action must be set to 'allow' or 'deny'")
            if perms and src.get("Action"):
                raise ConsulError(500, f"Sources[{i}].Action must be omitted if Permissions are specified")
            if dest_wild and perms:
                raise ConsulError(
                    500, f"Sources[{i}].Permissions cannot be specified on intentions with wildcarded destinations"
                )
            if src["Type"] != "consul":
                raise ConsulError(500, f"Sources[{i}].Type must be set to 'consul'")
            for j, perm in enumerate(perms):
                self._validate_permission(perm, i, j)
            key = (src.get("Peer") or "", src.get("SamenessGroup") or "", src["Name"])
            if key in seen:
                raise ConsulError(500, f'Sources[{i}] defines "{src["Name"]}" more than once')
            seen.add(key)
            if not perms:
                src.pop("Permissions", None)
            if not src.get("Action"):
                src.pop("Action", None)
        entry["Sources"] = sources
        return entry

    @staticmethod
    def _wildcard_check(name: str, prefix: str) -> None:
        if name != "*" and "*" in name:
            raise ConsulError(500, f"{prefix}Name: wildcard character '*' cannot be used with partial values")

    @staticmethod
    def _validate_permission(perm: dict, i: int, j: int) -> None:
        if perm.get("Action") not in ("allow", "deny"):
            raise ConsulError(500, f"Sources[{i}].Permissions[{j}].Action must be set to 'allow' or 'deny'")
        pfx = f"Sources[{i}].Permissions[{j}].HTTP"
        http = perm.get("HTTP")
        if not http:
            raise ConsulError(500, f"{pfx} is required")
        parts = 0
        for key in ("PathExact", "PathPrefix"):
            if http.get(key):
                parts += 1
                if not str(http[key]).startswith("/"):
                    raise ConsulError(500, f"{pfx}.{key} doesn't start with '/': \"{http[key]}\"")
        if http.get("PathRegex"):
            parts += 1
        if parts > 1:
            raise ConsulError(500, f"{pfx} should only contain at most one of PathExact, PathPrefix, or PathRegex")
        perm_parts = parts
        for k, hdr in enumerate(http.get("Header") or []):
            if not hdr.get("Name"):
                raise ConsulError(500, f"{pfx}.Header[{k}] missing required Name field")
            hdr_parts = sum(1 for key in ("Present", "Exact", "Regex", "Prefix", "Suffix") if hdr.get(key))
            if hdr_parts != 1:
                raise ConsulError(
                    500, f"{pfx}.Header[{k}] should only contain one of Present, Exact, Prefix, Suffix, or Regex"
                )
            perm_parts += 1
        methods = http.get("Methods") or []
        if methods:
            found = set()
            for m in methods:
                upper = str(m).upper()
                if upper not in {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "CONNECT", "OPTIONS", "TRACE"}:
                    raise ConsulError(500, f'{pfx}.Methods contains an invalid method "{m}"')
                if upper in found:
                    raise ConsulError(500, f'{pfx}.Methods contains "{upper}" more than once')
                found.add(upper)
            perm_parts += 1
        if perm_parts == 0:
            raise ConsulError(500, f"{pfx} should not be empty")

    def _protocol(self, service: str, overrides: dict | None = None) -> str:
        """The discovery-chain protocol: service-defaults, else proxy-defaults "protocol", else tcp."""
        entries = dict(self.config_entries)
        for key, value in (overrides or {}).items():
            if value is None:
                entries.pop(key, None)
            else:
                entries[key] = value
        sd = entries.get(("service-defaults", service))
        if sd and sd.get("Protocol"):
            return str(sd["Protocol"]).lower()
        pd = entries.get(("proxy-defaults", "global"))
        if pd:
            proto = (pd.get("Config") or {}).get("protocol")
            if proto:
                return str(proto).lower()
        return "tcp"

    def _validate_graph(self, key: tuple[str, str], new_entry: dict | None) -> None:
        """validateProposedConfigEntryInServiceGraph: L7 intentions need an HTTP-like protocol."""
        overrides = {key: new_entry}
        entries = dict(self.config_entries)
        if new_entry is None:
            entries.pop(key, None)
        else:
            entries[key] = new_entry
        for (kind, name), entry in sorted(entries.items()):
            if kind != "service-intentions" or name == "*":
                continue
            if not any(s.get("Permissions") for s in entry.get("Sources") or []):
                continue
            proto = self._protocol(name, overrides)
            if proto not in HTTP_LIKE:
                raise ConsulError(
                    500,
                    f'service "{name}" has protocol "{proto}", which is incompatible with L7 intentions permissions',
                )

    def _normalize_entry(self, entry: dict) -> dict:
        kind = entry["Kind"]
        if kind == "service-intentions":
            return self._normalize_intentions(entry)
        name = entry.get("Name") or ""
        if kind == "proxy-defaults":
            if name != "global":
                raise ConsulError(500, f'invalid name ("{name}"), only "global" is supported')
            # ProxyConfigEntry.Validate: name, AccessLogs, then validateConfigEntryMeta.
            validate_config_entry_meta(entry.get("Meta") if isinstance(entry.get("Meta"), dict) else None)
            for field in ("TransparentProxy", "MeshGateway", "Expose"):
                entry.setdefault(field, {})
        elif kind == "service-defaults":
            if not name:
                raise ConsulError(500, "Name is required")
            if entry.get("Protocol"):
                entry["Protocol"] = str(entry["Protocol"]).lower()
            for field in ("TransparentProxy", "MeshGateway", "Expose"):
                entry.setdefault(field, {})
        elif not name:
            raise ConsulError(500, "Name is required")
        return entry

    def config_apply(self, raw, cas: int | None, secret: str | None) -> bool:
        """PUT /v1/config (ConfigEntry.Apply with optional CAS); answers true/false."""
        with self.lock:
            entry = self._decode_entry(raw)
            authz = self.resolve(secret)
            entry = self._normalize_entry(entry)
            self._entry_can_write(authz, entry["Kind"], entry["Name"])
            return self._apply_entry(entry, cas)

    def _apply_entry(self, entry: dict, cas: int | None) -> bool:
        key = (entry["Kind"], entry["Name"])
        existing = self.config_entries.get(key)
        if entry["Kind"] == "service-intentions":
            entry["Hash"] = int(_canonical_hash(entry), 16)
        if existing is not None:
            # ConfigEntry.shouldSkipUpsertOperation: an identical write is a no-op answering true.
            same = {k: v for k, v in existing.items() if k not in ("CreateIndex", "ModifyIndex")}
            if same == entry:
                return True
        if cas is not None:
            if cas == 0 and existing is not None:
                return False
            if cas != 0 and (existing is None or existing["ModifyIndex"] != cas):
                return False
        self._validate_graph(key, entry)
        idx = self._bump(f"config:{entry['Kind']}")
        entry["CreateIndex"] = existing["CreateIndex"] if existing else idx
        entry["ModifyIndex"] = idx
        self.config_entries[key] = entry
        return True

    def config_get(self, kind: str, name: str, secret: str | None) -> tuple[int, dict]:
        with self.lock:
            authz = self.resolve(secret)
            if kind not in KNOWN_KINDS:
                raise ConsulError(500, f"invalid config entry kind: {kind}")
            if not self._entry_can_read(authz, kind, name):
                resource = "intentions" if kind == "service-intentions" else "service"
                raise authz.denied(resource, "read", name)
            entry = self.config_entries.get((kind, name))
            index = self.idx(f"config:{kind}")
            if entry is None:
                # agent/config_endpoint.go ConfigEntryNotFoundErr
                raise ConsulError(
                    404, f'Config entry not found for "{kind}" / "{name}"', {"X-Consul-Index": str(index)}
                )
            return index, copy.deepcopy(entry)

    def config_list(self, kind: str, secret: str | None) -> tuple[int, list]:
        with self.lock:
            authz = self.resolve(secret)
            if kind not in KNOWN_KINDS:
                raise ConsulError(500, f"invalid config entry kind: {kind}")
            out = [
                copy.deepcopy(e)
                for (k, n), e in sorted(self.config_entries.items())
                if k == kind and self._entry_can_read(authz, k, n)
            ]
            return self.idx(f"config:{kind}"), out

    def config_delete(self, kind: str, name: str, cas: int | None, secret: str | None):
        """DELETE /v1/config/<kind>/<name>: ``{}`` without cas, ``true``/``false`` with it."""
        with self.lock:
            if kind not in KNOWN_KINDS:
                raise ConsulError(400, f"invalid config entry kind: {kind}")
            authz = self.resolve(secret)
            self._entry_can_write(authz, kind, name)
            key = (kind, name)
            existing = self.config_entries.get(key)
            if existing is None:
                # shouldSkipOperation: deleting nothing is a successful no-op.
                return True if cas is not None else {}
            if cas is not None and existing["ModifyIndex"] != cas:
                return False
            self._validate_graph(key, None)
            del self.config_entries[key]
            self._bump(f"config:{kind}")
            return True if cas is not None else {}

    # ------------------------------------------------------------------ intentions
    def _intention_view(self, entry: dict, src: dict) -> dict:
        """ServiceIntentionsConfigEntry.ToIntention, rendered like the API docs' samples."""
        out = {"Description": src.get("Description", "")}
        if src.get("Peer"):
            out["SourcePeer"] = src["Peer"]
        out.update(
            {
                "SourceNS": "default",
                "SourceName": src["Name"],
                "DestinationNS": "default",
                "DestinationName": entry["Name"],
                "SourceType": src.get("Type", "consul"),
            }
        )
        if src.get("Action"):
            out["Action"] = src["Action"]
        if src.get("Permissions"):
            out["Permissions"] = copy.deepcopy(src["Permissions"])
        out["Meta"] = dict(entry.get("Meta") or {})
        out["Precedence"] = src["Precedence"]
        out["CreateIndex"] = entry["CreateIndex"]
        out["ModifyIndex"] = entry["ModifyIndex"]
        return out

    @staticmethod
    def _sort_key(ixn: dict):
        # IntentionPrecedenceSorter: precedence desc, then (SrcNS, Src, DstNS, Dst).
        return (-ixn["Precedence"], ixn["SourceNS"], ixn["SourceName"], ixn["DestinationNS"], ixn["DestinationName"])

    def _all_intentions(self) -> list[dict]:
        out = []
        for (kind, _name), entry in self.config_entries.items():
            if kind == "service-intentions":
                out.extend(self._intention_view(entry, src) for src in entry["Sources"])
        return out

    def intentions_for_destination(self, name: str) -> list[dict]:
        """Intention.Match by destination: the entries for ``name`` and ``*``, by precedence."""
        out = [i for i in self._all_intentions() if i["DestinationName"] in (name, "*")]
        return sorted(out, key=self._sort_key)

    def _intentions_for_source(self, name: str) -> list[dict]:
        out = [i for i in self._all_intentions() if i["SourceName"] in (name, "*")]
        return sorted(out, key=self._sort_key)

    @staticmethod
    def _parse_component(value: str) -> str:
        # parseIntentionStringComponent: CE names are "name" or "default/name".
        if value.startswith("peer:"):
            raise ConsulError(500, "cannot specify a peer here")
        parts = value.split("/")
        if len(parts) > 3:
            raise ConsulError(500, "input can contain at most two '/'")
        return parts[-1]

    def _exact_params(self, source: str | None, destination: str | None) -> tuple[str, str]:
        if not source:
            raise ConsulError(500, "required query parameter 'source' not set")
        if not destination:
            raise ConsulError(500, "required query parameter 'destination' not set")
        return self._parse_component(source), self._parse_component(destination)

    def intention_put_exact(self, source, destination, raw: dict, secret: str | None) -> bool:
        """PUT /v1/connect/intentions/exact: upsert one source into the destination's entry."""
        with self.lock:
            src_name, dst_name = self._exact_params(source, destination)
            body = decode.normalize(raw if isinstance(raw, dict) else {}, decode.INTENTION)
            authz = self.resolve(secret)
            if not authz.intention_write(dst_name):
                raise ConsulError(403, PERMISSION_DENIED)  # Intention.Apply returns bare ErrPermissionDenied
            if body.get("ID"):
                raise ConsulError(500, "ID must not be specified")
            key = ("service-intentions", dst_name)
            prev = self.config_entries.get(key)
            if body.get("Meta"):
                if prev is None or (prev.get("Meta") or {}) != body["Meta"]:
                    msg = (
                        "Meta must not be specified"
                        if prev is None
                        else ("Meta must not be specified, or should be unchanged during an update.")
                    )
                    raise ConsulError(500, msg)
            src = {"Name": src_name}
            if body.get("Action"):
                src["Action"] = body["Action"]
            if body.get("Permissions"):
                src["Permissions"] = copy.deepcopy(body["Permissions"])
            src["Type"] = body.get("SourceType") or "consul"
            if body.get("Description"):
                src["Description"] = body["Description"]
            if prev is None:
                entry = {"Kind": "service-intentions", "Name": dst_name, "Sources": [src]}
            else:
                entry = {
                    k: copy.deepcopy(v) for k, v in prev.items() if k not in ("CreateIndex", "ModifyIndex", "Hash")
                }
                # ServiceIntentionsConfigEntry.UpsertSourceByName: replace in place or append.
                if any(s["Name"] == src_name for s in entry["Sources"]):
                    entry["Sources"] = [src if s["Name"] == src_name else s for s in entry["Sources"]]
                else:
                    entry["Sources"].append(src)
            entry = self._normalize_intentions(entry)
            self._apply_entry(entry, None)
            return True

    def intention_get_exact(self, source, destination, secret: str | None) -> tuple[int, dict]:
        with self.lock:
            src_name, dst_name = self._exact_params(source, destination)
            authz = self.resolve(secret)
            index = self.idx("config:service-intentions")
            entry = self.config_entries.get(("service-intentions", dst_name))
            src = next((s for s in (entry or {}).get("Sources", []) if s["Name"] == src_name), None)
            if src is None:
                raise ConsulError(404, "Intention not found")
            if not (authz.intention_read(dst_name) or authz.intention_read(src_name)):
                raise ConsulError(403, PERMISSION_DENIED)
            return index, self._intention_view(entry, src)

    def intention_delete_exact(self, source, destination, secret: str | None) -> bool:
        with self.lock:
            src_name, dst_name = self._exact_params(source, destination)
            authz = self.resolve(secret)
            if not authz.intention_write(dst_name):
                raise ConsulError(403, PERMISSION_DENIED)
            key = ("service-intentions", dst_name)
            entry = self.config_entries.get(key)
            if entry is None or not any(s["Name"] == src_name for s in entry["Sources"]):
                return True  # by-name deletions are idempotent
            remaining = [s for s in entry["Sources"] if s["Name"] != src_name]
            if not remaining:
                del self.config_entries[key]
                self._bump("config:service-intentions")
                return True
            new = {k: copy.deepcopy(v) for k, v in entry.items() if k not in ("CreateIndex", "ModifyIndex", "Hash")}
            new["Sources"] = remaining
            self._apply_entry(self._normalize_intentions(new), None)
            return True

    def intention_list(self, secret: str | None) -> tuple[int, list]:
        with self.lock:
            authz = self.resolve(secret)
            out = [
                i
                for i in sorted(self._all_intentions(), key=self._sort_key)
                if authz.intention_read(i["DestinationName"]) or authz.intention_read(i["SourceName"])
            ]
            return self.idx("config:service-intentions"), out

    def intention_match(self, by: str | None, names: list[str], secret: str | None) -> tuple[int, dict]:
        with self.lock:
            if not by:
                raise ConsulError(500, "required query parameter 'by' not set")
            if by not in ("source", "destination"):
                raise ConsulError(500, "'by' parameter must be one of 'source' or 'destination'")
            if not names:
                raise ConsulError(500, "required query parameter 'name' not set")
            authz = self.resolve(secret)
            out = {}
            for raw in names:
                name = self._parse_component(raw)
                # Intention.Match: intentions:read on every requested name.
                if not authz.intention_read(name):
                    raise ConsulError(403, PERMISSION_DENIED)
                if by == "destination":
                    out[raw] = self.intentions_for_destination(name)
                else:
                    out[raw] = self._intentions_for_source(name)
            return self.idx("config:service-intentions"), out

    def _default_allow(self) -> bool:
        if self.default_intention_allow is not None:
            return bool(self.default_intention_allow)
        return not self.acl_enabled  # IntentionDefaultAllow follows the ACL default policy

    def decide(self, source: str, destination: str) -> tuple[bool, dict | None]:
        """L4 decision: first matching intention by precedence; L7 (Permissions) counts as deny."""
        with self.lock:
            for ixn in self.intentions_for_destination(destination):
                if ixn["SourceName"] in (source, "*"):
                    return (not ixn.get("Permissions") and ixn.get("Action") == "allow"), ixn
            return self._default_allow(), None

    def intention_check(self, source, destination, secret: str | None) -> dict:
        with self.lock:
            if not source:
                raise ConsulError(500, "required query parameter 'source' not set")
            if not destination:
                raise ConsulError(500, "required query parameter 'destination' not set")
            src_name, dst_name = self._parse_component(source), self._parse_component(destination)
            authz = self.resolve(secret)
            # Intention.Check requires service:read on the destination.
            if not authz.service_read(dst_name):
                raise ConsulError(403, PERMISSION_DENIED)
            allowed, _ = self.decide(src_name, dst_name)
            return {"Allowed": allowed}

    @staticmethod
    def intention_string(ixn: dict) -> str:
        """Intention.String() as used in authorize reasons (CE: names without namespaces)."""
        detail = (
            f"Permissions: {len(ixn['Permissions'])}"
            if ixn.get("Permissions")
            else "Action: " + str(ixn.get("Action", "")).upper()
        )
        return f"{ixn['SourceName']} => {ixn['DestinationName']} (Precedence: {ixn['Precedence']}, {detail})"

    def authorize(self, raw, secret: str | None) -> dict:
        """POST /v1/agent/connect/authorize (agent/agent_endpoint.go AgentConnectAuthorize)."""
        with self.lock:
            if not isinstance(raw, dict):
                raise ConsulError(400, "Request decode failed: json: cannot unmarshal into Go value")
            body = decode.normalize(raw, decode.AUTHORIZE)
            target = body.get("Target") or ""
            if not target:
                raise ConsulError(400, "Target service must be specified")
            uri = body.get("ClientCertURI") or ""
            if not uri.startswith("spiffe://") or "/" not in uri[len("spiffe://") :]:
                raise ConsulError(400, "ClientCertURI not a valid Connect identifier")
            m = _SPIFFE_SERVICE.match(uri)
            if not m:
                path = uri[len("spiffe://") :].split("/", 1)[1]
                if re.match(
                    r"^(agent/client/dc/[^/]+/id/[^/]+|(ap/[^/]+/)?gateway/mesh/dc/[^/]+|"
                    r"(ap/[^/]+/)?mesh-gateway/dc/[^/]+|agent/server/dc/[^/]+)$",
                    path,
                ):
                    raise ConsulError(400, "ClientCertURI not a valid Service identifier")
                raise ConsulError(400, "ClientCertURI not a valid Connect identifier")
            authz = self.resolve(secret)
            authz.require(authz.service_write(target), "service", "write", target)
            allowed, ixn = self.decide(m.group("svc"), target)
            if ixn is not None:
                layer = "L7" if ixn.get("Permissions") else "L4"
                return {"Authorized": allowed, "Reason": f"Matched {layer} intention: {self.intention_string(ixn)}"}
            if self.default_intention_allow is not None:
                return {"Authorized": allowed, "Reason": "Default intention policy"}
            return {"Authorized": allowed, "Reason": "Default behavior configured by ACLs"}

    # ------------------------------------------------------------------ Connect CA
    def ca_roots(self) -> tuple[int, dict]:
        with self.lock:
            index = self.idx("ca-roots")
            return index, self.ca.roots_body(self.inactive_cas)

    def rotate_ca(self, keep_old: bool = True) -> str:
        """A new active root in the same trust domain, as a CA configuration change does
        (agent/consul/leader_connect_ca.go ``UpdateConfiguration``); returns its root ID.

        ``keep_old``: the old root stays in ``Roots`` with ``Active: false`` and cross-signs the
        new one (its certificate becomes the new root's ``IntermediateCerts``, appended to every
        leaf). Without it the old roots are gone at once, as after pruning, and nothing chains
        to them any more.

        Every cached leaf is re-issued under the new root and its index bumped, waking the
        blocking leaf queries; the agent's leaf manager does this on seeing the new active root
        (agent/leafcert/generate.go ``attemptLeafRefresh``: ``activeRootHasKey`` is false), after
        a random delay of up to ``caChangeJitterWindow`` (30 s) that the fake leaves out.
        """
        with self.lock:
            old = self.ca
            new = ConnectCA(self.now(), self.datacenter, cluster_id=old.cluster_id, root_serial=old.root_serial + 1)
            if keep_old:
                new.intermediate_pems = [old.cross_sign(new, self.now())]
                old.rotated_out_at = self.now()
                self.inactive_cas.append(old)
            else:
                self.inactive_cas = []
            self.ca = new
            new.create_index = self._bump("ca-roots")
            for service in list(self.leaves):
                self._issue_leaf(service)
            self.notify()
            return new.root_id

    def _issue_leaf(self, service: str) -> dict:
        idx = self._bump(f"leaf:{service}")
        leaf = self.ca.issue_leaf(service, self.now(), idx)
        life = leaf["_valid_before"] - leaf["_valid_after"]
        # leafcert: renew at a random point between 60% and 90% of the lifetime.
        leaf["_soft_expiry"] = leaf["_valid_after"] + life * random.uniform(0.6, 0.9)
        self.leaves[service] = leaf
        return leaf

    def leaf(self, service: str, secret: str | None, revalidate: bool) -> tuple[int, dict]:
        with self.lock:
            authz = self.resolve(secret)
            authz.require(authz.service_write(service), "service", "write", service)
            leaf = self.leaves.get(service)
            if leaf is None or (revalidate and self.now() >= leaf["_soft_expiry"]):
                leaf = self._issue_leaf(service)
            return leaf["ModifyIndex"], _strip_private(leaf)

    # ------------------------------------------------------------------ misc
    def agent_self(self, secret: str | None) -> dict:
        with self.lock:
            authz = self.resolve(secret)
            authz.require(authz.agent_read(self.node_name), "agent", "read", self.node_name)
            return {
                "Config": {
                    "Datacenter": self.datacenter,
                    "PrimaryDatacenter": self.datacenter,
                    "NodeName": self.node_name,
                    "NodeID": self.node_id,
                    "Revision": "fake",
                    "Server": True,
                    "Version": CONSUL_VERSION,
                    "BuildDate": "2023-11-01T00:00:00Z",
                },
                "DebugConfig": {},
                "Coord": None,
                "Member": {
                    "Name": self.node_name,
                    "Addr": "127.0.0.1",
                    "Port": 8301,
                    "Tags": {"dc": self.datacenter, "role": "consul", "build": CONSUL_VERSION, "port": "8300"},
                    "Status": 1,
                    "ProtocolMin": 1,
                    "ProtocolMax": 5,
                    "ProtocolCur": 2,
                    "DelegateMin": 2,
                    "DelegateMax": 5,
                    "DelegateCur": 4,
                },
                "Stats": {},
                "Meta": {"consul-network-segment": ""},
            }

    def snapshot(self) -> dict:
        """Deep copy of the state, in the shape FakeConsul.snapshot() documents."""
        with self.lock:
            return {
                "services": {sid: self._agent_service_view(s) for sid, s in self.services.items()},
                "checks": {cid: self._check_view(c) for cid, c in self.checks.items()},
                "tokens": {a: self._token_view(t) for a, t in self.tokens.items() if not self._token_expired(t)},
                "config_entries": {k: copy.deepcopy(v) for k, v in self.config_entries.items()},
                "index": self.index,
            }
