"""Service names: exact outputs for known names, and properties for any name (hypothesis)."""

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consulspawner import naming

DNS_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


@pytest.mark.parametrize(
    ("user", "server", "expected"),
    [
        ("alice", "", "jupyter-alice"),
        ("Alice", "", "jupyter-alice--8ed1ad0e39"),
        ("a-b", "", "jupyter-a-b"),
        ("a.b", "", "jupyter-a-b--922b76c754"),
        ("alice", "gpu", "jupyter-alice-gpu--cbb7296402"),
        ("al--ice", "", "jupyter-al-ice--c9b752e51f"),
        ("\U0001f600", "", "jupyter-x--3aa0f5cdd6"),
        ("../etc/passwd", "", "jupyter-etc-passwd--f6776897fd"),
        ("Émile.Dupont@example.org", "", "jupyter-emile-dupont-example-org--8b31a3ee1f"),
        ("Zoë", "", "jupyter-zoe--ec9329bb28"),
        ("李雷", "", "jupyter-x--440e96c2e2"),
    ],
)
def test_known_names(user, server, expected):
    assert naming.service_name(user, server) == expected
    assert naming.service_id(user, server) == expected


def test_long_name_is_truncated_to_a_dns_label_and_keeps_its_hash():
    name = naming.service_name("x" * 200)
    assert len(name) == 63
    assert DNS_LABEL.match(name)
    assert name != naming.service_name("x" * 199)


def test_the_look_alikes_from_the_issue_all_differ():
    pairs = [("Alice", ""), ("alice", ""), ("a.b", ""), ("a-b", ""), ("a b", ""), ("a/b", ""),
             ("..", ""), (".", ""), ("alice", "x"), ("alice-x", ""), ("alice", "X")]
    names = [naming.service_name(u, s) for u, s in pairs]
    assert len(set(names)) == len(pairs)


def test_custom_template_and_bad_templates():
    assert naming.service_name("bob", template="hub2-{slug}-nb") == "hub2-bob-nb"
    for bad in ["jupyter", "{slug}-{slug}", "Jupyter-{slug}", "-{slug}", "{slug}-", "j_{slug}", "a" * 50 + "{slug}"]:
        with pytest.raises(naming.NameTemplateError):
            naming.service_name("bob", template=bad)


def test_empty_user_is_refused():
    with pytest.raises(ValueError, match="never empty"):
        naming.service_name("")


def test_sidecar_id_follows_consul():
    assert naming.sidecar_id("jupyter-alice") == "jupyter-alice-sidecar-proxy"


user_names = st.text(min_size=1, max_size=220)
server_names = st.one_of(st.just(""), st.text(max_size=80))


@settings(max_examples=600, deadline=None)
@given(user=user_names, server=server_names)
def test_every_name_is_a_dns_label_and_stable(user, server):
    name = naming.service_name(user, server)
    assert DNS_LABEL.match(name), name
    assert name.startswith("jupyter-")
    assert naming.service_name(user, server) == name


@settings(max_examples=1500, deadline=None)
@given(a=st.tuples(user_names, server_names), b=st.tuples(user_names, server_names))
def test_different_pairs_never_share_a_name(a, b):
    if a != b:
        assert naming.service_name(*a) != naming.service_name(*b)


# Near-misses are where naive slugging collides: case, separators, and truncation at 63.
near_miss_users = st.builds(
    lambda base, sep, tail, upper: (base + sep + tail).upper() if upper else base + sep + tail,
    st.sampled_from(["alice", "a", "x" * 60, "bob"]),
    st.sampled_from(["", ".", "-", "--", " ", "/", "..", "_", "@"]),
    st.sampled_from(["", "b", "1", "x", "srv"]),
    st.booleans(),
)


@settings(max_examples=800, deadline=None)
@given(a=st.tuples(near_miss_users, st.sampled_from(["", "b", "srv", "B"])),
       b=st.tuples(near_miss_users, st.sampled_from(["", "b", "srv", "B"])))
def test_near_miss_names_never_collide(a, b):
    if a != b:
        assert naming.service_name(*a) != naming.service_name(*b)
