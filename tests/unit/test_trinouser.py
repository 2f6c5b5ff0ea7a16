"""Which Trino users an L7 intention can bind to one person: the allowed set, its refusals and
their messages (consulspawner.trinouser)."""

import pytest

from consulspawner.trinouser import HELP, TRINO_USER_MAX, TrinoUserRefused, check_trino_user


@pytest.mark.parametrize(
    "trino_user", ["alice", "Alice.Smith", "a_b-c@example.org", "x", "0", "x" * TRINO_USER_MAX, "@.-_"]
)
def test_names_envoy_and_trino_read_alike_are_kept(trino_user):
    assert check_trino_user(trino_user, "hub-user") == trino_user


@pytest.mark.parametrize(
    ("trino_user", "bad", "why"),
    [
        ("alice,x", ",", "Envoy joins repeated headers with ',', Trino reads the first"),
        (" alice", " ", "Trino trims"),
        ("alice ", " ", "Trino trims"),
        ("al\tice", "\t", "Envoy strips optional whitespace"),
        ("alice\n", "\n", "header injection"),
        ("alice\r\nX-Trino-User: admin", "\r", "header injection"),
        ("a\x00b", "\x00", "Envoy refuses NUL"),
        ("Émile", "É", "latin-1 on the wire, UTF-8 in the intention"),
        ("bob\u2028", "\u2028", "not ASCII"),
        ("alice+tag@example.org", "+", "outside the set"),
        ("alice;x", ";", "outside the set"),
        ('"alice"', '"', "outside the set"),
    ],
)
def test_anything_else_is_refused_naming_the_hub_user_and_the_character(trino_user, bad, why):
    with pytest.raises(TrinoUserRefused) as refused:
        check_trino_user(trino_user, "alice@example.org")
    message = str(refused.value)
    assert isinstance(refused.value, ValueError)
    assert "'alice@example.org'" in message, why
    assert f"{bad!r} (U+{ord(bad):04X})" in message, why
    assert HELP in message


def test_empty_too_long_and_non_strings_are_refused():
    with pytest.raises(TrinoUserRefused, match="'bob' is empty"):
        check_trino_user("", "bob")
    with pytest.raises(TrinoUserRefused, match=f"257 characters long; at most {TRINO_USER_MAX}"):
        check_trino_user("x" * (TRINO_USER_MAX + 1), "bob")
    with pytest.raises(TrinoUserRefused, match="must be a string"):
        check_trino_user(None, "bob")


def test_the_help_states_the_set_the_check_enforces():
    for char in "._@-":
        assert f"'{char}'" in HELP
    assert "A-Z, a-z, 0-9" in HELP and "1 to 256" in HELP
