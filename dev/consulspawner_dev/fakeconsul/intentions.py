"""Intentions: the legacy exact/match/check API, precedence, and Connect authorize.

Follows ``agent/intentions_endpoint.go``, ``agent/consul/intention_endpoint.go``
(``Intention.Apply``/``Match``/``Check``), ``agent/structs/intention.go`` (precedence,
``String``), ``agent/consul/state/config_entry_intention.go`` and ``agent/agent_endpoint.go`` /
``agent/connect_auth.go`` (``ConnectAuthorize``).
"""

from __future__ import annotations

import copy
import re

from . import decode
from .acl import (
    PERMISSION_DENIED,
    ConsulError,
)
from .common import (
    _SPIFFE_SERVICE,
)


class Intentions:
    """Intentions read from service-intentions entries, and Connect authorization."""

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
