"""Which Trino users the mesh can bind to one person (pure, no I/O).

In L7 mode the intention lets a notebook's requests through only while their ``X-Trino-User``
header is exactly its server's Trino user. That holds only if Envoy (which compares) and Trino
(which acts) read the same user from the same bytes, so a Trino user is restricted to characters
that neither of them splits, trims, folds or re-encodes:

- Envoy joins repeated request headers with ``,`` before a header matcher sees them
  (envoyproxy/envoy source/common/http/header_utility.h, ``getAllOfHeaderAsString``: "Multiple
  headers are concatenated with ','"), while Trino reads only the first value
  (trinodb/trino core/trino-main/.../server/HttpRequestSessionContextFactory.java,
  ``buildSessionIdentity``: ``headers.getFirst(protocolHeaders.requestUser())``). A user holding
  ``,`` could send ``alice`` and ``x`` on two lines, match its own ``alice,x`` rule and run as
  alice. Trino also splits ``,``-separated values of its list headers (``splitHttpHeader``).
- Trino trims the value (``trimEmptyToNull``: ``String.trim`` drops every character up to
  U+0020 at both ends), and Envoy's codecs strip the optional whitespace around a header value
  and refuse NUL, CR and LF in it (RFC 9110 field values; Envoy ``HeaderUtility::headerValueIsValid``).
  So no whitespace or control character can be compared the same way by both.
- Envoy compares bytes, while Python's ``http.client`` (under the trino client's ``requests``)
  sends a header value as latin-1 and the intention holds UTF-8: a non-ASCII user is never the
  same bytes on both sides. Only ASCII is allowed.

What remains is the set people use for log-in names: ASCII letters, digits, and ``.``, ``_``,
``@``, ``-`` (an e-mail address without ``+`` fits). Length 1 to 256: Trino needs a user
("User must be set"); the upper bound is not Envoy's (a header may be 60 KiB) but ours: the user
is written into every server's intention source, and all sources of a destination share one
config entry, so each byte is paid once per user in every write of that entry. 256 is more than
JupyterHub's own user name column (255 characters) and Consul's service-identity names (256).
"""

from __future__ import annotations

TRINO_USER_MAX = 256
ALLOWED_PUNCTUATION = "._@-"
_ALLOWED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789" + ALLOWED_PUNCTUATION)

HELP = (
    "A Trino user is 1 to 256 characters from A-Z, a-z, 0-9 and '.', '_', '@', '-': Envoy joins "
    "repeated headers with ',' and Trino reads only the first, Trino trims blanks, and Envoy "
    "compares bytes that the trino client sends as latin-1, so anything else could let one user "
    "act as another. A spawn whose Trino user has any other character is refused. Map hub users "
    "to Trino users one to one: two hub users with the same Trino user are the same person to Trino."
)


class TrinoUserRefused(ValueError):
    """A Trino user the mesh cannot bind to exactly one person (see :data:`HELP`)."""


def check_trino_user(trino_user: object, hub_user: str) -> str:
    """Return ``trino_user`` if L7 intentions can bind it; raise :class:`TrinoUserRefused` naming
    the hub user and the offending character otherwise."""
    if not isinstance(trino_user, str):
        raise TrinoUserRefused(
            f"Trino user for hub user {hub_user!r} must be a string, not {type(trino_user).__name__}"
        )
    if not trino_user:
        raise TrinoUserRefused(f"Trino user for hub user {hub_user!r} is empty. {HELP}")
    if len(trino_user) > TRINO_USER_MAX:
        raise TrinoUserRefused(
            f"Trino user for hub user {hub_user!r} is {len(trino_user)} characters long; "
            f"at most {TRINO_USER_MAX} are allowed. {HELP}"
        )
    for position, char in enumerate(trino_user):
        if char not in _ALLOWED:
            raise TrinoUserRefused(
                f"Trino user {trino_user!r} for hub user {hub_user!r} contains {char!r} "
                f"(U+{ord(char):04X}) at position {position}, which is not allowed. {HELP}"
            )
    return trino_user
