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


def test_long_name_is_truncated_to_a_dns_label_and_keeps_its_hash():
    name = naming.service_name("x" * 200)
    assert len(name) == 63
    assert DNS_LABEL.match(name)
    assert name != naming.service_name("x" * 199)


def test_the_look_alikes_from_the_issue_all_differ():
    pairs = [
        ("Alice", ""),
        ("alice", ""),
        ("a.b", ""),
        ("a-b", ""),
        ("a b", ""),
        ("a/b", ""),
        ("..", ""),
        (".", ""),
        ("alice", "x"),
        ("alice-x", ""),
        ("alice", "X"),
    ]
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


@pytest.mark.parametrize(
    ("user", "template", "expected"),
    [
        # Kept as is, bob-sidecar-proxy would be exactly bob's sidecar ID.
        ("bob-sidecar-proxy", naming.DEFAULT_TEMPLATE, "jupyter-bob-sidecar-proxy--1fb1b1a77b"),
        ("sidecar-proxy", naming.DEFAULT_TEMPLATE, "jupyter-sidecar-proxy--d46d06f236"),
        ("a-sidecar-proxy-sidecar-proxy", naming.DEFAULT_TEMPLATE, "jupyter-a-sidecar-proxy-sidecar-proxy--887d687ea5"),
        # Judged on the rendered name: under "{slug}-proxy" user "a" is "a-proxy", whose sidecar
        # is "a-proxy-sidecar-proxy", which user "a-proxy-sidecar" would otherwise render to.
        ("a-proxy-sidecar", "{slug}-proxy", "a-proxy-sidecar--594f8de285-proxy"),
        # Only the exact suffix is reserved.
        ("bob-sidecar-proxyx", naming.DEFAULT_TEMPLATE, "jupyter-bob-sidecar-proxyx"),
        ("bob-sidecars-proxy", naming.DEFAULT_TEMPLATE, "jupyter-bob-sidecars-proxy"),
    ],
)
def test_names_ending_in_a_reserved_suffix_take_the_hashed_form(user, template, expected):
    assert naming.service_name(user, template=template) == expected
    assert not expected.endswith(naming.RESERVED_SUFFIXES)


def test_a_user_named_like_a_sidecar_never_gets_its_id():
    bob_sidecar = naming.sidecar_id(naming.service_name("bob"))
    assert naming.service_name("bob-sidecar-proxy") != bob_sidecar
    # Same clash built from the template's fixed tail instead of the user name.
    a_sidecar = naming.sidecar_id(naming.service_name("a", template="{slug}-proxy"))  # a-proxy-sidecar-proxy
    assert naming.service_name("a-proxy-sidecar", template="{slug}-proxy") != a_sidecar


def test_templates_that_end_in_a_reserved_suffix_are_refused():
    for bad in ["{slug}-sidecar-proxy", "hub-{slug}-x-sidecar-proxy"]:
        with pytest.raises(naming.NameTemplateError, match="sidecar-proxy"):
            naming.check_template(bad)


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
@given(
    a=st.tuples(near_miss_users, st.sampled_from(["", "b", "srv", "B"])),
    b=st.tuples(near_miss_users, st.sampled_from(["", "b", "srv", "B"])),
)
def test_near_miss_names_never_collide(a, b):
    if a != b:
        assert naming.service_name(*a) != naming.service_name(*b)


# Names built to end in what Consul (or we) derive from a service ID: the generator alone would
# almost never produce "-sidecar-proxy", so build such names on purpose.
suffixed_users = st.one_of(
    user_names,
    st.builds(
        lambda base, suffix: base + suffix,
        st.text(max_size=60),
        st.sampled_from((*naming.RESERVED_SUFFIXES, "sidecar-proxy", "-proxy", "-sidecar")),
    ),
    st.builds(
        lambda base, n: base + "-sidecar-proxy" * n, st.from_regex(r"[a-z0-9]{1,12}", fullmatch=True), st.integers(1, 3)
    ),
)
templates = st.sampled_from([naming.DEFAULT_TEMPLATE, "{slug}", "{slug}-proxy", "hub2-{slug}-nb"])


@settings(max_examples=1500, deadline=None)
@given(a=st.tuples(suffixed_users, server_names), b=st.tuples(suffixed_users, server_names), template=templates)
def test_no_service_name_is_another_servers_derived_id(a, b, template):
    name_a = naming.service_name(*a, template=template)
    name_b = naming.service_name(*b, template=template)
    assert not name_a.endswith(naming.RESERVED_SUFFIXES), name_a
    assert name_a != naming.sidecar_id(name_b)
    if a != b:
        assert name_a != name_b
