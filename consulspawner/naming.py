"""Hub user and server names -> Consul service names (pure, no I/O).

A Consul service name that is also a DNS label (``[a-z0-9-]``, at most 63 characters) is what
Consul's DNS interface, ACL service identities and SPIFFE IDs all accept. Hub user names are
free text (JupyterHub allows capitals, dots, ``@``, unicode, emoji...), so names are made the
way kubespawner makes its slugs:

- a user name that is already a *safe slug* (lower-case letters and digits in runs joined by
  single dashes) and fits is kept as is: ``alice`` -> ``jupyter-alice``;
- anything else (and every named server) becomes ``<readable>--<hash>``: the name lower-cased,
  runs of other characters replaced by one ``-``, trimmed and truncated, then ``--`` and a hash
  of the *original* (user, server) pair.

Why this never collides: a kept name never contains ``--`` and a hashed one always does, so the
two forms cannot meet; kept names are the user name itself; hashed names differ unless both
their readable parts and 40 bits of SHA-256 of distinct inputs agree.

Names must not collide with what is *derived* from them either. Consul names a server's sidecar
``<service id>-sidecar-proxy`` (ID and service name alike), so a user called
``bob-sidecar-proxy`` kept as is would be exactly bob's sidecar. A rendered name that ends in a
suffix of :data:`RESERVED_SUFFIXES` therefore takes the hashed form, which ends in ``--`` and hex
digits and so never ends in one of them: no service name we render is anyone's derived ID.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from typing import TypeGuard

DEFAULT_TEMPLATE = "jupyter-{slug}"
MAX_NAME_LENGTH = 63  # one DNS label
_HASH_LENGTH = 10
_SAFE_SLUG = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
_UNSAFE_RUN = re.compile(r"[^a-z0-9]+")
_TEMPLATE_TEXT = re.compile(r"^[a-z0-9-]*$")
# Room left for a readable part must be worth having; a template longer than this is a mistake.
_MIN_SLUG_ROOM = 16
# Suffixes that Consul or we append to a service ID to name something else; a rendered name
# never ends in one. "-sidecar-proxy": Consul's sidecar ID and sidecar service name, parent
# ID/name + structs.SidecarProxySuffix (hashicorp/consul agent/sidecar_service.go,
# sidecarIDFromServiceID and sidecarServiceFromNodeService). Check IDs need no entry: ours is
# "<id>:alive" (plan.MeshPlan.check_id) and Consul's defaults are "service:<id>[:<n>]"; both hold
# a ':' that no DNS label contains, so no name can equal them.
RESERVED_SUFFIXES: tuple[str, ...] = ("-sidecar-proxy",)


class NameTemplateError(ValueError):
    """The configured name template cannot produce valid, collision-free names."""


def _digest(user_name: str, server_name: str) -> str:
    # Length-prefixing the user name makes the pair's encoding unique whatever characters it holds.
    encoded = f"{len(user_name)}:{user_name}{server_name}".encode("utf-8", "surrogatepass")
    return hashlib.sha256(encoded).hexdigest()[:_HASH_LENGTH]


def _readable(text: str) -> str:
    # Accents become plain letters ("Émile" -> "emile") so the readable part stays readable;
    # uniqueness never depends on it (the hash of the original does that).
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return _UNSAFE_RUN.sub("-", ascii_text.lower()).strip("-")


def slug(
    user_name: str, server_name: str = "", max_length: int = MAX_NAME_LENGTH, *, prefix: str = "", tail: str = ""
) -> str:
    """The collision-free part of a service name for one server, at most ``max_length`` long.

    ``prefix`` and ``tail`` are the template's text around the slug: a user name is kept as is
    only if ``prefix + name + tail`` does not end in one of :data:`RESERVED_SUFFIXES`.
    """
    if not user_name:
        raise ValueError("a hub user name is never empty")
    if max_length < _MIN_SLUG_ROOM:
        raise ValueError(f"max_length {max_length} leaves no room for a readable slug")
    if (
        not server_name
        and _SAFE_SLUG.match(user_name)
        and len(user_name) <= max_length
        and not f"{prefix}{user_name}{tail}".endswith(RESERVED_SUFFIXES)
    ):
        return user_name
    suffix = "--" + _digest(user_name, server_name)
    readable = _readable(user_name)
    if server_name:
        readable = f"{readable}-{_readable(server_name)}".strip("-")
    # Truncation may leave a trailing dash; strip again so "--" stays the only double dash.
    readable = readable[: max_length - len(suffix)].strip("-")
    # An all-symbol name (say "..." or an emoji) leaves nothing readable: the hash alone is unique.
    return f"{readable}{suffix}" if readable else f"x{suffix}"


def check_template(template: str) -> None:
    """Refuse a name template that could produce invalid names.

    The template holds ``{slug}`` exactly once and otherwise only lower-case letters, digits and
    dashes, not at either end. The fixed text is the same for every server, so the rendered
    name is exactly as collision-free as the slug.
    """
    if template.count("{slug}") != 1:
        raise NameTemplateError(f"name template {template!r} must contain '{{slug}}' exactly once")
    fixed = template.replace("{slug}", "")
    if not _TEMPLATE_TEXT.match(fixed) or template.startswith("-") or template.endswith("-"):
        raise NameTemplateError(
            f"name template {template!r}: outside '{{slug}}' only a-z, 0-9 and inner '-' are allowed"
        )
    if MAX_NAME_LENGTH - len(fixed) < _MIN_SLUG_ROOM:
        raise NameTemplateError(f"name template {template!r} is too long to leave room for the user's name")
    if template.endswith(RESERVED_SUFFIXES):
        # Every name would end like a derived ID (a sidecar's), whatever the slug.
        raise NameTemplateError(
            f"name template {template!r} must not end in {' or '.join(map(repr, RESERVED_SUFFIXES))}"
        )


def service_name(user_name: str, server_name: str = "", template: str = DEFAULT_TEMPLATE) -> str:
    """The Consul service name of one hub user's server (a DNS label, stable, injective)."""
    check_template(template)
    room = MAX_NAME_LENGTH - (len(template) - len("{slug}"))
    prefix, tail = template.split("{slug}")
    name = f"{prefix}{slug(user_name, server_name, room, prefix=prefix, tail=tail)}{tail}"
    if name.endswith(RESERVED_SUFFIXES):
        # Cannot happen: a hashed slug ends in hex digits, and check_template refuses a tail that
        # ends in a reserved suffix. Refuse rather than hand out a name that collides.
        raise NameTemplateError(f"name template {template!r} renders {name!r}, a reserved (derived) name")
    return name


def sidecar_id(parent_service_id: str) -> str:
    """The ID Consul gives a ``Connect.SidecarService`` of ``parent_service_id``.

    Fixed by Consul (hashicorp/consul agent/sidecar_service.go, sidecarIDFromServiceID):
    ``<parent-id>-sidecar-proxy``.
    """
    return f"{parent_service_id}{RESERVED_SUFFIXES[0]}"


# Characters of the incarnation in a service ID: 32 bits, so two starts of one server never share
# an ID in practice (consul-k8s makes its IDs unique with the pod name the same way).
INSTANCE_ID_LENGTH = 8


def service_id(name: str, incarnation: str) -> str:
    """The Consul service ID of one start (incarnation) of the server named ``name``.

    Unique per start, as consul-k8s's ``<pod>-<service>``: Consul has no conditional deregister,
    so a late or retried deregister of an old start can only ever hit that start, never the
    next one, while the service *name* (identities, intentions) stays stable. The separator is
    ``--``, which a kept name never holds and a hashed one ends in ten hex digits after, so an
    ID (eight after its last ``--``) never equals any service name, including the IDs of
    earlier releases, which were the names. Without an incarnation (tools), the name itself.
    """
    return f"{name}--{incarnation[:INSTANCE_ID_LENGTH]}" if incarnation else name


# Any name that can hold an ACL service identity (ours, a destination, an upstream):
# validServiceIdentityName and ServiceIdentityNameMaxLength in hashicorp/consul acl/validation.go.
SERVICE_IDENTITY_NAME_MAX = 256
_SERVICE_IDENTITY_NAME = re.compile(r"^[a-z0-9]([a-z0-9_-]*[a-z0-9])?$")


def is_service_identity_name(name: object) -> TypeGuard[str]:
    """Whether ``name`` is a Consul service name that can hold an ACL service identity."""
    return (
        isinstance(name, str)
        and len(name) <= SERVICE_IDENTITY_NAME_MAX
        and _SERVICE_IDENTITY_NAME.match(name) is not None
    )
