"""Fixtures for tests on the real Docker daemon: images, a test network, a fake Consul agent
reachable from containers, spawners built as a hub builds them, and cleanup by name prefix.

scripts/test.sh sets Docker and the images up; run through it. A missing piece is an error with
the reason, never a skip: these tests are the core path.
"""

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import threading
import time
import uuid

import docker
import pytest

from consulspawner import hubwide
from consulspawner.entries import KIND
from consulspawner_dev.admin import AdminClient
from consulspawner_dev.bootstrap import bootstrap_identity, write_signing_key
from consulspawner_dev.bootstrap import policy_token as bootstrap_policy_token
from consulspawner_dev.fakeconsul import FakeConsul
from consulspawner_dev.standalone import standalone_spawner

from ..conftest import MASTER_TOKEN

# Overridable so two test sessions can share one Docker daemon without removing each other's
# network and containers.
NETWORK = os.environ.get("CONSULSPAWNER_TEST_NETWORK", "consulspawner-test")
NAME_PREFIX = os.environ.get("CONSULSPAWNER_TEST_PREFIX", "cstest")
SIDECAR_COMMAND = ["connectproxy", "-sidecar-for", "{service_id}", "-token-file", "{token_file}"]
# The notebook server itself is not under test here (the end-to-end hub test runs the real
# jupyterhub-singleuser); a plain HTTP server on the port keeps these tests independent of a hub.
# It exits on SIGTERM as jupyterhub-singleuser does (PID 1 gets no default handler, and docker
# stop would otherwise wait its 10 s for every server).
NOTEBOOK_COMMAND = [
    "python3",
    "-c",
    "import http.server, signal, sys; signal.signal(signal.SIGTERM, lambda *_: sys.exit(0)); "
    "http.server.ThreadingHTTPServer(('', 8888), http.server.SimpleHTTPRequestHandler).serve_forever()",
]


def _image(variable):
    image = os.environ.get(variable)
    if not image:
        pytest.fail(f"${variable} is not set: run the tests through scripts/test.sh, which builds the images")
    return image


@pytest.fixture(scope="session")
def docker_client():
    try:
        client = docker.from_env(version="auto")
        client.ping()
    except Exception as e:
        pytest.fail(f"no Docker daemon answers ({e}); scripts/test.sh starts one (scripts/ensure-docker.sh)")
    yield client
    client.close()


@pytest.fixture(scope="session")
def images(docker_client):
    found = {"notebook": _image("CONSULSPAWNER_NOTEBOOK_IMAGE"), "sidecar": _image("CONSULSPAWNER_SIDECAR_IMAGE")}
    for image in found.values():
        docker_client.images.get(image)  # raises ImageNotFound with the name
    return found


@pytest.fixture(scope="session")
def test_network(docker_client):
    """A user-defined bridge; its gateway is the host address containers reach Consul on."""
    for stale in docker_client.networks.list(names=[NETWORK]):
        remove_containers(docker_client, list(stale.attrs.get("Containers") or {}))
        stale.remove()
    network = docker_client.networks.create(NETWORK, driver="bridge")
    network.reload()
    gateway = network.attrs["IPAM"]["Config"][0]["Gateway"]
    yield {"name": NETWORK, "gateway": gateway}
    _remove_test_containers(docker_client)
    network.remove()


def _remove_test_containers(client):
    remove_containers(client, container_ids(client, name=f"jupyter-{NAME_PREFIX}"))


@pytest.fixture
def mesh_consul(test_network):
    """A fake agent with ACLs on, reachable from the host and from the test containers."""
    fake = FakeConsul(acl_master_token=MASTER_TOKEN, host=test_network["gateway"], check_interval_override=0.5)
    with fake.start():
        yield fake


@pytest.fixture
async def admin(mesh_consul):
    client = AdminClient(mesh_consul.url, MASTER_TOKEN)
    yield client
    await client.close()


async def policy_token(admin, role):
    """A token of the least-privilege policy docker/consul/<role>-policy.hcl ("hub" or
    "janitor"), as the ACL bootstrap creates it: the hub in these tests never holds more."""
    return await bootstrap_policy_token(admin, role, description=f"{role} token (tests)")


@pytest.fixture
async def hub_token(admin):
    return await policy_token(admin, "hub")


@pytest.fixture
def user_name():
    return f"{NAME_PREFIX}{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def jwt_key_file(tmp_path_factory):
    """The hub's JWT signing key for the tests (0600, as an operator makes it)."""
    return write_signing_key(tmp_path_factory.mktemp("hub-jwt") / "key.pem")


@pytest.fixture
async def hub_identity(admin, jwt_key_file):
    """The operator's once-per-hub step on the test agent: the JWT auth method and binding rule
    of hub instance "jupyterhub" (the default), as docker/stack/consul/identity-init.sh does;
    and, as a site running the default L7 intentions has, trino-coordinator's protocol http."""
    assert await admin.set_config({"Kind": "service-defaults", "Name": "trino-coordinator", "Protocol": "http"})
    return await bootstrap_identity(admin, hub_instance="jupyterhub", key_file=jwt_key_file)


@pytest.fixture
async def make_spawner(
    images, test_network, mesh_consul, hub_token, hub_identity, jwt_key_file, docker_client, request
):
    made = []

    def make(name, **overrides):
        settings = dict(
            image=images["notebook"],
            cmd=NOTEBOOK_COMMAND,
            network_name=test_network["name"],
            use_internal_ip=True,
            remove=True,
            pull_policy="never",
            consul_address=mesh_consul.url,
            consul_token=hub_token,
            jwt_signing_key_file=str(jwt_key_file),
            auth_method=hub_identity,
            sidecar_image=images["sidecar"],
            sidecar_command=SIDECAR_COMMAND,
            start_timeout=90,  # JupyterHub's; the sidecar's readiness deadline must be less
            sidecar_ready_timeout=60,
            consul_retry_budget=5,
        )
        spawner = standalone_spawner(name, **{**settings, **overrides})
        made.append(spawner)
        return spawner

    yield make
    for spawner in made:
        await spawner.forget()
    failed = getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed
    remove_containers(docker_client, container_ids(docker_client, name=f"jupyter-{NAME_PREFIX}"), show_logs=failed)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


async def hub_stop(spawner):
    """What JupyterHub's User.stop does: stop() only if poll() says running, then the hook."""
    status = await spawner.poll()
    if status is None:
        await spawner.stop()
    await spawner.run_post_stop_hook()
    spawner.clear_state()


async def wait_for(condition, timeout=60.0, interval=0.2, message="condition"):
    """Poll ``condition`` (sync or async) until truthy; generous deadline, never a fixed sleep."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = condition()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        await asyncio.sleep(interval)


async def token_due(spawner):
    """Wait until the keeper's next round would rotate ``spawner``'s token: its expiry within
    ``token_rotation_margin`` (a round run earlier would find nothing to do and prove nothing)."""

    def due():
        state = spawner.mesh_state
        return state.token_expires_at and state.token_expires_at - time.time() <= spawner.token_rotation_margin

    await wait_for(due, timeout=30, interval=0.05, message="the token to be due for rotation")


def container_exec(docker_client, container, *command):
    result = docker_client.containers.get(container).exec_run(list(command))
    return result.exit_code, result.output.decode(errors="replace")


def inspect_json(container):
    return json.dumps(subprocess.run(["docker", "inspect", container], capture_output=True, text=True).stdout)


async def mesh_objects(admin, service_name):
    """Everything in Consul that belongs to one server (services by name: their IDs are per start)."""
    services = sorted(
        s["Service"]
        for s in (await admin.agent_services()).values()
        if s["Service"] in (service_name, f"{service_name}-sidecar-proxy")
    )
    # A server's tokens are login tokens with its service identity (AuthMethod set by Consul).
    tokens = [
        t["AccessorID"]
        for t in await admin.list_tokens()
        if t.get("AuthMethod") and {"ServiceName": service_name} in (t.get("ServiceIdentities") or [])
    ]
    entry = await admin.get_config(KIND, "trino-coordinator")
    sources = [s["Name"] for s in (entry or {}).get("Sources", []) if s["Name"] == service_name]
    return {"services": services, "tokens": tokens, "sources": sources}


NOTHING = {"services": [], "tokens": [], "sources": []}


async def service_named(admin, service_name):
    """The agent's registration of the service named ``service_name`` (None if there is none)."""
    found = [s for s in (await admin.agent_services()).values() if s["Service"] == service_name]
    assert len(found) <= 1, f"{len(found)} instances of {service_name}"
    return found[0] if found else None


def container_ids(docker_client, **filters):
    """IDs of matching containers, in one API call: the high-level ``containers.list`` inspects
    each container after listing, which fails when one is removed in between."""
    return [c["Id"] for c in docker_client.api.containers(all=True, filters=filters)]


def remove_containers(docker_client, ids, show_logs=False):
    for container_id in ids:
        try:
            container = docker_client.containers.get(container_id)
            if show_logs:
                print(f"\n--- logs of {container.name} ---\n{container.logs(tail=60).decode(errors='replace')}")
            container.remove(force=True)
        except docker.errors.NotFound:
            pass  # auto_remove got there first
        except docker.errors.APIError as e:
            if e.status_code != 409:  # "removal already in progress": auto_remove is at it
                raise


async def containers_gone(docker_client, name, timeout=30):
    """Wait until no container matches ``name``: with ``remove=True`` Docker removes a stopped
    container asynchronously (auto_remove), so it may linger a moment after stop returns."""
    await wait_for(
        lambda: not container_ids(docker_client, name=name),
        timeout=timeout,
        message=f"containers named {name} to be removed",
    )


@pytest.fixture
async def hub_runner(
    tmp_path, images, test_network, mesh_consul, hub_token, hub_identity, jwt_key_file, docker_client, request
):
    from .hubrunner import HubRunner  # imported here: hubrunner imports this module

    if not shutil.which("configurable-http-proxy"):
        pytest.fail("configurable-http-proxy is not installed: scripts/test.sh installs it with npm")
    runner = HubRunner(tmp_path, mesh_consul, images, test_network, hub_token, jwt_key_file)
    try:
        yield runner
    finally:
        if runner.api:
            await runner.api.session.close()
        runner.stop()
        runner.kill_everything()
        failed = getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed
        if failed:
            print(runner.logs())
        # The hub leaves servers running when it stops (cleanup_servers=False): remove them here
        # so no later test shares the network with them.
        _remove_test_containers(docker_client)


@pytest.fixture(autouse=True)
async def close_shared_consul_clients():
    """Spawners share one Consul client per loop, as in a hub; each test has its own loop."""
    yield
    from consulspawner import spawner

    for client, _ in spawner._shared_clients.values():
        await client.close()
    spawner._shared_clients.clear()
    for closer in list(spawner._client_closers):  # as the hub's shutdown cancels its tasks
        closer.cancel()
    spawner._client_closers.clear()
    # Each test is a hub process of its own, against a fake agent of its own: a later fake
    # that gets an earlier one's port must not find its once-per-process checks passed.
    hubwide._hub_token_ok.clear()
    hubwide._l7_ready.clear()


class HeldCreate:
    """Events of a sidecar create held on its Docker thread (see ``sidecar_create_held``)."""

    def __init__(self):
        self.creating, self.released, self.created = threading.Event(), threading.Event(), threading.Event()


@contextlib.contextmanager
def sidecar_create_held(spawner, hold: float):
    """Hold every sidecar ``create_container`` of ``spawner``'s class on its Docker thread until
    ``released`` is set (at most ``hold`` seconds): a create still in flight when a stop or a
    shutdown cancels the keeper, as Docker's thread goes on regardless."""
    held = HeldCreate()
    pool = hubwide._sidecar_dockers[type(spawner)]

    class SlowCreate:
        def __init__(self, client):
            self._client = client

        def create_container(self, *args, **kwargs):
            held.creating.set()
            held.released.wait(timeout=hold)
            try:
                return self._client.create_container(*args, **kwargs)
            finally:
                held.created.set()

        def __getattr__(self, name):
            return getattr(self._client, name)

    real = pool.client
    pool.client = lambda: SlowCreate(real())
    try:
        yield held
    finally:
        held.released.set()
        del pool.client
