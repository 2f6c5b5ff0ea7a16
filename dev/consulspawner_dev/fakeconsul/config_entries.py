"""Config entries: apply (with CAS), read, list, delete, and their validation.

Follows ``agent/config_endpoint.go`` (HTTP), ``agent/consul/config_endpoint.go`` (``ConfigEntry.Apply``,
``Get``, ``List``, ``Delete``), ``agent/structs/config_entry*.go`` (``Normalize``, ``Validate``,
``CanRead``/``CanWrite``, ``config_entry_intentions.go``) and ``agent/consul/state/config_entry.go``
(``validateProposedConfigEntryInGraph``).
"""

from __future__ import annotations

import copy

from . import decode
from .acl import (
    Authorizer,
    ConsulError,
)
from .common import (
    HTTP_LIKE,
    KNOWN_KINDS,
    META_VALUE_MAX_LENGTH,
    _blen,
    _canonical_hash,
    validate_config_entry_meta,
)


class ConfigEntries:
    """Config entries of the fake agent, service-intentions included."""

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
