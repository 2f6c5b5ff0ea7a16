"""ACL auth methods, binding rules, login and logout.

Follows ``agent/acl_endpoint.go`` (HTTP: ``ACLAuthMethod*``, ``ACLBindingRule*``, ``ACLLogin``,
``ACLLogout``), ``agent/consul/acl_endpoint.go`` (``ACL.AuthMethodSet``/``Read``/``List``/
``Delete``, ``BindingRuleSet``/``Read``/``List``/``Delete``, ``Login``, ``Logout``),
``agent/consul/auth/login.go`` (``TokenForVerifiedIdentity``, ``BuildTokenDescription``),
``agent/consul/auth/binder.go`` (``Bind``, ``IsValidBindingRule``, ``computeBindName``),
``lib/template/hil.go`` (``InterpolateHIL``), ``acl/validation.go`` (bind-name validators),
``agent/consul/state/acl.go`` (deleting a method deletes its rules and its tokens) and
``agent/structs/aclfilter/filter.go`` (auth methods and rules need acl:read). The ``jwt``
validator itself is :mod:`.jwt_verify`; selectors are :mod:`.bexpr`.
"""

from __future__ import annotations

import copy
import json
import re
import uuid

from . import bexpr, jwt_verify
from .acl import PERMISSION_DENIED, ConsulError, not_found_acl
from .common import _UUID, TOKEN_MAX_TTL, TOKEN_MIN_TTL
from .godur import DurationError, duration_value, format_duration, format_time

# agent/consul/acl_endpoint.go validAuthMethod; acl/validation.go validRoleName / validPolicyName
# and the identity-name patterns with their 256-byte limit.
_AUTH_METHOD_NAME = re.compile(r"^[A-Za-z0-9\-_]{1,128}$")
_ROLE_NAME = re.compile(r"^[A-Za-z0-9\-_]{1,256}$")
_POLICY_NAME = re.compile(r"^[A-Za-z0-9\-_]{1,128}$")
_IDENTITY_NAME = re.compile(r"^[a-z0-9]([a-z0-9\-_]*[a-z0-9])?$")
_HIL_VAR = re.compile(r"\$\{\s*([^}]*?)\s*\}")
BIND_TYPES = ("service", "node", "role", "policy", "templated-policy")
LOGIN_DESCRIPTION_PREFIX = "token created via login"  # agent/consul/acl_endpoint.go Login
# agent/structs/acl_templated_policy.go: the builtin templates a templated-policy rule may name.
TEMPLATED_POLICIES = {"builtin/service", "builtin/node", "builtin/dns", "builtin/nomad-server"}


def _identity_name(name: str) -> bool:
    return len(name) <= 256 and bool(_IDENTITY_NAME.match(name))


def _interpolate(template: str, variables: dict[str, str], lowercase: bool) -> str:
    """lib/template InterpolateHIL: text without ``${`` is returned as is."""
    if "${" not in template:
        return template

    def sub(m: re.Match) -> str:
        name = m.group(1)
        if name not in variables:
            raise ValueError(f"unknown variable accessed: {name}")
        value = variables[name]
        return value.lower() if lowercase else value

    return _HIL_VAR.sub(sub, template)


def _compute_bind_name(template: str, variables: dict[str, str], valid) -> str:
    """binder.go computeBindName (with its refusal of values that were lower-cased)."""
    try:
        computed = _interpolate(template, variables, True)
    except ValueError as err:
        raise ValueError(f"error interpreting template: {err}") from None
    if valid is not None and not valid(computed):
        raise ValueError(f"invalid bind name: {json.dumps(computed)}")
    if "${" in template and _interpolate(template, variables, False) != computed:
        original = _interpolate(template, variables, False)
        raise ValueError(
            "invalid bind name: the projected variables contain uppercase characters "
            f"(interpolated as {json.dumps(original)} before lowercasing), but bind names for this type "
            "must be lowercase; ensure the bound service or node name is lowercase"
        )
    return computed


def _go_json_map(meta: dict) -> str:
    """json.Marshal of a map[string]string: sorted keys, no spaces, Go's HTML escaping."""
    text = json.dumps(meta, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    for char, esc in (
        ("<", "\\u003c"),
        (">", "\\u003e"),
        ("&", "\\u0026"),
        ("\u2028", "\\u2028"),
        ("\u2029", "\\u2029"),
    ):
        text = text.replace(char, esc)
    return text


class AclLogin:
    """Auth methods (type ``jwt``), binding rules, and the tokens made by login."""

    # ------------------------------------------------------------------ auth methods
    def _auth_method_view(self, method: dict) -> dict:
        out = {k: v for k, v in method.items() if not k.startswith("_")}
        return copy.deepcopy(out)

    def auth_method_set(self, body, secret: str | None, name_in_url: str = "") -> dict:
        """PUT /v1/acl/auth-method[/<name>] (ACL.AuthMethodSet)."""
        with self.lock:
            self._require_acls()
            if not isinstance(body, dict):
                raise ConsulError(400, "AuthMethod decoding failed: json: cannot unmarshal into structs.ACLAuthMethod")
            if name_in_url:
                if body.get("Name") and body["Name"] != name_in_url:
                    raise ConsulError(400, "AuthMethod Name in URL and payload do not match")
                body = {**body, "Name": name_in_url}
            authz = self.resolve(secret)
            authz.require(authz.acl_write(), "acl", "write")
            name = body.get("Name") or ""
            if not name:
                raise ConsulError(500, "Invalid Auth Method: no Name is set")
            if not _AUTH_METHOD_NAME.match(name):
                raise ConsulError(
                    500, "Invalid Auth Method: invalid Name. Only alphanumeric characters, '-' and '_' are allowed"
                )
            existing = self.auth_methods.get(name)
            kind = body.get("Type") or ""
            if existing is not None:
                if not kind:
                    kind = existing["Type"]
                elif existing["Type"] != kind:
                    raise ConsulError(500, "the Type field of an Auth Method is immutable")
            if kind != "jwt":  # the fake registers only the jwt validator (authmethod.Types())
                raise ConsulError(500, "Invalid Auth Method: Type should be one of: [jwt]")
            try:
                max_ttl = duration_value(body.get("MaxTokenTTL") or 0)
            except DurationError as err:
                raise ConsulError(400, f"AuthMethod decoding failed: {err}") from None
            if max_ttl:
                if max_ttl > TOKEN_MAX_TTL:
                    raise ConsulError(
                        500,
                        f"MaxTokenTTL {format_duration(max_ttl)} cannot be more than {format_duration(TOKEN_MAX_TTL)}",
                    )
                if max_ttl < TOKEN_MIN_TTL:
                    raise ConsulError(
                        500,
                        f"MaxTokenTTL {format_duration(max_ttl)} cannot be less than {format_duration(TOKEN_MIN_TTL)}",
                    )
            locality = body.get("TokenLocality") or ""
            if locality not in ("", "local", "global"):
                raise ConsulError(500, "Invalid Auth Method: TokenLocality should be one of 'local' or 'global'")
            try:
                config = jwt_verify.validate_config(body.get("Config"))
            except jwt_verify.JWTError as err:
                raise ConsulError(500, f"Invalid Auth Method: {err}") from None
            method = {"Name": name, "Type": kind}
            if body.get("DisplayName"):
                method["DisplayName"] = body["DisplayName"]
            method["Description"] = body.get("Description") or ""
            if max_ttl:
                method["MaxTokenTTL"] = format_duration(max_ttl)
                method["_max_ttl"] = max_ttl
            if locality:
                method["TokenLocality"] = locality
            method["Config"] = copy.deepcopy(config)
            idx = self._bump("acl-auth-methods")
            method["CreateIndex"] = existing["CreateIndex"] if existing else idx
            method["ModifyIndex"] = idx
            self.auth_methods[name] = method
            return self._auth_method_view(method)

    def auth_method_read(self, name: str, secret: str | None) -> tuple[int, dict]:
        with self.lock:
            self._require_acls()
            authz = self.resolve(secret)
            authz.require(authz.acl_read(), "acl", "read")
            method = self.auth_methods.get(name)
            if method is None:
                raise ConsulError(404, "Requested auth method does not exist: ACL not found")
            return self.idx("acl-auth-methods"), self._auth_method_view(method)

    def auth_method_list(self, secret: str | None) -> tuple[int, list]:
        with self.lock:
            self._require_acls()
            authz = self.resolve(secret)
            authz.require(authz.acl_read(), "acl", "read")
            stubs = []
            for name in sorted(self.auth_methods):
                view = self._auth_method_view(self.auth_methods[name])
                view.pop("Config", None)  # ACLAuthMethod.Stub has no Config
                stubs.append(view)
            return self.idx("acl-auth-methods"), stubs

    def auth_method_delete(self, name: str, secret: str | None) -> bool:
        """ACL.AuthMethodDelete; the state store also deletes the method's rules and tokens."""
        with self.lock:
            self._require_acls()
            authz = self.resolve(secret)
            authz.require(authz.acl_write(), "acl", "write")
            if name not in self.auth_methods:
                return True
            del self.auth_methods[name]
            for rid in [r for r, rule in self.binding_rules.items() if rule["AuthMethod"] == name]:
                del self.binding_rules[rid]
            for acc in [a for a, t in self.tokens.items() if t.get("AuthMethod") == name]:
                del self.tokens[acc]
            self._bump("acl-auth-methods", "acl-binding-rules", "acl-tokens")
            return True

    # ------------------------------------------------------------------ binding rules
    @staticmethod
    def _blank_identity(method: dict) -> tuple[dict, dict[str, str]]:
        """ssoauth Validator.NewIdentity: every mapped field present and empty."""
        config = method["Config"]
        values = {name: "" for name in (config.get("ClaimMappings") or {}).values()}
        lists: dict = {name: [] for name in (config.get("ListClaimMappings") or {}).values()}
        return {"value": values, "list": lists}, {f"value.{k}": v for k, v in values.items()}

    def binding_rule_set(self, body, secret: str | None, rule_id_in_url: str = "") -> dict:
        """PUT /v1/acl/binding-rule[/<id>] (ACL.BindingRuleSet)."""
        with self.lock:
            self._require_acls()
            if not isinstance(body, dict):
                raise ConsulError(
                    400, "BindingRule decoding failed: json: cannot unmarshal into structs.ACLBindingRule"
                )
            if body.get("ID") and body["ID"] != rule_id_in_url:
                raise ConsulError(400, "BindingRule ID in URL and payload do not match")
            authz = self.resolve(secret)
            authz.require(authz.acl_write(), "acl", "write")
            rule = {k: body.get(k) or "" for k in ("Description", "AuthMethod", "Selector", "BindType", "BindName")}
            rid = rule_id_in_url
            existing = None
            if rid:
                if not _UUID.match(rid):
                    raise ConsulError(500, "Binding Rule ID invalid UUID")
                existing = self.binding_rules.get(rid)
                if existing is None:
                    raise ConsulError(500, f"cannot find binding rule {rid}")
                if not rule["AuthMethod"]:
                    rule["AuthMethod"] = existing["AuthMethod"]
                elif existing["AuthMethod"] != rule["AuthMethod"]:
                    raise ConsulError(500, "the AuthMethod field of an Binding Rule is immutable")
            else:
                rid = str(uuid.uuid4())
            if not rule["AuthMethod"]:
                raise ConsulError(500, "Invalid Binding Rule: no AuthMethod is set")
            method = self.auth_methods.get(rule["AuthMethod"])
            if method is None:
                raise ConsulError(500, f'cannot find auth method with name "{rule["AuthMethod"]}"')
            _fields, variables = self._blank_identity(method)
            if rule["Selector"]:
                try:
                    bexpr.compile_selector(rule["Selector"])
                except bexpr.SelectorError as err:
                    raise ConsulError(500, f"invalid Binding Rule: Selector is invalid: {err}") from None
            bind_vars = body.get("BindVars") if rule["BindType"] == "templated-policy" else None
            try:
                self._check_bind(rule["BindType"], rule["BindName"], bind_vars, {k: "fake" for k in variables})
            except ValueError as err:
                raise ConsulError(500, f"Invalid Binding Rule: invalid BindName or BindVars: {err}") from None
            rule["ID"] = rid
            if bind_vars:
                rule["BindVars"] = {"Name": bind_vars.get("Name", "")}
            idx = self._bump("acl-binding-rules")
            rule["CreateIndex"] = existing["CreateIndex"] if existing else idx
            rule["ModifyIndex"] = idx
            self.binding_rules[rid] = rule
            return copy.deepcopy(rule)

    @staticmethod
    def _check_bind(bind_type: str, bind_name: str, bind_vars, variables: dict) -> None:
        """binder.go IsValidBindingRule, over the method's variables all set to "fake"."""
        if not bind_type or not bind_name:
            raise ValueError("bindType and bindName must not be empty")
        if bind_type not in BIND_TYPES:
            raise ValueError(f'invalid Binding Rule: unknown BindType "{bind_type}"')
        try:
            if bind_type in ("service", "node"):
                _compute_bind_name(bind_name, variables, _identity_name)
            elif bind_type == "role":
                _compute_bind_name(bind_name, variables, _ROLE_NAME.match)
            elif bind_type == "policy":
                _compute_bind_name(bind_name, variables, _POLICY_NAME.match)
            else:
                AclLogin._templated(bind_name, bind_vars, variables)
        except ValueError as err:
            raise ValueError(f'failed to validate bindType "{bind_type}": {err}') from None

    @staticmethod
    def _templated(bind_name: str, bind_vars, variables: dict) -> dict:
        """binder.go generateTemplatedPolicies for the builtin templates."""
        if bind_name not in TEMPLATED_POLICIES:
            raise ValueError(
                f"Bind name for templated-policy bind type does not match existing template name: {bind_name}"
            )
        name = ""
        if bind_vars and bind_vars.get("Name"):
            name = _compute_bind_name(bind_vars["Name"], variables, None)
        if bind_name in ("builtin/service", "builtin/node") and not _identity_name(name):
            raise ValueError("templated policy failed validation: name is required and must be a valid name")
        return {"TemplateName": bind_name, "TemplateVariables": {"Name": name} if name else None}

    def binding_rule_read(self, rid: str, secret: str | None) -> tuple[int, dict]:
        with self.lock:
            self._require_acls()
            authz = self.resolve(secret)
            authz.require(authz.acl_read(), "acl", "read")
            rule = self.binding_rules.get(rid)
            if rule is None:
                raise ConsulError(404, "Requested binding rule does not exist: ACL not found")
            return self.idx("acl-binding-rules"), copy.deepcopy(rule)

    def binding_rule_list(self, secret: str | None, authmethod: str = "") -> tuple[int, list]:
        with self.lock:
            self._require_acls()
            authz = self.resolve(secret)
            authz.require(authz.acl_read(), "acl", "read")
            rules = [
                copy.deepcopy(r)
                for r in sorted(self.binding_rules.values(), key=lambda r: r["ID"])
                if not authmethod or r["AuthMethod"] == authmethod
            ]
            return self.idx("acl-binding-rules"), rules

    def binding_rule_delete(self, rid: str, secret: str | None) -> bool:
        with self.lock:
            self._require_acls()
            authz = self.resolve(secret)
            authz.require(authz.acl_write(), "acl", "write")
            if self.binding_rules.pop(rid, None) is not None:
                self._bump("acl-binding-rules")
            return True

    # ------------------------------------------------------------------ login / logout
    def _bind(self, method: dict, fields: dict, variables: dict[str, str]) -> dict:
        """binder.go Bind: the identities, roles and policies of every matching rule."""
        out: dict[str, list] = {"ServiceIdentities": [], "NodeIdentities": [], "Roles": [], "Policies": []}
        out["TemplatedPolicies"] = []
        rules = [r for r in self.binding_rules.values() if r["AuthMethod"] == method["Name"]]
        for rule in sorted(rules, key=lambda r: r["CreateIndex"]):
            if not bexpr.selector_matches(rule["Selector"], fields):
                continue
            kind, template = rule["BindType"], rule["BindName"]
            if kind == "service":
                name = _compute_bind_name(template, variables, _identity_name)
                out["ServiceIdentities"].append({"ServiceName": name})
            elif kind == "node":
                name = _compute_bind_name(template, variables, _identity_name)
                out["NodeIdentities"].append({"NodeName": name, "Datacenter": self.datacenter})
            elif kind == "templated-policy":
                out["TemplatedPolicies"].append(self._templated(template, rule.get("BindVars"), variables))
            elif kind == "policy":
                name = _compute_bind_name(template, variables, _ROLE_NAME.match)
                policy = self._policy_by_name(name)
                if policy is not None:
                    out["Policies"].append({"ID": policy["ID"], "Name": policy["Name"]})
            else:  # role: the fake has no roles, so a role binding never binds anything
                _compute_bind_name(template, variables, _ROLE_NAME.match)
        return out

    def login(self, body) -> dict:
        """POST /v1/acl/login (ACL.Login). The HTTP handler never parses a request token."""
        with self.lock:
            self._require_acls()
            if not isinstance(body, dict):
                raise ConsulError(400, "Failed to decode request body: json: cannot unmarshal into ACLLoginParams")
            meta = body.get("Meta") or {}
            if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
                raise ConsulError(
                    400,
                    "Failed to decode request body: json: cannot unmarshal into Go struct field "
                    "ACLLoginParams.Meta of type string",
                )
            for field in ("AuthMethod", "BearerToken"):
                if not isinstance(body.get(field) or "", str):
                    raise ConsulError(
                        400,
                        f"Failed to decode request body: json: cannot unmarshal into Go struct field "
                        f"ACLLoginParams.{field} of type string",
                    )
            name = body.get("AuthMethod") or ""
            method = self.auth_methods.get(name)
            if method is None:
                raise ConsulError(403, f'ACL not found: auth method "{name}" not found')
            try:
                claims = jwt_verify.verify(method["Config"], body.get("BearerToken") or "", self.now())
                values, lists = jwt_verify.extract(method["Config"], claims)
            except jwt_verify.JWTError as err:
                raise ConsulError(500, str(err)) from None
            variables = {f"value.{k}": v for k, v in values.items()}
            try:
                bindings = self._bind(method, {"value": values, "list": lists}, variables)
            except ValueError as err:
                raise ConsulError(500, str(err)) from None
            if not any(bindings.values()):
                raise ConsulError(403, PERMISSION_DENIED)
            now = self.now()
            description = LOGIN_DESCRIPTION_PREFIX
            if meta:
                description += ": " + _go_json_map(meta)
            token = {
                "AccessorID": str(uuid.uuid4()),
                "SecretID": str(uuid.uuid4()),
                "Description": description,
                "Local": method.get("TokenLocality") != "global",
                "AuthMethod": method["Name"],
                "CreateTime": format_time(now),
            }
            for key, items in bindings.items():
                if items:
                    token[key] = items
            if method.get("_max_ttl"):
                self._apply_expiry(token, {"ExpirationTTL": format_duration(method["_max_ttl"])}, now)
            stored = self._store_token(token)
            self._disclose("", stored, "login")  # login carries no token: the reader is anonymous
            return self._token_view(stored)

    def logout(self, secret: str | None) -> bool:
        """POST /v1/acl/logout (ACL.Logout -> auth.TokenWriter.Delete): only a login-made token."""
        with self.lock:
            self._require_acls()
            if not secret:
                raise ConsulError(401, "Supplied token does not exist")
            token = next((t for t in self.tokens.values() if t["SecretID"] == secret), None)
            if token is None:
                raise not_found_acl()
            if not token.get("AuthMethod"):
                # auth/token_writer.go Delete(secretID, fromLogout=true)
                raise ConsulError(403, f"{PERMISSION_DENIED}: token wasn't created via login")
            del self.tokens[token["AccessorID"]]
            self._bump("acl-tokens")
            return True
