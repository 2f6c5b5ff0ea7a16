"""Drop-in (issue 8): dockerspawner's own test suite passes with ConsulSpawner as it does with
DockerSpawner.

The tests of the *installed* dockerspawner version come from its sdist on PyPI, fetched at test
time (``pip download``; nothing of dockerspawner's is kept in this repository). They run twice
in a pytest subprocess with tests/dockerspawner_suite/dssuite_plugin.py, which supplies the
fixtures their (unshipped) conftest.py would: once with DockerSpawner, once with ConsulSpawner
in its place on a fake Consul agent reachable from containers. Every test that passes with
DockerSpawner must pass with ConsulSpawner.

On this machine:
- no container registry: the images the tests name (quay.io/jupyterhub/singleuser:4.0 and :4,
  busybox:1.29.1) are stand-in tags of our local notebook image, created here and removed after
  (a name that already exists is left alone); tests that must really pull are excluded;
- the servers run on a network of their own (consulspawner-dssuite) with container name prefix
  ``dssuite``, so they never meet the other integration tests' (consulspawner-test, jupyter-cstest);
- the plugin lists the tests that cannot run here (EXCLUDED, with reasons) and restores
  JupyterHub 5's named-server lookup that three of the tests rely on (see the plugin).

One test fails for any DockerSpawner subclass by construction (EXPECTED_DIFFERENCES): it is
accepted only when it fails in exactly that way, and test_deprecated_alias_behaves_as_on_dockerspawner
checks what it checks, class name aside. Both runs take about 50 s each here.
"""

import json
import logging
import os
import subprocess
import sys
import tarfile
import time
from importlib.metadata import version
from pathlib import Path

import docker
import pytest

from consulspawner_dev.fakeconsul import FakeConsul

from ..conftest import MASTER_TOKEN
from .conftest import SIDECAR_COMMAND, remove_containers

SUITE = Path(__file__).resolve().parents[1] / "dockerspawner_suite"
NETWORK = "consulspawner-dssuite"
PREFIX = "dssuite"
HUB_INSTANCE = "dssuite"
LABEL_HUB_INSTANCE = "org.jupyter.consulspawner.hub-instance"
# Registry images dockerspawner's tests name; here, tags of the local notebook image.
STAND_IN_IMAGES = ("quay.io/jupyterhub/singleuser:4.0", "quay.io/jupyterhub/singleuser:4", "busybox:1.29.1")
# Tests that cannot pass for a subclass by construction, with the reason and text their failure
# must show (any other failure of theirs counts as a ConsulSpawner failure).
CLASS_NAME_IN_MESSAGE = (
    "dockerspawner words its deprecation warning with self.__class__.__name__ and the test "
    "compares the whole text with 'DockerSpawner.image_whitelist ...'; every subclass (SwarmSpawner, "
    "SystemUserSpawner, ConsulSpawner) says its own name. The alias itself works: "
    "test_deprecated_alias_behaves_as_on_dockerspawner below checks the rest."
)
EXPECTED_DIFFERENCES = {
    "tests/test_deprecations.py::test_deprecated_config": (
        CLASS_NAME_IN_MESSAGE,
        "'ConsulSpawner.image_whitelist is deprecated in DockerSpawner 12.0, use ConsulSpawner.allowed_images instead'",
    ),
}
RUN_TIMEOUT = 180  # seconds per run; a run takes about 50 s here


@pytest.fixture(scope="module")
def dockerspawner_tests(tmp_path_factory):
    """The tests/ directory of the installed dockerspawner's sdist, unpacked alone (the
    sdist's own dockerspawner package is not unpacked, so the installed one is what runs)."""
    wanted = version("dockerspawner")
    download = tmp_path_factory.mktemp("dockerspawner-sdist")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--disable-pip-version-check",
            "--no-deps",
            "--no-binary",
            ":all:",
            "--dest",
            str(download),
            f"dockerspawner=={wanted}",
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    if result.returncode != 0:
        pytest.fail(f"pip could not download the dockerspawner {wanted} sdist from PyPI:\n{result.stderr[-2000:]}")
    [sdist] = download.glob("dockerspawner-*.tar.gz")
    root = tmp_path_factory.mktemp("dockerspawner-tests")
    with tarfile.open(sdist) as archive:
        # tests/ alone; a conftest.py (14.0.0 ships none) would replace the plugin's fixtures.
        members = [
            m
            for m in archive.getmembers()
            if m.isfile()
            and len(parts := Path(m.name).parts) >= 3
            and parts[1] == "tests"
            and parts[-1] != "conftest.py"
        ]
        if not any(Path(m.name).name.startswith("test_") for m in members):
            pytest.fail(f"the dockerspawner {wanted} sdist ({sdist.name}) has no tests/test_*.py")
        for member in members:
            member.name = str(Path(*Path(member.name).parts[1:]))
            # The "data" filter (no absolute paths, links out or devices) where Python has it.
            archive.extract(member, root, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    return {"version": wanted, "root": root}


def _remove_ours(client):
    ids = {
        c["Id"]
        for c in client.api.containers(all=True, filters={"name": PREFIX})
        if any(name.lstrip("/").startswith(f"{PREFIX}-") for name in c["Names"])
    }
    labelled = {"label": f"{LABEL_HUB_INSTANCE}={HUB_INSTANCE}"}
    ids.update(c["Id"] for c in client.api.containers(all=True, filters=labelled))
    remove_containers(client, sorted(ids))


@pytest.fixture(scope="module")
def suite_network(docker_client):
    """A bridge network of our own; containers reach the hub and Consul at its gateway."""
    for stale in docker_client.networks.list(names=[NETWORK]):
        remove_containers(docker_client, list(stale.attrs.get("Containers") or {}))
        stale.remove()
    _remove_ours(docker_client)
    network = docker_client.networks.create(NETWORK, driver="bridge")
    network.reload()
    try:
        yield {"name": NETWORK, "gateway": network.attrs["IPAM"]["Config"][0]["Gateway"]}
    finally:
        _remove_ours(docker_client)
        network.remove()


@pytest.fixture(scope="module")
def stand_in_images(docker_client, images):
    """Tag the local notebook image with the registry names the tests use; untag afterwards
    only what was tagged here."""
    notebook = docker_client.images.get(images["notebook"])
    created = []
    for name in STAND_IN_IMAGES:
        try:
            docker_client.images.get(name)
            continue  # a real (or someone else's) image: leave it
        except docker.errors.ImageNotFound:
            pass
        repository, tag = name.rsplit(":", 1)
        notebook.tag(repository, tag)
        created.append(name)
    try:
        yield created
    finally:
        for name in created:
            try:
                docker_client.api.remove_image(name, noprune=True)  # untags; the image stays
            except docker.errors.ImageNotFound:
                pass


def suite_identity(consul, tmp_path) -> dict:
    """The operator's bootstrap for the suite's hub: its names start with ``dssuite-`` (the
    suite's container prefix), so the policy, the binding rule and the prefix follow that."""
    import asyncio

    from consulspawner_dev.admin import AdminClient
    from consulspawner_dev.bootstrap import POLICY_DIR, bootstrap_identity, write_signing_key

    key_file = write_signing_key(tmp_path / "dssuite-jwt.pem")

    async def bootstrap():
        async with AdminClient(consul.url, MASTER_TOKEN) as admin:
            await admin.set_config({"Kind": "service-defaults", "Name": "trino-coordinator", "Protocol": "http"})
            method = await bootstrap_identity(admin, hub_instance=HUB_INSTANCE, key_file=key_file, prefix=f"{PREFIX}-")
            rules = (POLICY_DIR / "hub-policy.hcl").read_text().replace('"jupyter-"', f'"{PREFIX}-"')
            await admin.request("PUT", "/v1/acl/policy", body={"Name": "dssuite-hub", "Rules": rules})
            token = await admin.request("PUT", "/v1/acl/token", body={"Policies": [{"Name": "dssuite-hub"}]})
        return {"token": token.body["SecretID"], "key_file": str(key_file), "auth_method": method}

    return asyncio.run(bootstrap())


def run_suite(spawner, tests, network, images, consul, tmp_path, identity):
    report = tmp_path / f"{spawner}.json"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(SUITE), os.environ.get("PYTHONPATH")])),
        "DSSUITE_SPAWNER": spawner,
        "DSSUITE_NETWORK": network["name"],
        "DSSUITE_GATEWAY": network["gateway"],
        "DSSUITE_PREFIX": PREFIX,
        "DSSUITE_IMAGE": images["notebook"],
        "DSSUITE_REPORT": str(report),
        "DSSUITE_CONSUL_URL": consul.url,
        "DSSUITE_CONSUL_TOKEN": identity["token"],
        "DSSUITE_JWT_KEY_FILE": identity["key_file"],
        "DSSUITE_AUTH_METHOD": identity["auth_method"],
        "DSSUITE_SIDECAR_IMAGE": images["sidecar"],
        "DSSUITE_SIDECAR_COMMAND": json.dumps(SIDECAR_COMMAND),
        "DSSUITE_HUB_INSTANCE": HUB_INSTANCE,
    }
    for leak in ("CONSUL_HTTP_ADDR", "CONSUL_HTTP_TOKEN", "CONSUL_HTTP_TOKEN_FILE", "PYTEST_ADDOPTS"):
        env.pop(leak, None)
    root = tests["root"]
    started = time.monotonic()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-c",
            str(SUITE / "pytest.ini"),
            "--rootdir",
            str(root),
            "--confcutdir",
            str(root),
            "-p",
            "dssuite_plugin",
            str(root / "tests"),
        ],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
    )
    elapsed = time.monotonic() - started
    (tmp_path / f"{spawner}.log").write_text(result.stdout + result.stderr)
    if not report.exists():
        pytest.fail(
            f"the {spawner} run wrote no report (exit {result.returncode}):\n"
            f"{result.stdout[-6000:]}\n{result.stderr[-3000:]}"
        )
    data = json.loads(report.read_text())
    data["elapsed"] = elapsed
    data["output"] = result.stdout
    return data


def _counts(outcomes):
    counts = {}
    for outcome in outcomes.values():
        counts[outcome] = counts.get(outcome, 0) + 1
    return ", ".join(f"{n} {outcome}" for outcome, n in sorted(counts.items())) or "nothing ran"


def _registrations(requests):
    return sum(1 for method, path in requests if method == "PUT" and path.startswith("/v1/agent/service/register"))


def test_dockerspawner_suite_passes_with_consulspawner(
    dockerspawner_tests, suite_network, stand_in_images, images, tmp_path, capsys
):
    runs = {}
    with FakeConsul(
        acl_master_token=MASTER_TOKEN, host=suite_network["gateway"], check_interval_override=0.5
    ).start() as consul:
        identity = suite_identity(consul, tmp_path)
        for spawner in ("docker", "consul"):
            before = len(consul.requests)
            runs[spawner] = run_suite(spawner, dockerspawner_tests, suite_network, images, consul, tmp_path, identity)
            runs[spawner]["registrations"] = _registrations(consul.requests[before:])
        left_in_consul = sorted(consul.state.services)
    docker_run, consul_run = runs["docker"], runs["consul"]
    with capsys.disabled():  # the report shows whether the test passes or not
        regressions = _report(dockerspawner_tests, runs, stand_in_images, tmp_path)

    assert set(docker_run["outcomes"]) == set(consul_run["outcomes"]), "the two runs ran different tests"
    assert any(o == "passed" for o in docker_run["outcomes"].values()), "nothing passed with DockerSpawner"
    assert docker_run["registrations"] == 0 and consul_run["registrations"] > 0, "the spawner swap did not take"
    assert not regressions, f"pass with DockerSpawner, not with ConsulSpawner: {regressions}"
    assert not left_in_consul, f"services left in Consul after the hubs stopped: {left_in_consul}"


def _report(dockerspawner_tests, runs, stand_in_images, tmp_path):
    """Print counts, exclusions and differences; return the tests that pass with DockerSpawner
    and not with ConsulSpawner (other than the expected differences)."""
    docker_run, consul_run = runs["docker"], runs["consul"]
    print(f"\ndockerspawner {dockerspawner_tests['version']} test suite (its PyPI sdist), run outputs in {tmp_path}")
    for spawner, run in runs.items():
        print(
            f"  {spawner.capitalize() + 'Spawner':>13}: {_counts(run['outcomes'])} in {run['elapsed']:.0f}s "
            f"({run['registrations']} Consul service registrations)"
        )
    print(f"  stand-in image tags made here: {', '.join(stand_in_images) or 'none (names already present)'}")
    print("  excluded (cannot run here):")
    for nodeid, reason in sorted(docker_run["excluded"].items()):
        print(f"    {nodeid}: {reason}")
    for nodeid in docker_run["not_found"]:
        print(f"    (listed for exclusion, not in this version: {nodeid})")

    passed_with_docker = sorted(t for t, outcome in docker_run["outcomes"].items() if outcome == "passed")
    regressions = []
    for nodeid in passed_with_docker:
        if consul_run["outcomes"].get(nodeid) == "passed":
            continue
        reason, must_show = EXPECTED_DIFFERENCES.get(nodeid, (None, None))
        if reason and consul_run["outcomes"].get(nodeid) == "failed" and must_show in consul_run["failures"][nodeid]:
            print(f"  fails with ConsulSpawner by construction: {nodeid}: {reason}")
            continue
        regressions.append(nodeid)
        print(
            f"  FAILS with ConsulSpawner only: {nodeid} ({consul_run['outcomes'].get(nodeid, 'not run')}):\n"
            f"{consul_run['failures'].get(nodeid, '')[-4000:]}"
        )
    if len(passed_with_docker) < len(docker_run["outcomes"]):
        print(f"\n--- DockerSpawner run ---\n{docker_run['output'][-8000:]}")
    return regressions


def test_deprecated_alias_behaves_as_on_dockerspawner(caplog):
    """What test_deprecated_config checks, with the class name the message is built from:
    one warning, and the deprecated name sets the new trait."""
    from traitlets.config import Config

    from consulspawner import ConsulSpawner

    config = Config()
    config.DockerSpawner.image_whitelist = {"1.0": "jupyterhub/singleuser:1.0"}
    log = logging.getLogger("dssuite-alias")
    spawner = ConsulSpawner(config=config, log=log)
    assert caplog.record_tuples == [
        (
            log.name,
            logging.WARNING,
            "ConsulSpawner.image_whitelist is deprecated in DockerSpawner 12.0, "
            "use ConsulSpawner.allowed_images instead",
        )
    ]
    assert spawner.allowed_images == {"1.0": "jupyterhub/singleuser:1.0"}
