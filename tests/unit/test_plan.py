"""The mesh plan is pure: what it registers and grants is asserted as literal dicts."""

import json
import subprocess
import sys

import pytest

from consulspawner import ownership
from consulspawner.entries import L4, L7
from consulspawner.plan import MeshSettings, Upstream, build_plan

SETTINGS = MeshSettings(hub_instance="hub-a", check_ttl=60, deregister_critical_after=90, intention_mode=L4)


def test_registration_of_a_plain_user():
    plan = build_plan(SETTINGS, "alice", service_port=8888, incarnation="c0ffee")
    meta = {
        "managed-by": "consulspawner",
        "hub-instance": "hub-a",
        "hub-user": "alice",
        "hub-server": "",
        "incarnation": "c0ffee",
    }
    assert plan.registration("172.18.0.5") == {
        "ID": "jupyter-alice--c0ffee",
        "Name": "jupyter-alice",
        "Port": 8888,
        "Address": "172.18.0.5",
        "Tags": ["jupyterhub"],
        "Meta": meta,
        "Check": {
            "CheckID": "jupyter-alice--c0ffee:alive",
            "Name": "JupyterHub server alive",
            "TTL": "60s",
            "DeregisterCriticalServiceAfter": "90s",
            "Status": "passing",
        },
        "Connect": {
            "SidecarService": {
                "Port": 21000,
                "Tags": ["jupyterhub"],
                "Meta": meta,
                "Proxy": {
                    "Upstreams": [
                        {
                            "DestinationType": "service",
                            "DestinationName": "trino-coordinator",
                            "LocalBindAddress": "127.0.0.1",
                            "LocalBindPort": 28080,
                        }
                    ]
                },
            }
        },
    }
    assert "Address" not in plan.registration()
    assert plan.sidecar_id == "jupyter-alice--c0ffee-sidecar-proxy"


def test_l4_grant_carries_owner_and_expiry():
    plan = build_plan(SETTINGS, "Bob@example.org", "gpu")
    [(destination, entry)] = plan.grants(now=1_000_000)
    assert destination == "trino-coordinator"
    assert entry["Name"] == plan.service_name
    assert entry["Action"] == "allow"
    assert "Permissions" not in entry
    assert ownership.parse(entry["Description"]) == ownership.Owner(
        hub="hub-a", user="Bob@example.org", server="gpu", service=plan.service_name, expires_at=1_000_600
    )


def test_l7_grant_allows_only_this_trino_user():
    settings = MeshSettings(intention_mode=L7)
    plan = build_plan(settings, "carol", trino_user="carol_analyst")
    [(_, entry)] = plan.grants(now=0)
    assert "Action" not in entry
    assert entry["Permissions"] == [
        {"Action": "deny", "HTTP": {"Header": [{"Name": "X-Trino-Original-User", "Present": True}]}},
        {"Action": "deny", "HTTP": {"Header": [{"Name": "X-Presto-User", "Present": True}]}},
        {"Action": "deny", "HTTP": {"Header": [{"Name": "X-Presto-Original-User", "Present": True}]}},
        {"Action": "deny", "HTTP": {"Header": [{"Name": "Authorization", "Present": True}]}},
        {"Action": "allow", "HTTP": {"Header": [{"Name": "X-Trino-User", "Exact": "carol_analyst"}]}},
        {"Action": "deny", "HTTP": {"PathPrefix": "/"}},
    ]


def test_notebook_env_points_the_trino_client_at_the_sidecar():
    settings = MeshSettings(upstreams=(Upstream("trino-coordinator", 28080), Upstream("reports", 29000)))
    env = build_plan(settings, "dave", trino_user="dave").notebook_env()
    assert env == {
        "TRINO_HOST": "127.0.0.1",
        "TRINO_PORT": "28080",
        "TRINO_USER": "dave",
        "CONSUL_SERVICE_NAME": "jupyter-dave",
    }
    assert not any("TOKEN" in key for key in env)


def test_sidecar_args_fill_placeholders_and_refuse_unknown_ones():
    plan = build_plan(SETTINGS, "erin")
    template = ["consul", "connect", "envoy", "-sidecar-for", "{service_id}", "-token-file", "{token_file}"]
    args = plan.sidecar_args(template, token_file="/consul/token")
    assert args == ["consul", "connect", "envoy", "-sidecar-for", "jupyter-erin", "-token-file", "/consul/token"]
    with pytest.raises(ValueError, match="unknown placeholder"):
        plan.sidecar_args(["{nope}"])


def test_pinned_service_id_survives_a_template_change():
    settings = MeshSettings(name_template="hub2-{slug}")
    plan = build_plan(settings, "frank", service_id="jupyter-frank")
    assert plan.service_id == plan.service_name == "jupyter-frank"
    pinned = build_plan(settings, "frank", service_id="jupyter-frank--0a1b2c3d", service_name="jupyter-frank")
    assert (pinned.service_id, pinned.service_name) == ("jupyter-frank--0a1b2c3d", "jupyter-frank")


def test_each_start_has_its_own_service_id_under_one_name():
    """consul-k8s style: a late deregister of one start can never hit the next (issue 17)."""
    first = build_plan(SETTINGS, "gina", incarnation="0123456789abcdef")
    second = build_plan(SETTINGS, "gina", incarnation="fedcba9876543210")
    assert (first.service_id, second.service_id) == ("jupyter-gina--01234567", "jupyter-gina--fedcba98")
    assert first.service_name == second.service_name == "jupyter-gina"
    assert first.owner.service == "jupyter-gina" and first.check_id == "jupyter-gina--01234567:alive"
    assert first.sidecar_args(["-sidecar-for", "{service_id}", "{sidecar_id}", "{service_name}"]) == [
        "-sidecar-for",
        "jupyter-gina--01234567",
        "jupyter-gina--01234567-sidecar-proxy",
        "jupyter-gina",
    ]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"deregister_critical_after": 30}, "at least 60"),
        ({"intention_mode": "L5"}, "intention mode"),
        ({"intention_destinations": ("Trino Coordinator",)}, "not a valid Consul service name"),
        ({"upstreams": (Upstream("a", 1), Upstream("b", 1))}, "same local port"),
        ({"name_template": "nope"}, "exactly once"),
        ({"intention_ttl": 10, "check_ttl": 60}, "at least check_ttl"),
    ],
)
def test_broken_settings_are_refused_with_a_clear_message(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MeshSettings(**kwargs)


@pytest.mark.parametrize(
    "trino_user", ["", "bob\r\nX-Trino-User: admin", "b\x00b", " bob", "b\u2028b", "x" * 257, "alice,x"]
)
def test_hostile_trino_users_are_refused(trino_user):
    with pytest.raises(ValueError, match="Trino user"):
        build_plan(SETTINGS, "bob", trino_user=trino_user)


def test_a_non_ascii_hub_user_needs_an_ascii_trino_user():
    # Issue 18: the trino client sends a header as latin-1 while the intention holds UTF-8.
    with pytest.raises(ValueError, match=r"'Émile.Dupont@example.org'.*'É' \(U\+00C9\)"):
        build_plan(SETTINGS, "Émile.Dupont@example.org")
    plan = build_plan(SETTINGS, "Émile.Dupont@example.org", trino_user="emile.dupont@example.org")
    assert plan.notebook_env()["TRINO_USER"] == "emile.dupont@example.org"


def test_marker_round_trip_and_damaged_markers():
    owner = ownership.Owner(hub="h", user='we"ird\n{user}', server="", service="s", expires_at=5)
    assert ownership.parse(owner.describe()) == owner
    assert ownership.parse("orchestrator may call trino") is None
    assert ownership.parse(ownership.MARKER + "{not json") is None
    assert ownership.parse(ownership.MARKER + json.dumps({"hub": 1, "user": "u", "server": "", "service": "s"})) is None


def test_the_plan_and_its_entries_import_no_io():
    # Pure means importable without the Consul client or the writer (issue 15).
    code = (
        "import sys, consulspawner.plan, consulspawner.entries; "
        "print(sorted(m for m in sys.modules if m in "
        "('consulspawner.consul', 'consulspawner.intentions', 'aiohttp', 'asyncio')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
