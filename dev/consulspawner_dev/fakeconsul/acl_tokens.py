"""ACL tokens and policies: create, read, list, delete, and resolving a secret to an authorizer.

Follows ``agent/acl_endpoint.go`` (HTTP), ``agent/consul/acl_endpoint.go`` (``ACL.TokenSet``,
``TokenRead``, ``TokenList``, ``TokenDelete``, ``PolicySet``/``Read``/``List``/``Delete``),
``agent/consul/auth/token_writer.go`` (validation of a token write), ``agent/consul/state/acl.go``
(storage, ``fixupTokenPolicyLinks``), ``agent/structs/acl.go`` (hashes, builtin policy) and
``acl/validation.go`` (names).
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import uuid

from . import decode
from .acl import (
    ACL_DISABLED,
    ALLOW_ALL,
    ANONYMOUS_ACCESSOR,
    GLOBAL_MANAGEMENT_ID,
    GLOBAL_MANAGEMENT_NAME,
    GLOBAL_MANAGEMENT_RULES,
    Authorizer,
    ConsulError,
    RulesError,
    not_found_acl,
    parse_rules,
)
from .common import (
    _POLICY_NAME,
    _SERVICE_IDENTITY_NAME,
    _UUID,
    TOKEN_MAX_TTL,
    TOKEN_MIN_TTL,
    _strip_private,
)
from .godur import DurationError, duration_value, format_duration, format_time, parse_time


class AclTokens:
    """Tokens and policies of the fake agent (the ACL subsystem minus auth methods)."""

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
            ) + tuple(
                # A builtin/service templated policy (from a templated-policy binding rule)
                # grants what a service identity of that name grants (acl_templated_policy.go).
                (t.get("TemplateVariables") or {}).get("Name", "")
                for t in token.get("TemplatedPolicies") or []
                if t.get("TemplateName") == "builtin/service"
            )
            # Node identities apply only in their datacenter (the resolver's synthetic policy),
            # as do builtin/node templated policies (from a templated-policy binding rule).
            nodes = [n["NodeName"] for n in token.get("NodeIdentities") or [] if n.get("Datacenter") == self.datacenter]
            nodes += [
                (t.get("TemplateVariables") or {}).get("Name", "")
                for t in token.get("TemplatedPolicies") or []
                if t.get("TemplateName") == "builtin/node"
            ]
            rules.extend(self._node_identity_rules(name) for name in nodes)
            return Authorizer(token["AccessorID"], management=management, services=services, rules=rules)

    def _node_identity_rules(self, name: str) -> dict:
        """agent/structs/acl_ce.go aclPolicyTemplateNodeIdentity: node write, all services read."""
        key = f"node-identity:{name}"
        if key not in self._parsed_rules:
            text = f'node "{name}" {{ policy = "write" }}\nservice_prefix "" {{ policy = "read" }}\n'
            self._parsed_rules[key] = parse_rules(text)
        return self._parsed_rules[key]

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

    def _disclose(self, reader: str, token: dict, operation: str) -> None:
        """Record that a request made with token ``reader`` received ``token``'s SecretID.

        Test evidence, not Consul behaviour: lets a test show that a component never received
        another token's secret (``FakeConsul.secret_reads``).
        """
        self.secret_reads.append({"reader": reader, "accessor": token["AccessorID"], "operation": operation})

    def _token_view(self, token: dict) -> dict:
        out = _strip_private(token)
        out["Policies"] = self._policy_links_view(out.get("Policies"))
        for key in ("Policies", "ServiceIdentities", "Roles", "NodeIdentities", "TemplatedPolicies"):
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
            token["NodeIdentities"] = self._normalize_node_identities(body.get("NodeIdentities"))
            stored = self._store_token(token)
            self._disclose(authz.accessor, stored, "token-write")
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

    def _policy_by_name(self, name: str) -> dict | None:
        """state/acl_schema.go: the policy name index is lower-cased on write and on read."""
        wanted = name.lower()
        return next((p for p in self.policies.values() if p["Name"].lower() == wanted), None)

    def _normalize_policy_links(self, links) -> list:
        """auth/token_writer.go normalizePolicyLinks: by ID, else by name; de-duplicated by ID."""
        out: list = []
        for link in links or []:
            pid, name = link.get("ID") or "", link.get("Name") or ""
            if not pid:
                policy = self._policy_by_name(name)
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
            name_match = self._policy_by_name(name)
            pid = body.get("ID") or ""
            existing = None
            if pid:
                if not _UUID.match(pid):
                    raise ConsulError(500, "Policy ID invalid UUID")
                existing = self.policies.get(pid)
                if existing is None:
                    raise ConsulError(500, f"cannot find policy {pid}")
                if name_match is not None and name_match["ID"] != pid:
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
                policy = self._policy_by_name(name)
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

    @staticmethod
    def _normalize_node_identities(ids) -> list:
        """auth/token_writer.go normalizeNodeIdentities: name, datacenter, valid name; de-duplicated."""
        out: list = []
        for ident in ids or []:
            name, dc = ident.get("NodeName") or "", ident.get("Datacenter") or ""
            if not name:
                raise ConsulError(500, "Node identity is missing the node name field on this token")
            if not dc:
                raise ConsulError(500, "Node identity is missing the datacenter field on this token")
            if len(name) > 256 or not _SERVICE_IDENTITY_NAME.match(name):  # same pattern as nodes
                raise ConsulError(
                    500,
                    "Node identity has an invalid name. Only lowercase alphanumeric characters, '-' and '_' "
                    "are allowed",
                )
            if {"NodeName": name, "Datacenter": dc} not in out:
                out.append({"NodeName": name, "Datacenter": dc})
        return out

    def acl_token_read(self, accessor: str, secret: str | None) -> tuple[int, dict]:
        with self.lock:
            self._require_acls()
            authz = self.resolve(secret)
            authz.require(authz.acl_read(), "acl", "read")
            token = self.tokens.get(accessor)
            if token is None or self._token_expired(token):
                # acl.ACLResourceNotExistError("token", ...) as a 404
                raise ConsulError(404, "Requested token does not exist: ACL not found")
            view = self._token_view(token)
            if not authz.acl_write():
                view["SecretID"] = "<hidden>"  # aclfilter.go filterToken: acl:read without acl:write
            else:
                self._disclose(authz.accessor, token, "token-read")
            return self.idx("acl-tokens"), view

    def acl_token_self(self, secret: str | None) -> tuple[int, dict]:
        with self.lock:
            self._require_acls()
            token = self._token_by_secret(secret or "")
            if token is None:
                raise ConsulError(404, "Supplied token does not exist")
            self._disclose(token["AccessorID"], token, "token-self")
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
            for value in (policy, role):
                # state/acl_schema.go: the policies and roles indexes are read as UUIDs.
                if value and len(value) != 36:
                    raise ConsulError(500, "failed acl token lookup: index error: UUID must be 36 characters")
                if value and not _UUID.match(value):
                    # (go-memdb/hex error text abbreviated: the status and prefix are what matter)
                    raise ConsulError(500, "failed acl token lookup: index error: encoding/hex: invalid byte")

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
                        "NodeIdentities",
                        "TemplatedPolicies",
                        "Local",
                        "AuthMethod",
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
                else:
                    self._disclose(authz.accessor, token, "token-list")
                stubs.append(copy.deepcopy(stub))
            return self.idx("acl-tokens"), stubs
