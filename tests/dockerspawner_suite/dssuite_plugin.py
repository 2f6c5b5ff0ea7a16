"""A pytest plugin that runs dockerspawner's own test suite (unpacked from its sdist) against
DockerSpawner or, in its place, ConsulSpawner.

dockerspawner's sdist ships its test modules but not the conftest.py they take their fixtures
from; this plugin provides those fixtures (``app``, ``named_servers``,
``dockerspawner_configured_app``, ``user``, ``username``, ``docker``), configured for this machine:
a local image instead of registry images, a Docker network and container name prefix of our
own, the hub reachable from containers at the network's gateway, and (ConsulSpawner) a fake
Consul agent reachable from containers.

tests/integration/test_dockerspawner_suite.py loads it into a pytest subprocess
(``-p dssuite_plugin``) and sets the environment:

  DSSUITE_SPAWNER         docker | consul: the spawner the tests get
  DSSUITE_NETWORK         Docker network of the servers (created by the caller)
  DSSUITE_GATEWAY         that network's gateway: where containers reach the hub
  DSSUITE_PREFIX          container name prefix (DockerSpawner.prefix, and Consul service names)
  DSSUITE_IMAGE           the notebook image (a jupyterhub-singleuser image)
  DSSUITE_REPORT          JSON file this plugin writes the outcomes to
  DSSUITE_CONSUL_URL, DSSUITE_CONSUL_TOKEN, DSSUITE_SIDECAR_IMAGE, DSSUITE_SIDECAR_COMMAND (JSON),
  DSSUITE_HUB_INSTANCE    ConsulSpawner only

With DSSUITE_SPAWNER=consul the hub's spawner class is ConsulSpawner, and the name
``DockerSpawner`` in each test module is ConsulSpawner, so tests that build a spawner directly
(``DockerSpawner(mem_limit=...)``) build a ConsulSpawner and ``isinstance(s, DockerSpawner)``
checks that the swap took.
"""

from __future__ import annotations

import json
import os
from unittest import mock

import docker as docker_sdk
import pytest
from dockerspawner import DockerSpawner
from jupyterhub import version_info

# jupyterhub's base fixtures, as dockerspawner's own conftest takes them.
from jupyterhub.tests.conftest import app as jupyterhub_app  # noqa: F401
from jupyterhub.tests.conftest import (
    ssl_tmpdir,  # noqa: F401
    user,  # noqa: F401
)
from jupyterhub.tests.mocking import MockHub

MODE = os.environ.get("DSSUITE_SPAWNER", "docker")
PREFIX = os.environ.get("DSSUITE_PREFIX", "dssuite")
LABEL_HUB_INSTANCE = "org.jupyter.consulspawner.hub-instance"

# Tests not run, with the reason; deselected in both runs.
EXCLUDED = {
    "tests/test_dockerspawner.py::test_image_pull_policy": (
        "pulls busybox:1.29.1 and busybox:latest from Docker Hub (pull_policy ifnotpresent after "
        "removing the image, then 'always'): needs a container registry"
    ),
    "tests/test_swarmspawner.py::test_start_stop": (
        "tests SwarmSpawner (swarm services), a sibling of ConsulSpawner under DockerSpawner, not "
        "DockerSpawner: there is nothing to swap; it also needs `docker swarm init` on the shared daemon"
    ),
    "tests/test_systemuserspawner.py::test_start_stop": (
        "tests SystemUserSpawner, a sibling of ConsulSpawner under DockerSpawner, not DockerSpawner: "
        "there is nothing to swap (ConsulSpawner is no SystemUserSpawner)"
    ),
}

# The hub listens on all addresses; containers reach it at their network's gateway. Set on the
# class before the ``app`` fixture instantiates it, as dockerspawner's conftest does.
MockHub.hub_ip = "0.0.0.0"
if os.environ.get("DSSUITE_GATEWAY"):
    MockHub.hub_connect_ip = os.environ["DSSUITE_GATEWAY"]


def spawner_class():
    if MODE == "consul":
        from consulspawner import ConsulSpawner

        return ConsulSpawner
    if MODE != "docker":
        raise pytest.UsageError(f"DSSUITE_SPAWNER={MODE!r}: docker or consul")
    return DockerSpawner


def pytest_configure(config):
    spawner_class()  # fail early on a bad mode
    config._dssuite = {"phases": {}, "failures": {}, "excluded": {}, "not_found": []}


def pytest_collection_modifyitems(config, items):
    kept, dropped = [], []
    for item in items:
        base = item.nodeid.split("[", 1)[0]
        if base in EXCLUDED:
            dropped.append(item)
            config._dssuite["excluded"][item.nodeid] = EXCLUDED[base]
        else:
            kept.append(item)
    seen = {item.nodeid.split("[", 1)[0] for item in items}
    config._dssuite["not_found"] = sorted(set(EXCLUDED) - seen)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)
    state = item.config._dssuite
    state["phases"].setdefault(item.nodeid, []).append((report.when, report.outcome, hasattr(report, "wasxfail")))
    if report.failed:
        state["failures"][item.nodeid] = state["failures"].get(item.nodeid, "") + report.longreprtext


def final_outcome(phases):
    """One word per test from its setup/call/teardown reports, as pytest's summary counts them."""
    for when, outcome, _ in phases:
        if outcome == "failed":
            return "failed" if when == "call" else "error"
    for _, outcome, xfail in phases:
        if outcome == "skipped":
            return "xfailed" if xfail else "skipped"
    if any(when == "call" and xfail for when, _, xfail in phases):
        return "xpassed"
    return "passed"


def pytest_sessionfinish(session):
    path = os.environ.get("DSSUITE_REPORT")
    if path:
        state = session.config._dssuite
        data = {
            "spawner": MODE,
            "outcomes": {nodeid: final_outcome(phases) for nodeid, phases in state["phases"].items()},
            "failures": state["failures"],
            "excluded": state["excluded"],
            "not_found": state["not_found"],
        }
        with open(path, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)


@pytest.fixture
def app(jupyterhub_app):  # noqa: F811
    """jupyterhub's MockHub, configured for the spawner under test on this machine."""
    app = jupyterhub_app
    config = app.config.DockerSpawner
    config.prefix = PREFIX
    config.image = os.environ["DSSUITE_IMAGE"]
    config.network_name = os.environ["DSSUITE_NETWORK"]
    if MODE == "consul":
        consul = app.config.ConsulSpawner
        consul.consul_address = os.environ["DSSUITE_CONSUL_URL"]
        consul.consul_token = os.environ["DSSUITE_CONSUL_TOKEN"]
        consul.sidecar_image = os.environ["DSSUITE_SIDECAR_IMAGE"]
        consul.sidecar_command = json.loads(os.environ["DSSUITE_SIDECAR_COMMAND"])
        consul.hub_instance = os.environ["DSSUITE_HUB_INSTANCE"]
        consul.service_name_template = PREFIX + "-{slug}"  # sidecar containers share our prefix
        consul.service_prefix = PREFIX + "-"
        consul.jwt_signing_key_file = os.environ["DSSUITE_JWT_KEY_FILE"]
        consul.auth_method = os.environ["DSSUITE_AUTH_METHOD"]
    return app


@pytest.fixture
def named_servers(app):
    with mock.patch.dict(app.tornado_settings, {"allow_named_servers": True, "named_server_limit_per_user": 2}):
        yield


@pytest.fixture
def dockerspawner_configured_app(app, named_servers):
    """The hub with the spawner under test as its spawner class."""
    with mock.patch.dict(app.tornado_settings, {"spawner_class": spawner_class()}):
        yield app


@pytest.fixture(autouse=True)
def jupyterhub5_named_server_lookup(monkeypatch):
    """``user.spawners[name]`` creates a named server's database row, as in JupyterHub 5.

    dockerspawner's tests (test_name_collision, test_start_stop, test_legacy_escape) get a
    named server's spawner with ``user.spawners["also-has@"]`` before asking the REST API to
    start it. JupyterHub 5's User._new_spawner created the missing orm.Spawner; JupyterHub 6's
    raises ``ValueError: orm_spawner not found``, so on JupyterHub 6 these tests fail before any
    spawner runs, for DockerSpawner and ConsulSpawner alike. This restores the JupyterHub 5
    lookup in both runs so they test the spawner again.
    """
    from jupyterhub.user import User

    if version_info[0] < 6:
        return
    original = User._new_spawner

    def new_spawner(self, server_name, *args, **kwargs):
        if server_name not in self.orm_spawners:
            self._new_orm_spawner(server_name, server_name)
        return original(self, server_name, *args, **kwargs)

    monkeypatch.setattr(User, "_new_spawner", new_spawner)


@pytest.fixture(autouse=True)
def swap_spawner_class_in_test_module(request, monkeypatch):
    """In ConsulSpawner mode, the test module's ``DockerSpawner`` is ConsulSpawner."""
    module = getattr(request, "module", None)
    if MODE == "consul" and getattr(module, "DockerSpawner", None) is DockerSpawner:
        monkeypatch.setattr(module, "DockerSpawner", spawner_class())


_username_counter = 0


@pytest.fixture
def username():
    global _username_counter
    _username_counter += 1
    return f"test-user-{_username_counter}"


def our_containers(client):
    hub_instance = os.environ.get("DSSUITE_HUB_INSTANCE", "")
    ids = {
        c["Id"]
        for c in client.api.containers(all=True, filters={"name": PREFIX})
        if any(name.lstrip("/").startswith(f"{PREFIX}-") for name in c["Names"])
    }
    if hub_instance:
        ids.update(
            c["Id"] for c in client.api.containers(all=True, filters={"label": f"{LABEL_HUB_INSTANCE}={hub_instance}"})
        )
    return ids


def remove_our_containers(client):
    for container_id in our_containers(client):
        try:
            client.api.remove_container(container_id, force=True, v=True)
        except docker_sdk.errors.NotFound:
            pass
        except docker_sdk.errors.APIError as e:
            if e.status_code != 409:  # removal already in progress (auto_remove)
                raise


@pytest.fixture(autouse=True, scope="session")
def docker():
    """A Docker client; removes every container this run created when the session ends."""
    client = docker_sdk.from_env()
    try:
        yield client
    finally:
        remove_our_containers(client)
        client.close()


@pytest.fixture(autouse=True)
def debug_docker(request, docker):
    """On failure, print our containers' state and logs."""
    yield
    report = getattr(request.node, "rep_call", None)
    if report is None or not report.failed:
        return
    for container_id in our_containers(docker):
        try:
            info = docker.api.inspect_container(container_id)
            logs = docker.api.logs(container_id, tail=40).decode(errors="replace")
        except docker_sdk.errors.NotFound:
            continue
        print(f"--- container {info['Name']}: {info['State']['Status']}\n{logs}")
