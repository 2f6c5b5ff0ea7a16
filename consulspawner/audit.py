"""The audit trail: one JSON line per change of who can reach what, on logger ``consulspawner.audit``.

A security review asks which hub user could reach Trino, from when to when. Every grant,
extension, revoke, token mint/delete or login/logout, and teardown emits one event with the
same fields (``FIELDS``), as one JSON object in the log record's message, so an operator can
route that logger alone to a file or a log pipeline (docs/operations.md has a ``logging``
configuration). The record also carries the event as ``record.audit`` (a dict) for handlers that
ship structured data.

Never a secret: before emitting, every value is checked against the shapes of the secrets this
project handles (a Consul SecretID is a UUID, a login JWT is ``eyJ...``-dotted base64url, a
private key is PEM). A value of that shape is withheld (replaced by ``WITHHELD``, its field
named in ``withheld``) and a warning names the field, never the value. A hub user whose name is
UUID-shaped (some identity providers' subject IDs) is therefore withheld too; the server's
service name and incarnation still identify it.
"""

from __future__ import annotations

import datetime
import json
import logging
import re
import time
from collections.abc import Mapping
from typing import Any

from . import ownership

audit_log = logging.getLogger("consulspawner.audit")
# Warnings about the trail go elsewhere: not a child of the audit logger, so they never land in
# the audit file as if they were events.
log = logging.getLogger("consulspawner.audit_guard")

FIELDS = (
    "time",
    "event",
    "hub_instance",
    "hub_user",
    "server_name",
    "service",
    "incarnation",
    "trino_user",
    "destination",
    "expiry",
    "cause",
)
EVENTS = (
    "grant",  # an intention source written for a starting server
    "extend",  # its expiry pushed back by the keeper
    "revoke",  # removed (stop, failure, janitor)
    "token-login",  # a token obtained by logging in with the server's JWT
    "token-logout",
    "teardown",  # everything of one server incarnation undone
)
WITHHELD = "<withheld: shaped like a secret>"

# Shapes, not values: this module never sees the secrets themselves. A Consul SecretID is a
# UUID (as consul.py's redaction assumes); a JWT is three base64url parts, the first a JSON
# object, so it starts with "eyJ" ('{"' encoded); a key or certificate is PEM.
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
_PEM = re.compile(r"-----BEGIN [A-Z ]+-----")


def looks_secret(value: str) -> bool:
    """Whether ``value`` contains something shaped like a Consul secret, a JWT or a PEM block."""
    return bool(_UUID.search(value) or _JWT.search(value) or _PEM.search(value))


def _iso(unix: float) -> str:
    return datetime.datetime.fromtimestamp(unix, datetime.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def build(
    event: str,
    *,
    hub_instance: str,
    hub_user: str = "",
    server_name: str = "",
    service: str = "",
    incarnation: str = "",
    trino_user: str | None = None,
    destination: str | None = None,
    expiry: float | None = None,
    cause: str | None = None,
    now: float | None = None,
) -> dict[str, Any]:
    """The event as a dict of ``FIELDS`` (plus ``withheld`` when a value was), secrets withheld.

    ``expiry`` and ``now`` are Unix seconds, written as ISO 8601 UTC. ``cause`` says why, in
    words (``"server stopped"``, ``"expired"``, ``"spawn failed at grant"``).
    """
    if event not in EVENTS:
        raise ValueError(f"unknown audit event {event!r}; known: {', '.join(EVENTS)}")
    raw: dict[str, Any] = {
        "time": _iso(time.time() if now is None else now),
        "event": event,
        "hub_instance": hub_instance,
        "hub_user": hub_user,
        "server_name": server_name,
        "service": service,
        "incarnation": incarnation,
        "trino_user": trino_user,
        "destination": destination,
        "expiry": None if expiry is None else _iso(expiry),
        "cause": cause,
    }
    return _guard(raw)


def _guard(raw: Mapping[str, Any]) -> dict[str, Any]:
    event: dict[str, Any] = {}
    withheld = []
    for name, value in raw.items():
        if value is not None and not isinstance(value, (str, int, float, bool)):
            value = str(value)  # only scalars go out; a str() of an object is checked like the rest
        if isinstance(value, str) and looks_secret(value):
            withheld.append(name)
            value = WITHHELD
        event[name] = value
    if withheld:
        event["withheld"] = withheld
        # The field's name only: the value is what must not be written anywhere.
        log.warning("Audit event %s: withheld %s (shaped like a secret)", raw.get("event"), ", ".join(withheld))
    return event


def line(event: Mapping[str, Any]) -> str:
    """One JSON line, keys in ``FIELDS`` order; non-ASCII user names kept readable."""
    return json.dumps(event, ensure_ascii=False, separators=(",", ":"))


def emit(event: str, **fields: Any) -> dict[str, Any]:
    """Build (see :func:`build`) and log one event at INFO on ``consulspawner.audit``; returns it."""
    built = build(event, **fields)
    audit_log.info("%s", line(built), extra={"audit": built})
    return built


def emit_for(
    event: str,
    owner: ownership.Owner,
    *,
    trino_user: str | None = None,
    destination: str | None = None,
    expiry: float | None = None,
    cause: str | None = None,
) -> dict[str, Any]:
    """:func:`emit` with hub, user, server, service and incarnation taken from an ownership
    marker (what the spawner's plan and the janitor both hold). ``expiry`` defaults to the
    marker's."""
    if expiry is None:
        expiry = owner.expires_at
    return emit(
        event,
        hub_instance=owner.hub,
        hub_user=owner.user,
        server_name=owner.server,
        service=owner.service,
        incarnation=owner.incarnation,
        trino_user=trino_user,
        destination=destination,
        expiry=expiry,
        cause=cause,
    )
