"""Ownership markers: incarnations, Consul's 512-byte limits, and markers that always parse."""

import json
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consulspawner import ownership
from consulspawner.ownership import DESCRIPTION_MAX_BYTES, Owner, truncate_utf8

INCARNATION = "0123456789abcdef0123456789abcdef"
SERVICE = "jupyter-" + "x" * 44 + "--0123456789"  # 63 characters, our longest name


def utf8_len(text: str) -> int:
    # Go's len() of the string Consul decodes: UTF-8 bytes.
    return len(text.encode("utf-8", "surrogatepass"))


def owner(user="alice", server="", **kw):
    values = {"hub": "main", "service": SERVICE, "incarnation": INCARNATION, "expires_at": 1_900_000_000}
    values.update(kw)
    return Owner(user=user, server=server, **values)


LONG_NAMES = {
    "latin": "a" * 255,
    "cjk": "李" * 255,
    "emoji": "\U0001f600" * 255,  # 1020 bytes
    "mixed": ("Zoë李\U0001f600-" * 64)[:255],
    "zwj": ("\U0001f469\u200d\U0001f4bb" * 100)[:255],  # emoji joined by zero-width joiners
    "quotes": ('"\\' * 128)[:255],  # JSON escapes double these
    "controls": ("\x01\n" * 128)[:255],  # JSON escapes make these six bytes each
}


@pytest.mark.parametrize("kind", sorted(LONG_NAMES))
@pytest.mark.parametrize("server_kind", ["", "latin", "emoji"])
def test_255_character_names_fit_512_bytes_and_keep_the_marker(kind, server_kind):
    user = LONG_NAMES[kind]
    server = LONG_NAMES[server_kind] if server_kind else ""
    description = owner(user, server).describe()
    assert utf8_len(description) <= DESCRIPTION_MAX_BYTES
    parsed = ownership.parse(description)
    assert parsed is not None
    assert (parsed.hub, parsed.service, parsed.incarnation, parsed.expires_at) == (
        "main",
        SERVICE,
        INCARNATION,
        1_900_000_000,
    )
    assert user.startswith(parsed.user)
    assert server.startswith(parsed.server)
    # Truncated, not emptied: a person reading the janitor's log still sees who it was.
    assert len(parsed.user) >= 20


def test_short_names_are_kept_whole_with_the_sentence():
    o = owner("Zoë 李雷 \U0001f600", "gpu")
    description = o.describe()
    assert description.startswith("JupyterHub server Zoë 李雷 \U0001f600/gpu (hub main) ")
    assert ownership.parse(description) == o


def test_marker_json_is_not_ascii_escaped():
    # ensure_ascii would spend six bytes on each CJK character instead of three.
    description = owner("李" * 100).describe()
    assert "\\u" not in description
    assert ownership.parse(description).user == "李" * 100


def test_the_sentence_shrinks_before_any_field_does():
    # Long enough that sentence + marker overflow, short enough for the marker alone.
    user = "李" * 90
    description = owner(user).describe()
    assert utf8_len(description) <= DESCRIPTION_MAX_BYTES
    assert ownership.parse(description).user == user


def test_a_hub_name_too_long_for_any_marker_is_refused():
    with pytest.raises(ValueError, match="hub"):
        owner(hub="h" * 600).describe()


def test_incarnation_is_in_the_marker_and_the_service_meta():
    o = owner()
    assert json.loads(o.describe().split(ownership.MARKER, 1)[1])["incarnation"] == INCARNATION
    assert o.service_meta()[ownership.META_INCARNATION] == INCARNATION
    assert ownership.META_INCARNATION == "incarnation"
    assert o.with_expiry(5.7) == owner(expires_at=5)


def test_old_markers_without_incarnation_still_parse():
    old = (
        "JupyterHub server alice/ (hub main) consulspawner/v1 "
        '{"expires_at":100,"hub":"main","server":"","service":"jupyter-alice","user":"alice"}'
    )
    parsed = ownership.parse(old)
    assert parsed == Owner(hub="main", user="alice", server="", service="jupyter-alice", expires_at=100)
    assert parsed.incarnation == ""


def test_is_incarnation_is_this_start_of_this_server_of_this_hub():
    a = owner()
    same = {"hub": a.hub, "service": a.service, "incarnation": a.incarnation}
    assert ownership.is_incarnation(a.with_expiry(1), **same)
    assert not ownership.is_incarnation(owner(incarnation=uuid.uuid4().hex), **same)
    assert not ownership.is_incarnation(owner(service="jupyter-bob"), **same)
    assert not ownership.is_incarnation(owner(hub="other"), **same)
    assert not ownership.is_incarnation(None, **same)
    # A marker from before incarnations existed matches only a state without one.
    assert ownership.is_incarnation(owner(incarnation=""), **{**same, "incarnation": ""})
    assert not ownership.is_incarnation(owner(incarnation=""), **same)


def test_service_owner_reads_our_meta_and_ignores_foreign_services():
    a = owner(expires_at=None)
    assert ownership.service_owner(a.service, {"Meta": a.service_meta()}) == a
    assert ownership.service_owner(a.service, {"Meta": {"hub-instance": a.hub}}) is None


def test_meta_values_are_cut_at_512_bytes_on_a_character_boundary():
    meta = owner("\U0001f600" * 255, "李" * 255).service_meta()
    for value in meta.values():
        assert utf8_len(value) <= 512
    assert meta[ownership.META_USER] == "\U0001f600" * 128
    assert meta[ownership.META_SERVER] == "李" * 170


@pytest.mark.parametrize(
    ("text", "limit", "expected"),
    [
        ("abc", 3, "abc"),
        ("abc", 2, "ab"),
        ("李李", 5, "李"),
        ("李李", 6, "李李"),
        ("\U0001f600x", 3, ""),
        ("\U0001f600x", 4, "\U0001f600"),
        ("", 0, ""),
        ("a", 0, ""),
    ],
)
def test_truncate_utf8(text, limit, expected):
    assert truncate_utf8(text, limit) == expected


def test_a_user_name_holding_a_fake_marker_cannot_forge_an_owner():
    fake = 'consulspawner/v1 {"hub":"main","user":"root","server":"","service":"jupyter-root","expires_at":1}'
    o = owner("x " + fake)
    assert ownership.parse(o.describe()) == o


@settings(max_examples=400, deadline=None)
@given(
    user=st.text(min_size=1, max_size=255),
    server=st.text(max_size=255),
    hub=st.text(min_size=1, max_size=40),
    expires=st.one_of(st.none(), st.integers(0, 2**40)),
)
def test_any_names_fit_and_round_trip_what_matters(user, server, hub, expires):
    o = Owner(hub=hub, user=user, server=server, service=SERVICE, incarnation=INCARNATION, expires_at=expires)
    description = o.describe()
    assert utf8_len(description) <= DESCRIPTION_MAX_BYTES
    parsed = ownership.parse(description)
    assert (parsed.hub, parsed.service, parsed.incarnation, parsed.expires_at) == (hub, SERVICE, INCARNATION, expires)
    assert user.startswith(parsed.user) and server.startswith(parsed.server)
    if utf8_len(description) < DESCRIPTION_MAX_BYTES - 16:  # nothing had to be cut
        assert parsed == o


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=300), limit=st.integers(0, 1100))
def test_truncate_utf8_is_the_longest_prefix_that_fits(text, limit):
    cut = truncate_utf8(text, limit)
    assert text.startswith(cut)
    assert utf8_len(cut) <= limit
    if cut != text:
        assert utf8_len(text[: len(cut) + 1]) > limit
