"""Agent service registration and the catalog views of the local node.

Follows ``agent/agent_endpoint.go`` (``AgentRegisterService``, ``AgentDeregisterService``,
``AgentServices``, ``AgentService``, ``AgentChecks``, ``AgentSelf``), ``agent/agent.go``
(``addServiceInternal``, ``validateService``), ``agent/sidecar_service.go`` (sidecar defaults and
port allocation), ``agent/structs/structs.go`` (``NodeService``, ``CheckType``),
``agent/consul/catalog_endpoint.go`` and ``agent/catalog_endpoint.go`` (``/v1/catalog/*``).
"""

from __future__ import annotations

import copy
import random
import re

from . import decode
from .acl import (
    Authorizer,
    ConsulError,
)
from .common import (
    _STATUS_RANK,
    CHECK_DEREGISTER_INTERVAL_MIN,
    CONSUL_VERSION,
    CRITICAL,
    PASSING,
    SIDECAR_MAX_PORT,
    SIDECAR_MIN_PORT,
    SIDECAR_TCP_INTERVAL,
    _canonical_hash,
    _strip_private,
    acl_filtered,
    validate_service_meta,
)
from .godur import DurationError, duration_value, format_duration


class AgentCatalog:
    """Services and checks registered on the agent, and the catalog's view of them."""

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
            out = {
                sid: self._agent_service_view(svc)
                for sid, svc in sorted(self.services.items())
                if authz.service_read(svc["Service"])
            }
            return acl_filtered(out, len(out) != len(self.services))

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
            return acl_filtered(out, len(out) != len(self.checks))

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
            removed = False
            for svc in self.services.values():
                # aclfilter filterServices: the name->tags map is filtered by service:read only.
                if not authz.service_read(svc["Service"]):
                    removed = True
                    continue
                tags = out.setdefault(svc["Service"], [])
                for tag in svc["Tags"]:
                    if tag not in tags:
                        tags.append(tag)
            return self.idx("services", "nodes"), acl_filtered(dict(sorted(out.items())), removed)

    def catalog_service(self, name: str, secret: str | None, tags: list[str]) -> tuple[int, list]:
        with self.lock:
            authz = self.resolve(secret)
            out = []
            removed = False
            node = self._node_view()
            for svc in sorted(self.services.values(), key=lambda s: s["ID"]):
                if svc["Service"] != name or any(t not in svc["Tags"] for t in tags):
                    continue
                if not self._visible(authz, svc):
                    removed = True
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
            return self.idx(f"service:{name}", "nodes"), acl_filtered(out, removed)

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
