"""Ownership markers: how everything we write into Consul says it is ours (pure, no I/O).

Consul offers no common place for metadata: services have ``Meta``, but an ACL token only has a
``Description`` and a ``service-intentions`` source only has a ``Description`` (``Meta`` exists on
the whole entry, shared with sources we do not own). So every object we create carries one
parseable marker, the way consul-k8s marks what its endpoints controller owns, and every
cleanup filters on it: what does not parse as ours is never touched.

The marker is a fixed prefix followed by compact JSON, after a human-readable sentence::

    JupyterHub server alice/ (hub main) consulspawner/v1 {"hub":"main","incarnation":"9f..",...}

Consul refuses a Description or Meta value longer than 512 *bytes*, and hub user names may be
255 characters of any script (1020 bytes of emoji). So a Description is built to fit: the
sentence shrinks or goes first, then user and server are cut to a prefix; hub, service,
incarnation and expiry, which cleanup depends on, are never cut.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace

MARKER = "consulspawner/v1 "
MANAGED_BY = "consulspawner"
# Service Meta keys (Consul: keys up to 128 chars, values up to 512 bytes, at most 64 pairs).
META_MANAGED_BY = "managed-by"
META_HUB = "hub-instance"
META_USER = "hub-user"
META_SERVER = "hub-server"
META_INCARNATION = "incarnation"
# Consul caps a service Meta value and an intention source's Description at 512, counted with
# Go's len(), i.e. in UTF-8 bytes: metaValueMaxLength in hashicorp/consul agent/structs/structs.go,
# checked by ValidateServiceMetadata there and by ServiceIntentionsConfigEntry.validate
# ("Sources[%d].Description exceeds maximum length") in agent/structs/config_entry_intentions.go.
DESCRIPTION_MAX_BYTES = 512
_META_VALUE_MAX = 512
# Below this many bytes a cut sentence says nothing useful; drop it and keep only the marker.
_MIN_SENTENCE_BYTES = 24
_ELLIPSIS = "\u2026"
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _utf8_len(text: str) -> int:
    # "surrogatepass": a lone surrogate counts as the three bytes it would take, never crashes.
    return len(text.encode("utf-8", "surrogatepass"))


def truncate_utf8(text: str, max_bytes: int) -> str:
    """The longest prefix of ``text`` that is at most ``max_bytes`` long in UTF-8.

    Cuts between characters (code points), never inside one's encoding.
    """
    if max_bytes <= 0:
        return ""
    encoded = text.encode("utf-8", "surrogatepass")
    if len(encoded) <= max_bytes:
        return text
    cut = max_bytes
    while cut > 0 and (encoded[cut] & 0xC0) == 0x80:  # a continuation byte: back up to a lead byte
        cut -= 1
    return encoded[:cut].decode("utf-8", "surrogatepass")


def _json_string_bytes(char: str) -> int:
    """UTF-8 bytes ``char`` takes inside a JSON string as :func:`_dumps` writes it."""
    if _LONE_SURROGATE.match(char):
        return 6
    return _utf8_len(json.dumps(char, ensure_ascii=False)) - 2


def _truncate_json_string(text: str, max_bytes: int) -> str:
    """The longest prefix of ``text`` whose JSON string body is at most ``max_bytes``."""
    used = 0
    for i, char in enumerate(text):
        used += _json_string_bytes(char)
        if used > max_bytes:
            return text[:i]
    return text


def _dumps(data: dict) -> str:
    # ensure_ascii=False: a CJK character costs its 3 UTF-8 bytes, not a 6-byte \\uXXXX escape.
    # A lone surrogate (never in a real user name) cannot be sent as UTF-8: escape just those.
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
    return _LONE_SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


@dataclass(frozen=True)
class Owner:
    """Which hub, user and server an object in Consul belongs to, and until when.

    ``expires_at`` (Unix seconds) is set on intention sources only: intentions have no expiry of
    their own in Consul, so the janitor reads it from here. ``incarnation`` is unique to one
    start of one server (the spawner makes it, e.g. ``uuid4().hex``), so a late teardown of an
    old start never removes what a newer start of the same server wrote. Markers written before
    incarnations existed parse with ``incarnation == ""``. ``since`` (Unix seconds, intention
    sources only) is when this incarnation was first granted access, kept across extensions, so
    ``consulspawner-reach`` can answer "since when" from Consul alone.
    """

    hub: str
    user: str
    server: str
    service: str
    expires_at: int | None = None
    incarnation: str = ""
    since: int | None = None

    def _data(self, user: str, server: str) -> dict:
        data: dict[str, str | int] = {
            "hub": self.hub,
            "user": user,
            "server": server,
            "service": self.service,
            "incarnation": self.incarnation,
        }
        if self.expires_at is not None:
            data["expires_at"] = self.expires_at
        if self.since is not None:
            data["since"] = self.since
        return data

    def marker(self, max_bytes: int = DESCRIPTION_MAX_BYTES) -> str:
        """The parseable marker alone, at most ``max_bytes`` UTF-8 bytes.

        Hub, service, incarnation and expiry are kept whole (a ValueError if even they do not
        fit); user and server are cut to a prefix, on a character boundary, when they must be.
        """
        full = MARKER + _dumps(self._data(self.user, self.server))
        if _utf8_len(full) <= max_bytes:
            return full
        room = max_bytes - _utf8_len(MARKER + _dumps(self._data("", "")))
        if room < 0:
            raise ValueError(
                f"hub {self.hub[:40]!r}... and service {self.service!r} leave no room for an "
                f"ownership marker within {max_bytes} bytes; use a shorter hub_instance"
            )
        user_bytes = sum(map(_json_string_bytes, self.user))
        server_bytes = sum(map(_json_string_bytes, self.server))
        # The user name matters most to people reading logs; the server gets what the user
        # leaves, but at least a quarter of the room when it needs it.
        server_room = min(server_bytes, max(room // 4, room - user_bytes))
        user = _truncate_json_string(self.user, room - server_room)
        server = _truncate_json_string(self.server, room - _json_bytes(user))
        return MARKER + _dumps(self._data(user, server))

    def describe(self, max_bytes: int = DESCRIPTION_MAX_BYTES) -> str:
        """A Description of at most ``max_bytes`` UTF-8 bytes (Consul's limit for intention
        sources): a short sentence for people, then the marker for programs.

        The sentence shrinks, then goes, before the marker gives up any byte.
        """
        marker = self.marker(max_bytes)
        room = max_bytes - _utf8_len(marker) - 1  # one space between sentence and marker
        sentence = f"JupyterHub server {self.user}/{self.server} (hub {self.hub})"
        if _utf8_len(sentence) > room:
            if room < _MIN_SENTENCE_BYTES:
                return marker
            sentence = truncate_utf8(sentence, room - _utf8_len(_ELLIPSIS)) + _ELLIPSIS
        return f"{sentence} {marker}"

    def with_expiry(self, expires_at: float) -> Owner:
        return replace(self, expires_at=int(expires_at))

    def service_meta(self) -> dict[str, str]:
        """Service ``Meta`` naming the owner, for people reading the catalog and for filters.

        Values are cut to Consul's 512 bytes on a character boundary; the full user name is in
        the marker (as far as it fits there). The incarnation is present when known.
        """
        meta = {
            META_MANAGED_BY: MANAGED_BY,
            META_HUB: truncate_utf8(self.hub, _META_VALUE_MAX),
            META_USER: truncate_utf8(self.user, _META_VALUE_MAX),
            META_SERVER: truncate_utf8(self.server, _META_VALUE_MAX),
        }
        if self.incarnation:
            meta[META_INCARNATION] = truncate_utf8(self.incarnation, _META_VALUE_MAX)
        return meta


def _json_bytes(text: str) -> int:
    return sum(map(_json_string_bytes, text))


def parse(description: str | None) -> Owner | None:
    """The owner a Description names, or None when it is not one of ours (or is damaged).

    The marker is the first occurrence of ``MARKER`` followed by exactly one JSON object that
    runs to the end of the Description. Text before it (the sentence, which holds the user name)
    may contain ``MARKER`` too, but such a copy is followed by more than one object, so a user
    name cannot forge an owner.
    """
    if not description or MARKER not in description:
        return None
    start = description.find(MARKER)
    while start != -1:
        owner = _parse_marker(description[start + len(MARKER) :])
        if owner is not None:
            return owner
        start = description.find(MARKER, start + 1)
    return None


def _parse_marker(raw: str) -> Owner | None:
    try:
        data = json.loads(raw)
        owner = Owner(
            hub=data["hub"],
            user=data["user"],
            server=data["server"],
            service=data["service"],
            expires_at=data.get("expires_at"),
            incarnation=data.get("incarnation", ""),
            since=data.get("since"),
        )
    except (ValueError, KeyError, TypeError):
        return None
    fields = (owner.hub, owner.user, owner.server, owner.service, owner.incarnation)
    if not all(isinstance(v, str) for v in fields):
        return None
    for stamp in (owner.expires_at, owner.since):
        if stamp is not None and (not isinstance(stamp, int) or isinstance(stamp, bool)):
            return None
    return owner


def is_incarnation(owner: Owner | None, *, hub: str, service: str, incarnation: str) -> bool:
    """The one ownership predicate: whether ``owner`` names this very start (``incarnation``) of
    this server (``service``) of this hub, not just the same service name.

    Every deletion of a reusable name asks it first, so a late or retried teardown of an old
    server never removes what the next start of the same server wrote. An empty incarnation
    matches only an empty one: a marker from before incarnations existed.
    """
    return owner is not None and (owner.hub, owner.service, owner.incarnation) == (hub, service, incarnation)


def service_owner(service_id: str, service: dict) -> Owner | None:
    """The owner a registered service's ``Meta`` names, or None when we did not register it.

    ``service`` of the owner is the service *name* (agent: ``Service``, catalog:
    ``ServiceName``), as in every other marker; ``service_id`` only when the definition has none.
    """
    if not is_managed_service(service):
        return None
    meta = service.get("Meta") or service.get("ServiceMeta") or {}
    return Owner(
        hub=meta.get(META_HUB, ""),
        user=meta.get(META_USER, ""),
        server=meta.get(META_SERVER, ""),
        service=service.get("Service") or service.get("ServiceName") or service_id,
        incarnation=meta.get(META_INCARNATION, ""),
    )


def is_managed_service(service: dict) -> bool:
    """Whether an agent or catalog service definition was registered by us."""
    meta = service.get("Meta") or service.get("ServiceMeta") or {}
    return meta.get(META_MANAGED_BY) == MANAGED_BY
