"""ACL resolution and the authorizer a token grants, with Consul's error texts.

Sources: ``acl/errors.go`` (error strings, ``PermissionDeniedError.Error`` format),
``acl/resource_descriptor_ce.go`` (a resource name is printed in double quotes),
``agent/structs/acl_templated_policy_ce.go`` / ``aclPolicyTemplateServiceIdentity`` (what a
service identity grants), ``acl/policy_authorizer.go`` (a ``service`` rule with read or write
implies ``intentions = "read"``) and ``agent/structs/acl.go`` (the global-management policy).
"""

from __future__ import annotations

import json
import re

ANONYMOUS_ACCESSOR = "00000000-0000-0000-0000-000000000002"
GLOBAL_MANAGEMENT_ID = "00000000-0000-0000-0000-000000000001"
GLOBAL_MANAGEMENT_NAME = "global-management"

ACL_NOT_FOUND = "ACL not found"  # acl.ErrNotFound
PERMISSION_DENIED = "Permission denied"  # acl.ErrPermissionDenied (no details)
ACL_DISABLED = "ACL support disabled"  # agent/acl_endpoint.go aclDisabled (401)


class ConsulError(Exception):
    """An HTTP error answer, written as Consul writes it: a status and a plain-text body."""

    def __init__(self, status: int, text: str, headers: dict | None = None):
        super().__init__(text)
        self.status = status
        self.text = text
        self.headers = headers or {}


def not_found_acl() -> ConsulError:
    # agent/http.go: acl.IsErrNotFound errors are "forbidden" -> 403 with the error text.
    return ConsulError(403, ACL_NOT_FOUND)


class Authorizer:
    """What one resolved token may do: its policies' rules merged, evaluated default-deny.

    ``management`` adds the builtin global-management rules, ``services`` a service identity
    each, ``rules`` any parsed policy rules (see :func:`parse_rules`).
    """

    def __init__(
        self,
        accessor: str,
        management: bool = False,
        services: tuple[str, ...] = (),
        rules: list[dict] | tuple = (),
    ):
        self.accessor = accessor
        self.management = management
        parts = list(rules)
        if management:
            parts.append(_GLOBAL_MANAGEMENT)
        parts.extend(parse_rules(service_identity_rules(name)) for name in services)
        merged = merge_rules(parts)
        self._scalars = {k: merged[k] for k in _SCALARS}
        self._exact: dict[str, dict] = {}
        self._prefix: dict[str, dict] = {}
        for block in _BLOCKS:
            kind = block.removesuffix("_prefix")
            target = self._prefix if block.endswith("_prefix") else self._exact
            target.setdefault(kind, {})
            for name, fields in merged[block].items():
                target[kind][name] = fields["policy"] or None
                if kind == "service":
                    target.setdefault("intentions", {})[name] = _intention_level(fields)
        for kind in ("intentions",):
            self._exact.setdefault(kind, {})
            self._prefix.setdefault(kind, {})

    def _level(self, kind: str, name: str) -> str | None:
        return _lookup(name, self._exact.get(kind, {}), self._prefix.get(kind, {}))

    # ---- decisions ----
    def service_read(self, name: str) -> bool:
        return _enforce(self._level("service", name), "read")

    def service_write(self, name: str) -> bool:
        return _enforce(self._level("service", name), "write")

    def node_read(self, name: str = "") -> bool:
        return _enforce(self._level("node", name), "read")

    def node_write(self, name: str = "") -> bool:
        return _enforce(self._level("node", name), "write")

    def agent_read(self, name: str = "") -> bool:
        return _enforce(self._level("agent", name), "read")

    def agent_write(self, name: str = "") -> bool:
        return _enforce(self._level("agent", name), "write")

    def intention_read(self, name: str) -> bool:
        return _enforce(self._level("intentions", name), "read")

    def intention_write(self, name: str) -> bool:
        return _enforce(self._level("intentions", name), "write")

    def key_read(self, name: str) -> bool:
        return _enforce(self._level("key", name), "read")

    def acl_read(self) -> bool:
        return _enforce(self._scalars["acl"] or None, "read")

    def acl_write(self) -> bool:
        return _enforce(self._scalars["acl"] or None, "write")

    def operator_read(self) -> bool:
        return _enforce(self._scalars["operator"] or None, "read")

    def operator_write(self) -> bool:
        return _enforce(self._scalars["operator"] or None, "write")

    def mesh_read(self) -> bool:
        if self._scalars["mesh"]:
            return _enforce(self._scalars["mesh"], "read")
        return self.operator_read()  # policy_authorizer.go MeshRead: default to OperatorRead

    def mesh_write(self) -> bool:
        if self._scalars["mesh"]:
            return _enforce(self._scalars["mesh"], "write")
        return self.operator_write()  # policy_authorizer.go MeshWrite: default to OperatorWrite

    # ---- errors ----
    def denied(self, resource: str, level: str, name: str | None = None) -> ConsulError:
        """acl.PermissionDeniedError.Error() for this token, resource, access level and name."""
        msg = PERMISSION_DENIED
        if self.accessor == ANONYMOUS_ACCESSOR:
            msg += ": anonymous token"
        else:
            msg += f": token with AccessorID '{self.accessor}'"
        msg += f" lacks permission '{resource}:{level}'"
        if name:
            msg += f' on "{name}"'
        if self.accessor == ANONYMOUS_ACCESSOR:
            msg += ". The anonymous token is used implicitly when a request does not specify a token."
        return ConsulError(403, msg)

    def require(self, allowed: bool, resource: str, level: str, name: str | None = None) -> None:
        if not allowed:
            raise self.denied(resource, level, name)


# --------------------------------------------------------------------------- policy rules
#
# acl/policy.go: the rule kinds, their HCL block names and Validate(); acl/policy_merger.go:
# merging every policy of a token, where for one resource name "deny" beats "write" beats
# "list" beats "read" (takesPrecedenceOver); acl/policy_authorizer.go: an exact rule for a name
# beats the longest prefix rule, read grants read, write grants everything, deny denies, and a
# service rule without "intentions" grants intentions:read when its policy is read or write
# (otherwise intentions:deny); mesh falls back to the operator rule when it has none. A decision
# no rule makes is the default policy: deny (the fake always runs with default_policy = deny).

# (HCL block name, Go type name, field holding the block label) for acl/policy.go PolicyRules.
_BLOCKS = {
    "agent": ("AgentRule", "Node"),
    "agent_prefix": ("AgentRule", "Node"),
    "key": ("KeyRule", "Prefix"),
    "key_prefix": ("KeyRule", "Prefix"),
    "node": ("NodeRule", "Name"),
    "node_prefix": ("NodeRule", "Name"),
    "service": ("ServiceRule", "Name"),
    "service_prefix": ("ServiceRule", "Name"),
    "session": ("SessionRule", "Node"),
    "session_prefix": ("SessionRule", "Node"),
    "event": ("EventRule", "Event"),
    "event_prefix": ("EventRule", "Event"),
    "query": ("PreparedQueryRule", "Prefix"),
    "query_prefix": ("PreparedQueryRule", "Prefix"),
}
_SCALARS = ("acl", "keyring", "operator", "mesh", "peering")
_LEVELS = ("deny", "read", "list", "write")

GLOBAL_MANAGEMENT_RULES = """
acl = "write"
agent_prefix "" { policy = "write" }
event_prefix "" { policy = "write" }
key_prefix "" { policy = "write" }
keyring = "write"
node_prefix "" { policy = "write" }
operator = "write"
mesh = "write"
peering = "write"
query_prefix "" { policy = "write" }
service_prefix "" {
  policy = "write"
  intentions = "write"
}
session_prefix "" { policy = "write" }
"""  # agent/structs/acl.go ACLPolicyGlobalManagementRules


def service_identity_rules(name: str) -> str:
    """agent/structs/acl_ce.go aclPolicyTemplateServiceIdentity."""
    return (
        f'service "{name}" {{ policy = "write" }}\n'
        f'service "{name}-sidecar-proxy" {{ policy = "write" }}\n'
        'service_prefix "" { policy = "read" }\n'
        'node_prefix "" { policy = "read" }\n'
    )


class RulesError(Exception):
    """A rules text Consul refuses; str() is Consul's error text."""


_TOKEN_RE = re.compile(
    r'\s+|#[^\n]*|//[^\n]*|/\*.*?\*/|(?P<str>"(?:[^"\\]|\\.)*")|(?P<word>[A-Za-z_][A-Za-z0-9_\-.]*)|(?P<p>[{}=\[\],:])',
    re.S,
)


def _lex(text: str) -> list[tuple[str, str, int]]:
    out, pos = [], 0
    while pos < len(text):
        m = _TOKEN_RE.match(text, pos)
        if m is None:
            line = text.count("\n", 0, pos) + 1
            raise RulesError(f"Failed to parse ACL rules: At {line}: illegal char")
        if m.group("str") is not None:
            out.append(("str", json.loads(m.group("str")), pos))
        elif m.group("word") is not None:
            out.append(("word", m.group("word"), pos))
        elif m.group("p") is not None:
            out.append(("p", m.group("p"), pos))
        pos = m.end()
    return out


class _HCL:
    """The HCL (v1) subset ACL rules are written in: `key = "v"`, `block "label" { ... }`."""

    def __init__(self, text: str):
        self.text = text
        self.toks = _lex(text)
        self.i = 0

    def _err(self, what: str):
        pos = self.toks[self.i][2] if self.i < len(self.toks) else len(self.text)
        line = self.text.count("\n", 0, pos) + 1
        return RulesError(f"Failed to parse ACL rules: At {line}: {what}")

    def _peek(self):
        return self.toks[self.i] if self.i < len(self.toks) else (None, None, len(self.text))

    def body(self, closing: bool) -> list[tuple[str, list[str], object]]:
        items = []
        while True:
            kind, val, _ = self._peek()
            if kind is None:
                if closing:
                    raise self._err("expected '}'")
                return items
            if kind == "p" and val == "}" and closing:
                self.i += 1
                return items
            if kind == "p" and val == ",":
                self.i += 1
                continue
            if kind not in ("word", "str"):
                raise self._err(f"unexpected token {val!r}")
            key = val
            self.i += 1
            labels = []
            while self._peek()[0] == "str" and self._peek_after_labels():
                labels.append(self._peek()[1])
                self.i += 1
            kind, val, _ = self._peek()
            if kind == "p" and val == "=":
                self.i += 1
                kind, val, _ = self._peek()
            if kind == "p" and val == "{":
                self.i += 1
                items.append((key, labels, self.body(True)))
            elif kind in ("str", "word") and not labels:
                self.i += 1
                items.append((key, [], val))
            else:
                raise self._err(f"unexpected token while parsing {key!r}")

    def _peek_after_labels(self) -> bool:
        # a string after a key is a block label when a '{' (or another label) follows it
        j = self.i
        while j < len(self.toks) and self.toks[j][0] == "str":
            j += 1
        return j < len(self.toks) and self.toks[j][0] == "p" and self.toks[j][1] in ("{", "=")

    def parse(self):
        return self.body(False)


def _from_json(obj) -> list[tuple[str, list[str], object]]:
    """HCL's JSON form: {"service": {"web": {"policy": "write"}}, "acl": "write"}."""
    items = []
    if not isinstance(obj, dict):
        raise RulesError("Failed to parse ACL rules: root must be an object")
    for key, val in obj.items():
        if isinstance(val, dict) and key.lower() in _BLOCKS:
            for label, inner in val.items():
                entries = inner if isinstance(inner, list) else [inner]
                for entry in entries:
                    if not isinstance(entry, dict):
                        raise RulesError(f"Failed to parse ACL rules: {key}.{label} must be an object")
                    items.append((key, [label], [(k, [], v) for k, v in entry.items()]))
        elif isinstance(val, list) and key.lower() in _BLOCKS:
            for elem in val:
                items.extend(_from_json({key: elem}))
        else:
            items.append((key, [], val))
    return items


def _go_rule(block: str, name: str, fields: dict) -> str:
    """%#v of the rule struct, as Consul prints it in "Invalid <block> policy: ..." errors (CE)."""
    typ, label = _BLOCKS[block]
    parts = [f'{label}:"{name}"', f'Policy:"{fields.get("policy", "")}"']
    if typ == "ServiceRule":
        parts.append(f'Intentions:"{fields.get("intentions", "")}"')
    if typ in ("KeyRule", "NodeRule", "ServiceRule"):
        parts.append("EnterpriseRule:acl.EnterpriseRule{}")
    return f"&acl.{typ}{{{', '.join(parts)}}}"


def parse_rules(text: str) -> dict:
    """acl.NewPolicyFromSource: parse HCL (or its JSON form) and Validate(); raises RulesError."""
    rules: dict = {k: "" for k in _SCALARS}
    for block in _BLOCKS:
        rules[block] = []
    if not text or not text.strip():
        return rules
    if text.lstrip().startswith("{"):
        try:
            items = _from_json(json.loads(text))
        except ValueError as err:
            raise RulesError(f"Failed to parse ACL rules: {err}") from None
    else:
        items = _HCL(text).parse()
    for key, labels, value in items:
        k = key.lower()  # hcl v1 matches struct fields case-insensitively
        if k in _SCALARS:
            if isinstance(value, list):
                raise RulesError(f"Failed to parse ACL rules: {key}: expected a string")
            rules[k] = str(value)
        elif k in _BLOCKS:
            if len(labels) != 1 or not isinstance(value, list):
                raise RulesError(f"Failed to parse ACL rules: {key}: expected a block with one label")
            fields = {}
            for fk, _fl, fv in value:
                if fk.lower() in ("policy", "intentions"):
                    fields[fk.lower()] = str(fv)
            rules[k].append((labels[0], fields))
        # hcl.Decode ignores keys the struct does not have
    _validate(rules)
    return rules


def _valid(level: str, allow_list: bool = False) -> bool:
    level = level.lower()
    return level in _LEVELS and (allow_list or level != "list")


def _validate(rules: dict) -> None:
    """acl/policy.go PolicyRules.Validate, in its order."""
    if rules["acl"] and not _valid(rules["acl"]):
        raise RulesError(f'Invalid acl policy: "{rules["acl"]}"')
    order = ["agent", "agent_prefix", "key", "key_prefix", "node", "node_prefix", "service", "service_prefix"]
    order += ["session", "session_prefix", "event", "event_prefix", "query", "query_prefix"]
    for block in order:
        for name, fields in rules[block]:
            if not _valid(fields.get("policy", ""), allow_list=block.startswith("key")):
                raise RulesError(f"Invalid {block} policy: {_go_rule(block, name, fields)}")
            if block.startswith("service") and fields.get("intentions") and not _valid(fields["intentions"]):
                raise RulesError(f"Invalid {block} intentions policy: {_go_rule(block, name, fields)}")
    for scalar in ("keyring", "operator", "mesh", "peering"):
        if rules[scalar] and not _valid(rules[scalar]):
            raise RulesError(f'Invalid {scalar} policy: "{rules[scalar]}"')


def _precedes(a: str, b: str) -> bool:
    """acl/policy.go takesPrecedenceOver."""
    for level in ("deny", "write", "list", "read"):
        if a == level:
            return True
        if b == level:
            return False
    return False


def merge_rules(all_rules: list[dict]) -> dict:
    """acl/policy_merger.go: one merged rule set for every policy a token carries."""
    merged: dict = {k: "" for k in _SCALARS}
    for block in _BLOCKS:
        merged[block] = {}
    for rules in all_rules:
        for k in _SCALARS:
            if _precedes(rules[k].lower(), merged[k]):
                merged[k] = rules[k].lower()
        for block in _BLOCKS:
            for name, fields in rules[block]:
                policy = fields.get("policy", "").lower()
                intentions = fields.get("intentions", "").lower()
                have = merged[block].get(name)
                if have is None:
                    merged[block][name] = {"policy": policy, "intentions": intentions}
                    continue
                if _precedes(policy, have["policy"]):
                    have["policy"] = policy
                if _precedes(intentions, have["intentions"]):
                    have["intentions"] = intentions
    return merged


def _lookup(name: str, exact: dict, prefix: dict) -> str | None:
    """acl/policy_authorizer.go getPolicy: the exact rule, else the longest matching prefix."""
    if name in exact and exact[name] is not None:
        return exact[name]
    best = None
    for pfx, level in prefix.items():
        if level is not None and name.startswith(pfx) and (best is None or len(pfx) > len(best)):
            best = pfx
    return None if best is None else prefix[best]


def _enforce(level: str | None, need: str) -> bool:
    """acl/policy_authorizer.go enforce; anything but Allow ends as deny (default policy deny)."""
    if level == "write":
        return True
    if level == "list":
        return need in ("list", "read")
    if level == "read":
        return need == "read"
    return False


def _intention_level(fields: dict) -> str:
    if fields["intentions"]:
        return fields["intentions"]
    return "read" if fields["policy"] in ("read", "write") else "deny"


_GLOBAL_MANAGEMENT = parse_rules(GLOBAL_MANAGEMENT_RULES)
ALLOW_ALL = Authorizer("", management=True)
