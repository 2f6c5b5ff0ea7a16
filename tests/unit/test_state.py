"""MeshState as persisted: versioned, and older state upgraded on load (issue 17 item 6)."""

from consulspawner.state import STATE_VERSION, MeshState

V1 = {
    "incarnation": "9f" * 16,
    "service_id": "jupyter-alice",
    "user": "alice",
    "token_accessor": "0e6a3f0e-0000-4000-8000-000000000001",
    "token_expires_at": 1.0,
    "registered": True,
    "granted": [["trino-coordinator", "jupyter-alice"]],
    "grant_expires_at": 2.0,
}


def test_state_carries_its_version():
    assert MeshState(service_id="jupyter-alice").to_dict()["version"] == STATE_VERSION


def test_v1_state_is_upgraded_to_this_hubs_instance():
    state = MeshState.from_dict(V1, "main")
    assert state.hub_instance == "main"
    assert state.to_dict() == {**V1, "hub_instance": "main", "service_name": "jupyter-alice", "version": STATE_VERSION}


def test_v2_state_keeps_its_service_id_as_the_name():
    """Until version 3 a server's service ID was its name; the upgrade says so."""
    state = MeshState.from_dict({**V1, "hub_instance": "main", "version": 2}, "main")
    assert (state.service_id, state.service_name) == ("jupyter-alice", "jupyter-alice")


def test_current_state_keeps_its_own_hub_instance():
    data = {**V1, "hub_instance": "other", "service_name": "jupyter-alice", "version": STATE_VERSION}
    assert MeshState.from_dict(data, "main").hub_instance == "other"
    assert MeshState.from_dict(data, "main").copy().to_dict() == data
