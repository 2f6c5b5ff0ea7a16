"""The demo, driven as a user would (issue 11, "Done when").

``bash scripts/demo.sh`` runs as a subprocess in its own process group, on its own ports, Docker
network, hub instance and state directory. The test waits for the printed URL, logs in over HTTP
with the printed admin login, gets an API token from the hub, starts a server through the API,
runs the example notebook's code inside the notebook container (the trino client, through the
sidecar's upstream on 127.0.0.1:28080) and gets the 25 nations. Meanwhile no Consul secret may
be in any process's environment, in the hub's database or in a file looser than 0600. Then
SIGINT, as Ctrl-C, and Docker and Consul must be clean.

Two runs: the README's command as is (the embedded dev agent, L4: its Consul dies with the demo,
so the test reads it while the demo runs and checks the demo's own audit line after), and
``--consul URL --l4`` against an agent the test owns (so the test reads it after the demo is
gone); the first, as the README runs it, is L7 and sees the intention refuse another user's
X-Trino-User.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import stat
import subprocess
import threading
import time
from pathlib import Path

import aiohttp
import pytest

from consulspawner.consul import ConsulClient, ConsulError
from consulspawner_dev.admin import AdminClient
from consulspawner_dev.fakeconsul import FakeConsul

from .conftest import NAME_PREFIX, container_ids, remove_containers, wait_for
from .hubrunner import free_port

REPO = Path(__file__).resolve().parents[2]
LABEL = "org.jupyter.consulspawner"
STARTUP_TIMEOUT = 900  # a fresh clone creates .venv and may build images first
MANAGEMENT_TOKEN = "0c7a3a4e-5d0b-4f5e-9a47-2f3c6b1d9e01"

pytestmark = [pytest.mark.docker, pytest.mark.hub]

# The example notebook's code cell, run as the notebook user would run it (its last expression
# printed, as Jupyter shows it).
RUN_EXAMPLE = """
import ast, json
nb = json.load(open("/home/jovyan/trino-example.ipynb"))
code = "".join(next(c for c in nb["cells"] if c["cell_type"] == "code")["source"])
tree = ast.parse(code)
last = tree.body.pop() if isinstance(tree.body[-1], ast.Expr) else None
scope = {}
exec(compile(tree, "trino-example.ipynb", "exec"), scope)
if last is not None:
    print(repr(eval(compile(ast.Expression(last.value), "trino-example.ipynb", "eval"), scope)))
"""

# A query as someone else: L7 intentions let a server query only as its own user.
RUN_AS_OTHER = """
import os, trino
cursor = trino.dbapi.connect(host=os.environ["TRINO_HOST"], port=int(os.environ["TRINO_PORT"]),
                             user="somebody-else", max_attempts=1).cursor()
cursor.execute("SELECT current_user")
print(cursor.fetchall())
"""


class DemoProcess:
    """scripts/demo.sh with its output collected line by line."""

    def __init__(self, args: list[str], env: dict[str, str]):
        self.lines: list[str] = []
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            ["bash", str(REPO / "scripts" / "demo.sh"), *args],
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def find(self, pattern: str) -> re.Match | None:
        if self.process.poll() is not None and not self.reader.is_alive():
            raise AssertionError(f"the demo exited ({self.process.returncode}):\n{self.output[-6000:]}")
        return re.search(pattern, self.output, re.M)

    def interrupt(self) -> None:
        """Ctrl-C: SIGINT to the demo's process group."""
        try:
            os.killpg(self.process.pid, signal.SIGINT)
        except ProcessLookupError:
            pass

    def wait(self, timeout: float) -> int:
        code = self.process.wait(timeout=timeout)
        self.reader.join(timeout=10)
        return code

    def kill(self) -> None:
        if self.process.poll() is None:
            self.interrupt()
            try:
                self.process.wait(timeout=180)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=30)


def docker_network(name: str) -> str | None:
    """The network's gateway, or None if it does not exist."""
    result = subprocess.run(
        ["docker", "network", "inspect", "-f", "{{(index .IPAM.Config 0).Gateway}}", name],
        capture_output=True,
        text=True,
    )
    return result.stdout.strip() if result.returncode == 0 else None


def network_rm(name: str) -> None:
    subprocess.run(["docker", "network", "rm", name], capture_output=True)


def network_create(name: str) -> None:
    network_rm(name)
    subprocess.run(["docker", "network", "create", name], check=True, capture_output=True)


def our_containers(docker_client, instance: str) -> list[str]:
    return container_ids(docker_client, label=f"{LABEL}.hub-instance={instance}")


async def login(session: aiohttp.ClientSession, url: str, user: str, password: str) -> str:
    """The login form as a browser submits it, then an API token from the hub (as /hub/token)."""
    async with session.get(f"{url}hub/login") as response:
        assert response.status == 200, await response.text()
        page = await response.text()
    xsrf = re.search(r'name="_xsrf" value="([^"]+)"', page).group(1)
    async with session.post(
        f"{url}hub/login?next=", data={"username": user, "password": password, "_xsrf": xsrf}, allow_redirects=False
    ) as response:
        assert response.status == 302, f"login refused: {response.status} {await response.text()}"
    async with session.get(f"{url}hub/login?next=", allow_redirects=False) as response:
        assert response.status == 302, "the hub does not know us after logging in"
    cookie = {c.key: c.value for c in session.cookie_jar}["_xsrf"]
    async with session.post(
        f"{url}hub/api/users/{user}/tokens",
        headers={"X-XSRFToken": cookie},
        json={"note": "test_demo", "expires_in": 3600},
    ) as response:
        body = await response.json()
        assert response.status in (200, 201), body
    return body["token"]


async def api(session: aiohttp.ClientSession, url: str, token: str, method: str, path: str, ok=(200, 201, 202, 204)):
    async with session.request(method, f"{url}hub/api{path}", headers={"Authorization": f"token {token}"}) as response:
        text = await response.text()
        assert response.status in ok, f"{method} {path}: {response.status} {text}"
        return json.loads(text) if text else None


def docker_exec(container: str, script: str) -> tuple[int, str]:
    result = subprocess.run(
        ["docker", "exec", container, "python3", "-c", script], capture_output=True, text=True, timeout=120
    )
    return result.returncode, result.stdout + result.stderr


def secret_files(state: Path) -> dict[str, str]:
    """Every file under <state>/secrets, which must be 0600 in a 0700 directory."""
    directory = state / "secrets"
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    found = {}
    for path in directory.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, f"{path} is {oct(path.stat().st_mode)}"
        found[path.name] = path.read_text().strip()
    return found


def assert_no_secret_leaks(state: Path, consul_secrets: list[str], containers: list[str]) -> None:
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        for secret in consul_secrets:
            assert secret.encode() not in environ, f"a Consul secret is in the environment of pid {pid}"
    database = (state / "hub" / "jupyterhub.sqlite").read_bytes()
    for path in [*(state / "logs").iterdir(), state / "hub" / "jupyterhub.sqlite"]:
        data = database if path.name == "jupyterhub.sqlite" else path.read_bytes()
        for secret in consul_secrets:
            assert secret.encode() not in data, f"a Consul secret is in {path}"
    for container in containers:
        env = subprocess.run(
            ["docker", "inspect", "-f", "{{json .Config.Env}}", container], capture_output=True, text=True
        ).stdout
        for secret in consul_secrets:
            assert secret not in env, f"a Consul secret is in the environment of container {container}"


async def consul_objects(consul: ConsulClient, instance: str) -> dict[str, list[str]]:
    """What a hub instance has in Consul (marker), plus anything the demo itself wrote."""
    services = await consul.agent_services()
    tokens = await consul.list_tokens()
    policies = (await consul.request("GET", "/v1/acl/policies")).body or []
    return {
        "services": sorted(s.get("Service", i) for i, s in services.items()),  # by name: IDs are per start
        "tokens": sorted(
            t["AccessorID"]
            for t in tokens
            if "consulspawner" in (t.get("Description") or "")
            or (t.get("AuthMethod") or "").startswith("consulspawner")
        ),
        "policies": sorted(p["Name"] for p in policies if p["Name"].startswith("consulspawner")),
        "intentions": sorted(
            f"{s['Name']} -> {e['Name']}"
            for e in await consul.list_config("service-intentions")
            for s in e.get("Sources") or []
        ),
        "service-defaults": sorted(e["Name"] for e in await consul.list_config("service-defaults")),
        # The servers' login tokens: made at this hub instance's auth method.
        "ours": sorted(t["AccessorID"] for t in tokens if t.get("AuthMethod") == f"consulspawner-{instance}"),
    }


async def drive(tmp_path, docker_client, *, mode: str, external: FakeConsul | None = None, l7: bool = True):
    instance = f"{NAME_PREFIX}demo{mode}"
    network = f"{NAME_PREFIX}-demo-{mode}"
    user = f"{NAME_PREFIX}admin{mode}"
    state = tmp_path / "state"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONSUL_HTTP_TOKEN", "CONSULSPAWNER_DEMO"))}
    env.update(
        {
            "CONSULSPAWNER_DEMO_PORT": str(port),
            "CONSULSPAWNER_DEMO_CONSUL_PORT": "0",
            "CONSULSPAWNER_DEMO_NETWORK": network,
            "CONSULSPAWNER_DEMO_HUB_INSTANCE": instance,
            "CONSULSPAWNER_DEMO_STATE_DIR": str(state),
            "CONSULSPAWNER_DEMO_ADMIN": user,
        }
    )
    args = []
    if external is not None:
        token_file = tmp_path / "bootstrap-token"
        token_file.touch(mode=0o600)
        token_file.write_text(MANAGEMENT_TOKEN)
        env["CONSUL_HTTP_TOKEN_FILE"] = str(token_file)
        args += ["--consul", external.url]
    if not l7:
        args.append("--l4")

    timings = {}
    demo = DemoProcess(args, env)
    try:
        banner = await wait_for(
            lambda: demo.find(r"^JupyterHub with ConsulSpawner is up: (\S+)"),
            timeout=STARTUP_TIMEOUT,
            interval=0.5,
            message="the demo to print its URL",
        )
        await wait_for(lambda: demo.find(r"^Ctrl-C stops"), timeout=30, message="the rest of the banner")
        timings["up"] = time.monotonic() - demo.started
        url = banner.group(1)
        assert url == f"http://127.0.0.1:{port}/"
        admin_user, password = demo.find(r"^\s+admin login:\s+(\S+) / (\S+)$").groups()
        assert admin_user == user
        assert re.search(r"^\s+analyst login:\s+any other user name / \S+$", demo.output, re.M)
        assert ("intentions:      L7" in demo.output) == l7
        if external is None:
            consul_url = demo.find(r"^\s+Consul:\s+(\S+)").group(1)
            management = (state / "secrets" / "management-token").read_text().strip()
            consul = AdminClient(consul_url, management)
        else:
            consul = AdminClient(external.url, MANAGEMENT_TOKEN)

        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
            token = await login(session, url, admin_user, password)
            started = time.monotonic()
            await api(session, url, token, "POST", f"/users/{user}/server")

            async def ready():
                server = (await api(session, url, token, "GET", f"/users/{user}"))["servers"].get("")
                return bool(server and server.get("ready"))

            await wait_for(ready, timeout=240, interval=0.5, message="the admin's server to be ready")
            timings["spawn"] = time.monotonic() - started

        notebooks = container_ids(docker_client, label=[f"{LABEL}.hub-instance={instance}", f"{LABEL}.role=notebook"])
        assert len(notebooks) == 1, notebooks
        notebook = notebooks[0]
        code, output = docker_exec(notebook, RUN_EXAMPLE)
        assert code == 0, f"the example notebook failed in the notebook container:\n{output}"
        assert "25 nations" in output, output
        assert f"[['{user}']]" in output, output  # SELECT current_user: Trino saw this user
        if l7:
            code, output = docker_exec(notebook, RUN_AS_OTHER)
            assert code != 0 and "403" in output, f"L7 let another X-Trino-User through:\n{output}"

        # The mesh really holds this server (so "clean" below means something), and no secret leaks.
        service = f"jupyter-{user}"
        during = await consul_objects(consul, instance)
        assert service in during["services"] and f"{service}-sidecar-proxy" in during["services"], during
        assert len(during["ours"]) == 1, during
        assert f"{service} -> trino-coordinator" in during["intentions"], during
        assert ("trino-coordinator" in during["service-defaults"]) == l7, during
        secrets = secret_files(state)
        consul_secrets = [v for k, v in secrets.items() if k.endswith("token") and k != "hub-api-token"]
        assert {"hub-token", "janitor-token"} <= set(secrets)
        assert_no_secret_leaks(
            state, consul_secrets + ([MANAGEMENT_TOKEN] if external else []), our_containers(docker_client, instance)
        )

        # Ctrl-C.
        started = time.monotonic()
        demo.interrupt()
        code = await asyncio.to_thread(demo.wait, 300)
        timings["stop"] = time.monotonic() - started
        assert code == 0, f"the demo exited {code}:\n{demo.output[-4000:]}"
        assert "demo: stopped; nothing left behind" in demo.output
        assert re.search(r"janitor --once: Pass done: deleted \d+ object\(s\)", demo.output), demo.output[-3000:]
        assert f"demo: clean: no container, service, token or intention of hub '{instance}' left" in demo.output

        assert our_containers(docker_client, instance) == []
        assert list((state / "secrets").iterdir()) == []
        # The banner said where the audit trail goes; it holds this server's grant and its end.
        printed = re.search(r"^\s+audit trail:\s+(\S+)", demo.output, re.M)
        assert printed, demo.output[-3000:]
        audit_path = Path(printed.group(1))
        assert audit_path == state.resolve() / "logs" / "audit.log"
        events = [json.loads(line) for line in (await asyncio.to_thread(audit_path.read_text)).splitlines()]
        kinds = {e["event"] for e in events if e["service"] == service}
        assert {"grant", "revoke", "teardown"} <= kinds, events
        assert re.search(r"^\s+metrics:\s+curl .*/hub/metrics", demo.output, re.M)
        if external is None:
            assert docker_network(network) is None, "the demo's Docker network is still there"
            with pytest.raises(ConsulError):  # the embedded agent went with the demo
                await consul.request("GET", "/v1/agent/self")
        else:
            after = await consul_objects(consul, instance)
            assert after == {
                "services": [],
                "tokens": [],
                "policies": [],
                "intentions": [],
                "service-defaults": [],
                "ours": [],
            }, after
        await consul.close()
        print(f"\ndemo ({mode}) timings: " + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()))
    except BaseException:
        print(f"\n--- demo output ---\n{demo.output[-8000:]}")
        for log in sorted((state / "logs").glob("*.log")) if (state / "logs").exists() else []:
            print(f"--- {log.name} ---\n{log.read_text(errors='replace')[-3000:]}")
        raise
    finally:
        demo.kill()
        remove_containers(docker_client, our_containers(docker_client, instance))


async def test_demo_embedded_consul(tmp_path, docker_client):
    """The README's first command, as is (own ports, network and state directory)."""
    network = f"{NAME_PREFIX}-demo-embedded"
    try:
        await drive(tmp_path, docker_client, mode="embedded")
    finally:
        network_rm(network)


async def test_demo_external_consul_l4(tmp_path, docker_client):
    """--consul URL (an agent that outlives the demo, so the test reads it after) and --l4."""
    network = f"{NAME_PREFIX}-demo-external"
    network_create(network)
    try:
        fake = FakeConsul(acl_master_token=MANAGEMENT_TOKEN, host=docker_network(network))
        with fake.start():
            await drive(tmp_path, docker_client, mode="external", external=fake, l7=False)
    finally:
        network_rm(network)


def test_state_dir_is_ignored_by_git():
    ignored = subprocess.run(
        ["git", "check-ignore", ".venv/", ".npm/", ".demo/"], cwd=REPO, capture_output=True, text=True
    ).stdout.split()
    assert ignored == [".venv/", ".npm/", ".demo/"]
