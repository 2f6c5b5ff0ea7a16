"""The L7 source entry binds X-Trino-User and refuses every other header Trino derives who is
asking from, in a form Consul's L7 intentions express.

Requests are judged the way Envoy's RBAC filter judges the permissions Consul generates: the
first matching permission decides (hashicorp/consul agent/xds/rbac.go,
removePermissionPrecedence), repeated headers are joined with ',' before matching
(envoyproxy/envoy header_utility.h, getAllOfHeaderAsString), header names match case-blind."""

import pytest

from consulspawner import ownership
from consulspawner.entries import (
    L4,
    L7,
    REFUSED_IDENTITY_HEADERS,
    TRINO_USER_HEADER,
    IntentionRefused,
    owned_by,
    source_entry,
    source_owner,
    validate_source,
)
from consulspawner.trinouser import TrinoUserRefused

OWNER = ownership.Owner(hub="hub-a", user="alice", server="", service="jupyter-alice", incarnation="c0ffee")


def entry(trino_user="alice"):
    return source_entry("jupyter-alice", OWNER, L7, trino_user)


def _header(request, name):
    values = [v for k, v in request if k.lower() == name.lower()]
    return ",".join(values) if values else None


def _matches(permission, request, path="/v1/statement"):
    http = permission["HTTP"]
    if "PathPrefix" in http and not path.startswith(http["PathPrefix"]):
        return False
    for rule in http.get("Header", []):
        value = _header(request, rule["Name"])
        if "Exact" in rule:
            hit = value == rule["Exact"]
        else:
            assert set(rule) == {"Name", "Present"}, rule  # the only forms this entry uses
            hit = value is not None
        if hit == bool(rule.get("Invert")):
            return False
    return True


def decide(source, request):
    for permission in source["Permissions"]:
        if _matches(permission, request):
            return permission["Action"]
    return "default"


def test_the_own_user_alone_is_allowed_and_everything_else_denied():
    source = entry()
    validate_source(source)  # Consul accepts it
    assert decide(source, [(TRINO_USER_HEADER, "alice")]) == "allow"
    assert decide(source, [("x-trino-user", "alice"), ("X-Trino-Source", "trino-python-client")]) == "allow"
    assert decide(source, [(TRINO_USER_HEADER, "bob")]) == "deny"
    assert decide(source, []) == "deny"
    # Two lines: Envoy sees "alice,x", Trino would read "alice". Refused by the Exact rule, and a
    # Trino user holding ',' cannot be granted at all.
    assert decide(source, [(TRINO_USER_HEADER, "alice"), (TRINO_USER_HEADER, "x")]) == "deny"
    with pytest.raises(TrinoUserRefused, match=r"','"):
        entry("alice,x")


@pytest.mark.parametrize("header", REFUSED_IDENTITY_HEADERS)
def test_each_other_identity_header_is_refused_next_to_a_valid_user(header):
    source = entry()
    assert decide(source, [(TRINO_USER_HEADER, "alice"), (header, "bob")]) == "deny"
    assert decide(source, [(TRINO_USER_HEADER, "alice"), (header.lower(), "")]) == "deny"  # present, even empty


def test_the_refused_set_is_what_trino_derives_identity_from():
    # trinodb/trino HttpRequestSessionContextFactory (Original-User), ProtocolHeaders.detectProtocol
    # with alternate-header-name=Presto (the X-Presto-* names), InsecureAuthenticator (Authorization).
    assert set(REFUSED_IDENTITY_HEADERS) == {
        "X-Trino-Original-User",
        "X-Presto-User",
        "X-Presto-Original-User",
        "Authorization",
    }
    # Checked by Trino against the bound user, so left to it (see entries.py).
    source = entry()
    for header, value in [("X-Trino-Role", "system=ROLE{analyst}"), ("X-Trino-Extra-Credential", "k=v")]:
        assert decide(source, [(TRINO_USER_HEADER, "alice"), (header, value)]) == "allow"


def test_l4_is_one_allow_and_refusals_name_the_mode():
    assert source_entry("jupyter-alice", OWNER, L4) == {
        "Name": "jupyter-alice",
        "Description": OWNER.describe(),
        "Action": "allow",
    }
    with pytest.raises(ValueError, match="Trino user"):
        source_entry("jupyter-alice", OWNER, L7, None)
    with pytest.raises(ValueError, match="intention mode"):
        source_entry("jupyter-alice", OWNER, "L5")


def test_reading_back_who_owns_a_source():
    source = entry()
    assert source_owner(source) == OWNER
    assert owned_by(source, "hub-a") and not owned_by(source, "hub-b")
    assert source_owner({"Name": "orchestrator", "Description": "ops"}) is None
    assert not owned_by({"Name": "orchestrator"}, "hub-a")


def test_a_source_name_must_hold_a_service_identity():
    with pytest.raises(IntentionRefused, match="service name"):
        validate_source({**entry(), "Name": "Jupyter-Alice"})
