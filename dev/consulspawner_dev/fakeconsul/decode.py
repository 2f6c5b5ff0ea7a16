"""Request-body key normalisation the way Consul's decoders do it.

Consul decodes JSON bodies into Go structs: Go's ``encoding/json`` matches field names
case-insensitively, and the service-definition decoder additionally translates snake_case aliases
(``sidecar_service``, ``local_bind_port``, ``destination_name``, ``deregister_critical_service_after``
...) to their canonical field - see ``lib/decode/decode.go`` (``HookTranslateKeys``: "keys are
compared case-insensitive", aliases come from ``alias`` struct tags) and the translation table in
``agent/agent_endpoint.go`` ``AgentRegisterService``. Opaque maps (``Meta``, ``Proxy.Config``,
``Upstreams[].Config``) are never translated, so user keys survive untouched.

A schema here is ``{CanonicalName: sub_schema}``; ``sub_schema`` is ``None`` for a scalar or an
opaque value, a dict for a nested struct, or a one-element list ``[schema]`` for a list of structs.
Unknown keys are kept as given (Go would ignore them); callers that must reject unknown keys (config
entries, which Consul decodes with mapstructure's ``Unused`` check) ask for them.
"""

from __future__ import annotations

import re

OPAQUE = None


def _snake(name: str) -> str:
    # "DeregisterCriticalServiceAfter" -> "deregister_critical_service_after", "TLSSkipVerify" ->
    # "tls_skip_verify": the form of Consul's alias tags.
    s = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", name)
    s = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", s)
    return s.lower()


def _lookup(schema: dict) -> dict:
    table = {}
    for canon in schema:
        table[canon.lower()] = canon
        table[_snake(canon)] = canon
    return table


_CACHE: dict[int, dict] = {}


def normalize(value, schema, unknown: list | None = None, path: str = ""):
    """A copy of ``value`` with keys renamed to their canonical spelling per ``schema``."""
    if isinstance(schema, list):
        if not isinstance(value, list):
            return value
        return [normalize(v, schema[0], unknown, f"{path}[{i}]") for i, v in enumerate(value)]
    if not isinstance(schema, dict) or not isinstance(value, dict):
        return value
    table = _CACHE.get(id(schema))
    if table is None:
        table = _CACHE[id(schema)] = _lookup(schema)
    out: dict = {}
    for key, val in value.items():
        canon = table.get(str(key).lower())
        if canon is None:
            if unknown is not None:
                # mapstructure names unused keys like "Sources[0].Foo"
                unknown.append(f"{path}.{key}" if path else str(key))
            out[key] = val
            continue
        # Like HookTranslateKeys: when both an alias and the canonical key are present, the
        # canonical one wins.
        if canon in out and key != canon:
            continue
        out[canon] = normalize(val, schema[canon], unknown, f"{path}.{canon}" if path else canon)
    return out


# --- agent service definitions (agent/structs/service_definition.go, check_type.go) -----------

CHECK = {
    k: OPAQUE
    for k in (
        "CheckID",
        "Name",
        "Notes",
        "Status",
        "ServiceID",
        "ScriptArgs",
        "HTTP",
        "Header",
        "Method",
        "Body",
        "DisableRedirects",
        "TCP",
        "TCPUseTLS",
        "UDP",
        "Interval",
        "Timeout",
        "TTL",
        "GRPC",
        "GRPCUseTLS",
        "TLSServerName",
        "TLSSkipVerify",
        "AliasNode",
        "AliasService",
        "DockerContainerID",
        "Shell",
        "H2PING",
        "H2PingUseTLS",
        "OSService",
        "SuccessBeforePassing",
        "FailuresBeforeWarning",
        "FailuresBeforeCritical",
        "DeregisterCriticalServiceAfter",
        "OutputMaxSize",
    )
}
CHECK["Args"] = OPAQUE  # Consul's alias for ScriptArgs; kept and mapped by the caller

MESH_GATEWAY = {"Mode": OPAQUE}

UPSTREAM = {
    "DestinationType": OPAQUE,
    "DestinationNamespace": OPAQUE,
    "DestinationPartition": OPAQUE,
    "DestinationPeer": OPAQUE,
    "DestinationName": OPAQUE,
    "Datacenter": OPAQUE,
    "LocalBindAddress": OPAQUE,
    "LocalBindPort": OPAQUE,
    "LocalBindSocketPath": OPAQUE,
    "LocalBindSocketMode": OPAQUE,
    "Config": OPAQUE,
    "MeshGateway": MESH_GATEWAY,
    "CentrallyConfigured": OPAQUE,
}

EXPOSE = {
    "Checks": OPAQUE,
    "Paths": [{"ListenerPort": OPAQUE, "Path": OPAQUE, "LocalPathPort": OPAQUE, "Protocol": OPAQUE}],
}

PROXY = {
    "DestinationServiceName": OPAQUE,
    "DestinationServiceID": OPAQUE,
    "LocalServiceAddress": OPAQUE,
    "LocalServicePort": OPAQUE,
    "LocalServiceSocketPath": OPAQUE,
    "Mode": OPAQUE,
    "Config": OPAQUE,
    "Upstreams": [UPSTREAM],
    "MeshGateway": MESH_GATEWAY,
    "Expose": EXPOSE,
    "TransparentProxy": {"OutboundListenerPort": OPAQUE, "DialedDirectly": OPAQUE},
    "AccessLogs": OPAQUE,
}

SERVICE: dict = {
    "Kind": OPAQUE,
    "ID": OPAQUE,
    "Name": OPAQUE,
    "Tags": OPAQUE,
    "Address": OPAQUE,
    "TaggedAddresses": OPAQUE,
    "Meta": OPAQUE,
    "Port": OPAQUE,
    "SocketPath": OPAQUE,
    "Check": CHECK,
    "Checks": [CHECK],
    "Weights": {"Passing": OPAQUE, "Warning": OPAQUE},
    "Token": OPAQUE,
    "EnableTagOverride": OPAQUE,
    "Proxy": PROXY,
    "Connect": None,  # filled below (recursive through SidecarService)
    "Locality": {"Region": OPAQUE, "Zone": OPAQUE},
    "Namespace": OPAQUE,
    "Partition": OPAQUE,
}
CONNECT = {"Native": OPAQUE, "SidecarService": SERVICE, "Proxy": OPAQUE}
SERVICE["Connect"] = CONNECT

# --- ACL tokens (agent/structs/acl.go ACLToken) -------------------------------------------------

TOKEN = {
    "AccessorID": OPAQUE,
    "SecretID": OPAQUE,
    "Description": OPAQUE,
    "Policies": [{"ID": OPAQUE, "Name": OPAQUE}],
    "Roles": [{"ID": OPAQUE, "Name": OPAQUE}],
    "ServiceIdentities": [{"ServiceName": OPAQUE, "Datacenters": OPAQUE}],
    "NodeIdentities": [{"NodeName": OPAQUE, "Datacenter": OPAQUE}],
    "TemplatedPolicies": OPAQUE,
    "Local": OPAQUE,
    "AuthMethod": OPAQUE,
    "ExpirationTime": OPAQUE,
    "ExpirationTTL": OPAQUE,
    "CreateTime": OPAQUE,
    "Hash": OPAQUE,
    "CreateIndex": OPAQUE,
    "ModifyIndex": OPAQUE,
    "Namespace": OPAQUE,
    "Partition": OPAQUE,
    "Rules": OPAQUE,
    "Type": OPAQUE,
}

# --- ACL policies (agent/structs/acl.go ACLPolicy) ---------------------------------------------

POLICY = {
    k: OPAQUE
    for k in ("ID", "Name", "Description", "Rules", "Syntax", "Datacenters", "Hash", "CreateIndex", "ModifyIndex")
}

# --- config entries (agent/structs/config_entry*.go) -----------------------------------------

HEADER_PERMISSION = {k: OPAQUE for k in ("Name", "Present", "Exact", "Prefix", "Suffix", "Regex", "Invert")}
HTTP_PERMISSION = {
    "PathExact": OPAQUE,
    "PathPrefix": OPAQUE,
    "PathRegex": OPAQUE,
    "Header": [HEADER_PERMISSION],
    "Methods": OPAQUE,
}
JWT = {"Providers": [{"Name": OPAQUE, "VerifyClaims": [{"Path": OPAQUE, "Value": OPAQUE}]}]}
PERMISSION = {"Action": OPAQUE, "HTTP": HTTP_PERMISSION, "JWT": JWT}
SOURCE_INTENTION = {
    "Name": OPAQUE,
    "Peer": OPAQUE,
    "Partition": OPAQUE,
    "Namespace": OPAQUE,
    "SamenessGroup": OPAQUE,
    "Action": OPAQUE,
    "Permissions": [PERMISSION],
    "Precedence": OPAQUE,
    "LegacyID": OPAQUE,
    "Type": OPAQUE,
    "Description": OPAQUE,
    "LegacyMeta": OPAQUE,
    "LegacyCreateTime": OPAQUE,
    "LegacyUpdateTime": OPAQUE,
}
SERVICE_INTENTIONS = {
    "Kind": OPAQUE,
    "Name": OPAQUE,
    "Sources": [SOURCE_INTENTION],
    "JWT": JWT,
    "Meta": OPAQUE,
    "Namespace": OPAQUE,
    "Partition": OPAQUE,
    "Hash": OPAQUE,
    "CreateIndex": OPAQUE,
    "ModifyIndex": OPAQUE,
}
SERVICE_DEFAULTS = {
    k: OPAQUE
    for k in (
        "Kind",
        "Name",
        "Protocol",
        "Mode",
        "TransparentProxy",
        "MutualTLSMode",
        "MeshGateway",
        "Expose",
        "ExternalSNI",
        "UpstreamConfig",
        "Destination",
        "MaxInboundConnections",
        "LocalConnectTimeoutMs",
        "LocalRequestTimeoutMs",
        "BalanceInboundConnections",
        "RateLimits",
        "EnvoyExtensions",
        "Meta",
        "Namespace",
        "Partition",
        "Hash",
        "CreateIndex",
        "ModifyIndex",
    )
}
PROXY_DEFAULTS = {
    k: OPAQUE
    for k in (
        "Kind",
        "Name",
        "Config",
        "Mode",
        "TransparentProxy",
        "MutualTLSMode",
        "MeshGateway",
        "Expose",
        "AccessLogs",
        "EnvoyExtensions",
        "FailoverPolicy",
        "PrioritizeByLocality",
        "Meta",
        "Namespace",
        "Partition",
        "Hash",
        "CreateIndex",
        "ModifyIndex",
    )
}
# Every other kind is stored generically: only Kind/Name/indexes are canonicalised.
GENERIC_ENTRY = {"Kind": OPAQUE, "Name": OPAQUE, "CreateIndex": OPAQUE, "ModifyIndex": OPAQUE}

# --- intentions (agent/structs/intention.go Intention, as PUT /connect/intentions/exact body) ---

INTENTION = {
    k: OPAQUE
    for k in (
        "ID",
        "Description",
        "SourcePeer",
        "SourceNS",
        "SourceName",
        "DestinationNS",
        "DestinationName",
        "SourcePartition",
        "DestinationPartition",
        "SourceType",
        "Action",
        "DefaultAddr",
        "DefaultPort",
        "Meta",
        "Precedence",
        "CreatedAt",
        "UpdatedAt",
        "CreateIndex",
        "ModifyIndex",
        "Hash",
        "JWT",
    )
}
INTENTION["Permissions"] = [PERMISSION]

AUTHORIZE = {k: OPAQUE for k in ("Target", "ClientCertURI", "ClientCertSerial", "Namespace", "Partition")}
