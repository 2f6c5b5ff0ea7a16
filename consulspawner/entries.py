"""The intention source entries consulspawner writes (pure, no I/O).

One ``Sources[]`` item of a ``service-intentions`` config entry (docs: config-entries/
service-intentions) per server: built for a server (:func:`source_entry`), L4 (``Action``) or
L7 (``Permissions``), carrying our ownership marker in its ``Description`` (the only free-text
field a source has; see ``ownership``), checked the way Consul will check it
(:func:`validate_source`), and read back (:func:`source_owner`, :func:`owned_by`). Writing them
into Consul is ``intentions.IntentionWriter``'s job.
"""

from __future__ import annotations

from . import naming, ownership, trinouser

KIND = "service-intentions"
L4 = "L4"
L7 = "L7"
TRINO_USER_HEADER = "X-Trino-User"
# Request headers other than X-Trino-User from which Trino derives who is asking. An L7 grant
# refuses any request that carries one (trinodb/trino, HttpRequestSessionContextFactory):
# - X-Trino-Original-User: buildSessionOriginalIdentity makes it the original identity, the one
#   impersonation and SET SESSION AUTHORIZATION are checked for.
# - X-Presto-User, X-Presto-Original-User: the same headers under the legacy name, read when
#   the server sets protocol.compatibility.alternate-header-name=Presto (ProtocolHeaders
#   .detectProtocol). Trino answers 400 when both X-Trino-* and X-Presto-* arrive, so with
#   X-Trino-User required these are refused twice; refusing them here does not depend on that.
# - Authorization: an authenticator derives the authenticated identity from it; with no
#   authentication configured, InsecureAuthenticator takes a Basic user name (no password) as
#   the principal, which Trino then checks impersonation of X-Trino-User against. The mesh is the
#   authentication here: a notebook presents no other identity.
# Left allowed, since Trino checks them against the bound user rather than taking them on trust:
# X-Trino-Role (addEnabledRoles denies a system role not granted to that user; a catalog role is
# checked by its connector), X-Trino-Extra-Credential (credentials the user hands its
# connectors; buildSessionOriginalIdentity drops them). A site-chosen alternate header name other
# than Presto is not known here.
REFUSED_IDENTITY_HEADERS = ("X-Trino-Original-User", "X-Presto-User", "X-Presto-Original-User", "Authorization")
# Consul's checks of a service-intentions source, as ServiceIntentionsConfigEntry.validate in
# hashicorp/consul agent/structs/config_entry_intentions.go makes them:
# len(src.Description) > metaValueMaxLength (512, agent/structs/structs.go), Go len() = bytes.
DESCRIPTION_MAX_BYTES = ownership.DESCRIPTION_MAX_BYTES
_ACTIONS = ("allow", "deny")
_PATH_FIELDS = ("PathExact", "PathPrefix", "PathRegex")
_HEADER_MATCHERS = ("Present", "Exact", "Prefix", "Suffix", "Regex")
# isValidHTTPMethod (same file): the methods net/http names.
_HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "CONNECT", "OPTIONS", "TRACE")


class IntentionRefused(ValueError):
    """A source Consul would refuse, caught before it joined a batch: only its caller fails."""

    def __init__(self, source: object, reason: str):
        self.source = source
        self.reason = reason
        super().__init__(f"intention source {source!r} refused before writing: {reason}")


def validate_source(entry: dict) -> None:
    """Raise :class:`IntentionRefused` unless Consul would accept ``entry`` as one of our sources.

    The checks are Consul's own for a ``Sources[]`` item (config_entry_intentions.go, validate),
    plus ours: the name can hold a service identity and the Description carries our marker.
    """
    name = entry.get("Name")
    # A source we grant is a service that holds an ACL service identity, so its name is one.
    if not naming.is_service_identity_name(name):
        raise IntentionRefused(
            name,
            f"Name must be a service name ([a-z0-9_-], at most {naming.SERVICE_IDENTITY_NAME_MAX} "
            "characters, no '*'; acl/validation.go)",
        )
    description = entry.get("Description")
    if not isinstance(description, str) or ownership.parse(description) is None:
        raise IntentionRefused(name, "a granted source must carry an ownership marker in its Description")
    size = len(description.encode("utf-8", "surrogatepass"))
    if size > DESCRIPTION_MAX_BYTES:
        raise IntentionRefused(
            name,
            f"Description is {size} bytes; Consul's limit is {DESCRIPTION_MAX_BYTES} "
            "bytes (Sources[].Description, metaValueMaxLength)",
        )
    permissions = entry.get("Permissions")
    if permissions is None:
        if entry.get("Action") not in _ACTIONS:
            raise IntentionRefused(name, "Action must be 'allow' or 'deny' when there are no Permissions")
        return
    if "Action" in entry:
        raise IntentionRefused(name, "Action must be omitted if Permissions are specified")
    if not isinstance(permissions, list) or not permissions:
        raise IntentionRefused(name, "Permissions must be a non-empty list (or absent, with an Action)")
    for j, permission in enumerate(permissions):
        _validate_permission(name, j, permission)


def _validate_permission(name: str, j: int, permission: object) -> None:
    where = f"Permissions[{j}]"
    if not isinstance(permission, dict) or permission.get("Action") not in _ACTIONS:
        raise IntentionRefused(name, f"{where}.Action must be 'allow' or 'deny'")
    http = permission.get("HTTP")
    if not isinstance(http, dict):
        raise IntentionRefused(name, f"{where}.HTTP is required")
    paths = [field_ for field_ in _PATH_FIELDS if http.get(field_)]
    if len(paths) > 1:
        raise IntentionRefused(name, f"{where}.HTTP should only contain at most one of {', '.join(_PATH_FIELDS)}")
    for field_ in ("PathExact", "PathPrefix"):
        value = http.get(field_)
        if value and (not isinstance(value, str) or not value.startswith("/")):
            raise IntentionRefused(name, f"{where}.HTTP.{field_} doesn't start with '/': {value!r}")
    parts = len(paths)
    for k, header in enumerate(http.get("Header") or []):
        if not isinstance(header, dict) or not header.get("Name"):
            raise IntentionRefused(name, f"{where}.HTTP.Header[{k}] missing required Name field")
        if sum(1 for matcher in _HEADER_MATCHERS if header.get(matcher)) != 1:
            raise IntentionRefused(
                name, f"{where}.HTTP.Header[{k}] should only contain one of {', '.join(_HEADER_MATCHERS)}"
            )
        parts += 1
    methods = http.get("Methods") or []
    if methods:
        # Consul upper-cases methods in Normalize before Validate looks for duplicates.
        upper = [str(method).upper() for method in methods]
        bad = [method for method in upper if method not in _HTTP_METHODS]
        if bad:
            raise IntentionRefused(name, f"{where}.HTTP.Methods contains an invalid method {bad[0]!r}")
        if len(set(upper)) != len(upper):
            raise IntentionRefused(name, f"{where}.HTTP.Methods contains a method more than once")
        parts += 1
    if parts == 0:
        raise IntentionRefused(name, f"{where}.HTTP should not be empty")


def source_entry(source: str, owner: ownership.Owner, mode: str = L4, trino_user: str | None = None) -> dict:
    """The ``Sources[]`` item that grants ``source`` access, carrying the ownership marker.

    L4: ``Action: allow`` for the whole connection. L7, in order: deny a request that carries any
    of :data:`REFUSED_IDENTITY_HEADERS`, then allow one whose ``X-Trino-User`` header is exactly
    this user's Trino user, then deny everything else explicitly, so the outcome does not depend
    on the cluster's default intention policy. The first matching permission decides: Consul
    turns each permission into "this AND NOT every earlier one" (agent/xds/rbac.go,
    removePermissionPrecedence). L7 needs the destination's protocol to be http.
    """
    entry: dict = {"Name": source, "Description": owner.describe(DESCRIPTION_MAX_BYTES)}
    if mode == L4:
        entry["Action"] = "allow"
    elif mode == L7:
        if not trino_user:
            raise ValueError("L7 intentions need the Trino user this source may act as")
        trinouser.check_trino_user(trino_user, owner.user)
        entry["Permissions"] = [
            *(
                {"Action": "deny", "HTTP": {"Header": [{"Name": name, "Present": True}]}}
                for name in REFUSED_IDENTITY_HEADERS
            ),
            {"Action": "allow", "HTTP": {"Header": [{"Name": TRINO_USER_HEADER, "Exact": trino_user}]}},
            {"Action": "deny", "HTTP": {"PathPrefix": "/"}},
        ]
    else:
        raise ValueError(f"intention mode must be {L4!r} or {L7!r}, not {mode!r}")
    return entry


def source_owner(source: dict) -> ownership.Owner | None:
    """The owner a source's marker names, or None when the source is not consulspawner's."""
    return ownership.parse(source.get("Description"))


def owned_by(source: dict, hub_instance: str) -> bool:
    """Whether ``source`` was written by the hub ``hub_instance`` (its marker says so)."""
    owner = source_owner(source)
    return owner is not None and owner.hub == hub_instance


def bound_trino_user(source: dict) -> str | None:
    """The Trino user an L7 source of ours allows (its Allow permission's exact X-Trino-User)."""
    for permission in source.get("Permissions") or []:
        if permission.get("Action") != "allow":
            continue
        for header in (permission.get("HTTP") or {}).get("Header") or []:
            if header.get("Name") == TRINO_USER_HEADER and "Exact" in header:
                return header["Exact"]
    return None


class TrinoUserTaken(RuntimeError):
    """The Trino user a grant would bind is held by a live server of another hub user."""


def taken_message(trino_user: str, holder: ownership.Owner) -> str:
    return (
        f"Trino user {trino_user!r} is held by a live server of hub user {holder.user!r} (hub {holder.hub}); "
        "check c.ConsulSpawner.trino_user: each hub user needs a Trino user of their own"
    )


def holder_of(entry: dict | None, trino_user: str, hub_user: str, now: float) -> ownership.Owner | None:
    """Another hub user's live source (of any hub) in ``entry`` that binds ``trino_user``, if any:
    one Trino user must never be two hub users' at once."""
    for source in (entry or {}).get("Sources") or []:
        owner = source_owner(source)
        if owner is None or owner.user == hub_user or bound_trino_user(source) != trino_user:
            continue
        if owner.expires_at is None or owner.expires_at > now:
            return owner
    return None
