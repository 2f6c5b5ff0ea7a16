"""The demo's launcher (run by scripts/demo.sh inside the project's .venv, images built).

Runs the whole system on this machine, each part as its own process (in a session of its own, so
Ctrl-C reaches this launcher alone and it can stop things in order):

- Consul: the in-repo fake agent (consulspawner_dev.fakeconsul) with ACLs on, default deny,
  on the Docker network's gateway so containers reach it; or, with ``--consul URL``, a real
  agent, bootstrapped with the token in $CONSUL_HTTP_TOKEN_FILE.
- ACL: a policy and a token for the hub (docker/consul/hub-policy.hcl) and for the janitor
  (docker/consul/janitor-policy.hcl); each secret only in a 0600 file under <state>/secrets/.
- Trino: the stand-in (consulspawner_dev.trinostandin) on 127.0.0.1, registered as
  trino-coordinator with a Connect sidecar: the Connect proxy stand-in, on the gateway.
- JupyterHub (jupyterhub_config/jupyterhub_config.py) with ConsulSpawner, the connectproxy image
  as every server's sidecar, configurable-http-proxy, jupyterhub-idle-culler and the janitor
  as hub services; JupyterHub's shared-password login with an admin user.

On SIGINT or SIGTERM: every server is stopped through the hub's API (ConsulSpawner revokes,
deregisters and deletes), the hub stops, one janitor pass runs, then a sweep removes whatever
still carries this hub's marker (containers by label, services, tokens, intention sources),
then the demo's own objects (Trino's registration, the tokens and policies, the L7
service-defaults entry) and processes. It prints what it found, and exits 1 if anything is
left.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HUB_CONFIG = REPO / "jupyterhub_config" / "jupyterhub_config.py"
POLICIES = REPO / "docker" / "consul"
LABEL = "org.jupyter.consulspawner"
TRINO = "trino-coordinator"
UPSTREAM_PORT = 28080  # ConsulSpawner's default upstream to trino-coordinator
SIDECAR_COMMAND = ["connectproxy", "-sidecar-for", "{service_id}", "-token-file", "{token_file}"]
EXAMPLE = "trino-example.ipynb"


def say(message: str) -> None:
    print(f"demo: {message}", file=sys.stderr, flush=True)


class DemoError(Exception):
    pass


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    env = os.environ.get
    parser = argparse.ArgumentParser(
        prog="bash scripts/demo.sh",
        description="JupyterHub + ConsulSpawner, a dev Consul agent and a Trino stand-in on this machine. "
        "Ctrl-C stops everything and leaves nothing behind.",
    )
    parser.add_argument(
        "--consul",
        metavar="URL",
        default=env("CONSULSPAWNER_DEMO_CONSUL"),
        help="use this Consul agent instead of the embedded dev agent; its token (to create the hub's and "
        "the janitor's tokens and policies, register Trino, write config entries) comes from the file "
        "$CONSUL_HTTP_TOKEN_FILE [$CONSULSPAWNER_DEMO_CONSUL]",
    )
    parser.add_argument(
        "--sidecar-consul",
        metavar="URL",
        default=env("CONSULSPAWNER_DEMO_SIDECAR_CONSUL"),
        help="the --consul agent's address as containers reach it (default: the --consul URL)",
    )
    parser.add_argument(
        "--l4",
        action="store_true",
        default=bool(env("CONSULSPAWNER_DEMO_L4")),
        help="L4 intentions instead of the default L7: any connection from a server is allowed, and "
        "the Trino user is whatever its client sends (trusts the notebook) [$CONSULSPAWNER_DEMO_L4=1]",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=int(env("CONSULSPAWNER_DEMO_PORT", "8000")),
        help="JupyterHub's public port on 127.0.0.1 (default 8000) [$CONSULSPAWNER_DEMO_PORT]",
    )
    parser.add_argument(
        "--consul-port",
        type=int,
        default=int(env("CONSULSPAWNER_DEMO_CONSUL_PORT", "8500")),
        help="the embedded agent's port on the Docker gateway (default 8500; 0: any free port) "
        "[$CONSULSPAWNER_DEMO_CONSUL_PORT]",
    )
    parser.add_argument(
        "--network",
        default=env("CONSULSPAWNER_DEMO_NETWORK", "consulspawner-demo"),
        help="Docker network of the notebooks, created if absent (default consulspawner-demo) "
        "[$CONSULSPAWNER_DEMO_NETWORK]",
    )
    parser.add_argument(
        "--hub-instance",
        default=env("CONSULSPAWNER_DEMO_HUB_INSTANCE", "demo"),
        help="ConsulSpawner.hub_instance: marks everything this hub writes (default demo) "
        "[$CONSULSPAWNER_DEMO_HUB_INSTANCE]",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=Path(env("CONSULSPAWNER_DEMO_STATE_DIR", str(REPO / ".demo"))),
        help="secrets (0600 files), the hub's database, logs (default .demo/) [$CONSULSPAWNER_DEMO_STATE_DIR]",
    )
    parser.add_argument("--admin-user", default=env("CONSULSPAWNER_DEMO_ADMIN", "admin"), help="default admin")
    parser.add_argument(
        "--cull-timeout",
        type=int,
        default=int(env("CONSULSPAWNER_DEMO_CULL_TIMEOUT", "3600")),
        help="jupyterhub-idle-culler stops servers idle this many seconds (default 3600)",
    )
    return parser.parse_args(argv)


# ----------------------------------------------------------------------------------- helpers
def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def write_secret(path: Path, value: str) -> None:
    """A file only its owner can read, created with that mode (never briefly looser)."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")


def wait_until(condition, timeout: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise DemoError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def docker(*args: str, check: bool = True) -> str:
    result = subprocess.run(["docker", *args], capture_output=True, text=True)
    if check and result.returncode != 0:
        raise DemoError(f"docker {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout.strip()


class HTTPError(Exception):
    def __init__(self, status: int, text: str, what: str):
        super().__init__(f"{what}: {status} {text[:300]}")
        self.status = status


def http(method: str, url: str, body=None, headers: dict | None = None, timeout: float = 15.0):
    """(status, parsed body); raises HTTPError for 4xx/5xx, OSError when nothing answers."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            raw = response.read()
            status = response.status
    except urllib.error.HTTPError as e:
        raise HTTPError(e.code, e.read().decode(errors="replace"), f"{method} {url.split('?')[0]}") from None
    text = raw.decode(errors="replace")
    try:
        return status, json.loads(text) if text.strip() else None
    except json.JSONDecodeError:
        return status, text


class Consul:
    """The HTTP API with one token (the bootstrap/management token: only this launcher holds it)."""

    def __init__(self, url: str, token: str):
        self.url = url.rstrip("/")
        self.token = token

    def __call__(self, method: str, path: str, body=None, ok=()):
        try:
            return http(method, self.url + path, body, {"X-Consul-Token": self.token})[1]
        except HTTPError as e:
            if e.status in ok:
                return None
            raise

    def answers(self) -> bool:
        try:
            return bool(self("GET", "/v1/status/leader"))
        except (OSError, HTTPError):
            return False


class Process:
    """A child in a session of its own, logging to a file."""

    def __init__(self, name: str, argv: list[str], log: Path, env: dict | None = None, cwd: Path | None = None):
        self.name, self.log = name, log
        with open(log, "wb") as out:
            self.popen = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=cwd,
                start_new_session=True,
            )

    def alive(self) -> bool:
        return self.popen.poll() is None

    def check(self) -> None:
        if not self.alive():
            raise DemoError(
                f"{self.name} exited ({self.popen.returncode}); last lines of {self.log}:\n{tail(self.log)}"
            )

    def stop(self, timeout: float = 30.0) -> None:
        if self.popen.poll() is not None:
            return
        try:
            os.killpg(self.popen.pid, signal.SIGTERM)
            self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            say(f"{self.name} did not stop within {timeout:g}s: killing it")
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(timeout=10)
        except ProcessLookupError:
            pass


# ----------------------------------------------------------------------------------- the demo
class Demo:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.instance = args.hub_instance
        self.state = args.state_dir.resolve()
        self.secrets = self.state / "secrets"
        self.logs = self.state / "logs"
        self.audit_log = self.logs / "audit.log"  # the hub's audit trail (consulspawner.audit)
        self.hubdir = self.state / "hub"
        self.processes: list[Process] = []
        self.undo: list[tuple[str, object]] = []  # (what, callable), run in reverse
        self.consul: Consul | None = None
        self.consul_url = ""
        self.sidecar_consul_url = ""
        self.hub: Process | None = None
        self.hub_url = f"http://127.0.0.1:{args.port}"
        self.api_token = secrets.token_hex(24)
        self.network_created = False
        self.gateway = ""
        self.problems: list[str] = []
        self.started = False
        self.failed = False  # the demo could not start: exit 1 after cleaning up

    # -- setup ----------------------------------------------------------------------------------
    def prepare_dirs(self) -> None:
        for directory in (self.state, self.secrets, self.logs):
            directory.mkdir(parents=True, exist_ok=True)
            directory.chmod(0o700)
        self.lock = open(self.state / "lock", "w")  # held until this process exits
        try:
            fcntl.flock(self.lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DemoError(f"another demo runs with the state directory {self.state}") from None
        if not port_free("127.0.0.1", self.args.port):
            raise DemoError(f"port {self.args.port} is in use: pass --port N (or set CONSULSPAWNER_DEMO_PORT)")
        # A fresh hub every run: the last run stopped every server, so nothing in it is needed.
        shutil.rmtree(self.hubdir, ignore_errors=True)
        self.hubdir.mkdir(mode=0o700)
        self.started = True  # from here on, what this hub instance left is this run's to clean
        for variable in ("CONSULSPAWNER_NOTEBOOK_IMAGE", "CONSULSPAWNER_PROXY_IMAGE"):
            if not os.environ.get(variable):
                raise DemoError(f"${variable} is not set: run the demo as bash scripts/demo.sh")
        if not shutil.which("configurable-http-proxy"):
            raise DemoError("configurable-http-proxy is not on PATH: run the demo as bash scripts/demo.sh")

    def network(self) -> None:
        name = self.args.network
        if subprocess.run(["docker", "network", "inspect", name], capture_output=True).returncode != 0:
            docker("network", "create", "--label", f"{LABEL}.demo={self.instance}", name)
            self.network_created = True
            say(f"created the Docker network {name}")
        self.gateway = docker("network", "inspect", "-f", "{{(index .IPAM.Config 0).Gateway}}", name)
        if not self.gateway:
            raise DemoError(f"the Docker network {name} has no IPv4 gateway")
        # A run that was killed (not stopped) may have left containers; their Consul is gone.
        stale = docker("ps", "-aq", "--filter", f"label={LABEL}.hub-instance={self.instance}").split()
        if stale:
            say(f"removing {len(stale)} container(s) a killed run of hub {self.instance!r} left")
            docker("rm", "-f", *stale, check=False)

    def start_consul(self) -> None:
        if self.args.consul:
            token_file = os.environ.get("CONSUL_HTTP_TOKEN_FILE")
            if not token_file:
                raise DemoError(
                    "--consul needs $CONSUL_HTTP_TOKEN_FILE: a file with a token that may create ACL "
                    "policies and tokens, register services and write config entries"
                )
            token = Path(token_file).read_text().strip()
            self.consul_url = self.args.consul.rstrip("/")
            if "://" not in self.consul_url:
                self.consul_url = "http://" + self.consul_url
            self.sidecar_consul_url = self.args.sidecar_consul or self.consul_url
            self.consul = Consul(self.consul_url, token)
            if not self.consul.answers():
                raise DemoError(f"no Consul agent answers at {self.consul_url}")
            say(f"using the Consul agent at {self.consul_url}")
            return
        port = self.args.consul_port
        if port == 0 or not port_free(self.gateway, port):
            if port:
                say(f"port {port} on {self.gateway} is in use: the dev Consul agent takes a free one")
            port = free_port(self.gateway)
        management = self.secrets / "management-token"
        token = str(uuid.uuid4())
        write_secret(management, token)
        self.consul_url = self.sidecar_consul_url = f"http://{self.gateway}:{port}"
        process = self.spawn(
            "the dev Consul agent",
            [
                sys.executable,
                "-m",
                "consulspawner_dev.fakeconsul",
                "--host",
                self.gateway,
                "--port",
                str(port),
                "--acl-master-token-file",
                str(management),
            ],
            "consul.log",
        )
        self.consul = Consul(self.consul_url, token)
        wait_until(lambda: process.check() or self.consul.answers(), 30, "the dev Consul agent")
        say(f"dev Consul agent (the in-repo fake, ACLs on, default deny) at {self.consul_url}")

    def spawn(self, name: str, argv: list[str], log: str, **kw) -> Process:
        process = Process(name, argv, self.logs / log, **kw)
        self.processes.append(process)
        return process

    def acl_token(self, role: str) -> Path:
        """A policy from docker/consul/<role>-policy.hcl and a token of it, in a 0600 file."""
        consul = self.consul
        name = f"consulspawner-{self.instance}-{role}"
        rules = (POLICIES / f"{role}-policy.hcl").read_text()
        existing = consul("GET", f"/v1/acl/policy/name/{name}", ok=(403, 404))
        body = {"Name": name, "Rules": rules, "Description": f"consulspawner demo {self.instance}: the {role}"}
        if existing:
            policy = consul("PUT", f"/v1/acl/policy/{existing['ID']}", body)
        else:
            policy = consul("PUT", "/v1/acl/policy", body)
        self.undo.append((f"policy {name}", lambda: consul("DELETE", f"/v1/acl/policy/{policy['ID']}", ok=(404,))))
        token = consul(
            "PUT",
            "/v1/acl/token",
            {
                "Description": f"consulspawner demo {self.instance}: the {role}",
                "Policies": [{"Name": name}],
            },
        )
        accessor = token["AccessorID"]
        self.undo.append((f"the {role}'s token", lambda: consul("DELETE", f"/v1/acl/token/{accessor}", ok=(404,))))
        path = self.secrets / f"{role}-token"
        write_secret(path, token["SecretID"])
        return path

    def hub_identity(self) -> Path:
        """The operator's one acl:write step (here with the demo's management token): the hub's
        JWT signing key (0600), the JWT auth method holding its public key, and the binding rule
        that turns a hub-signed JWT into a token of one jupyter-* service (README, security
        model). Deleting the auth method at the end deletes its rule and every login token."""
        from consulspawner import identity
        from consulspawner_dev.bootstrap import write_signing_key

        consul = self.consul
        key_file = Path(write_signing_key(self.secrets / "hub-jwt-key.pem"))
        name = f"consulspawner-{self.instance}"
        signer = identity.Signer.from_file(str(key_file))
        method = identity.auth_method(
            name, hub_instance=self.instance, audience="consul", public_pem=signer.public_pem(), token_lifetime=3600
        )
        if consul("GET", f"/v1/acl/auth-method/{name}", ok=(403, 404)):
            consul("PUT", f"/v1/acl/auth-method/{name}", method)
        else:
            consul("PUT", "/v1/acl/auth-method", method)
        self.undo.append((f"auth method {name}", lambda: consul("DELETE", f"/v1/acl/auth-method/{name}", ok=(404,))))
        consul(
            "PUT", "/v1/acl/binding-rule", identity.binding_rule(name, hub_instance=self.instance, prefix="jupyter-")
        )
        self.auth_method = name
        return key_file

    def start_trino(self) -> None:
        consul = self.consul
        app_port = free_port()
        public_port = free_port(self.gateway)
        trino = self.spawn(
            "the Trino stand-in",
            [
                sys.executable,
                "-m",
                "consulspawner_dev.trinostandin",
                "--host",
                "127.0.0.1",
                "--port",
                str(app_port),
                # As docker/stack/trino: the sidecar adds x-forwarded-* headers, Trino ignores them.
                "--process-forwarded",
                "ignore",
            ],
            "trino.log",
        )
        service_id = f"{TRINO}-{self.instance}"
        consul(
            "PUT",
            "/v1/agent/service/register",
            {
                "ID": service_id,
                "Name": TRINO,
                "Address": "127.0.0.1",
                "Port": app_port,
                "Meta": {"consulspawner-demo": self.instance},
                # Consul's default sidecar checks, but every second rather than every 10 s, so
                # trino-coordinator is healthy (and reachable through the mesh) right away.
                "Connect": {
                    "SidecarService": {
                        "Address": self.gateway,
                        "Port": public_port,
                        "Checks": [
                            {
                                "Name": "Connect Sidecar Listening",
                                "TCP": f"{self.gateway}:{public_port}",
                                "Interval": "1s",
                            },
                            {"Name": "Connect Sidecar Aliasing", "AliasService": service_id},
                        ],
                    }
                },
            },
        )
        self.undo.append(
            (f"service {service_id}", lambda: consul("PUT", f"/v1/agent/service/deregister/{service_id}", ok=(404,)))
        )
        token = consul(
            "PUT",
            "/v1/acl/token",
            {
                "Description": f"consulspawner demo {self.instance}: {TRINO}'s sidecar",
                "ServiceIdentities": [{"ServiceName": TRINO}],
            },
        )
        accessor = token["AccessorID"]
        self.undo.append((f"{TRINO}'s token", lambda: consul("DELETE", f"/v1/acl/token/{accessor}", ok=(404,))))
        token_file = self.secrets / "trino-proxy-token"
        write_secret(token_file, token["SecretID"])
        admin_socket = self.state / "trino-proxy.sock"
        proxy = self.spawn(
            f"{TRINO}'s Connect proxy",
            [
                sys.executable,
                "-m",
                "consulspawner_dev.connectproxy",
                "-sidecar-for",
                service_id,
                "-http-addr",
                self.consul_url,
                "-token-file",
                str(token_file),
                "-admin-socket",
                str(admin_socket),
            ],
            "trino-proxy.log",
        )

        def ready() -> bool:
            trino.check()
            proxy.check()
            result = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "consulspawner_dev.connectproxy",
                    "ready",
                    "-admin-socket",
                    str(admin_socket),
                ],
                capture_output=True,
            )
            return result.returncode == 0

        wait_until(ready, 60, f"{TRINO}'s Connect proxy to be ready", interval=0.3)
        wait_until(lambda: consul("GET", f"/v1/health/connect/{TRINO}?passing=1"), 60, f"{TRINO} to pass its checks")
        say(f"Trino stand-in on 127.0.0.1:{app_port}, behind its Connect proxy on {self.gateway}:{public_port}")

    def l7(self) -> None:
        consul = self.consul
        entry = consul("GET", f"/v1/config/service-defaults/{TRINO}", ok=(404,))
        if entry is not None:
            if (entry.get("Protocol") or "tcp") not in ("http", "http2", "grpc"):
                raise DemoError(
                    f"L7: service-defaults {TRINO} exists with protocol {entry.get('Protocol')!r}, "
                    "not http, and is not the demo's to change"
                )
            return
        consul(
            "PUT",
            "/v1/config?cas=0",
            {
                "Kind": "service-defaults",
                "Name": TRINO,
                "Protocol": "http",
                "Meta": {"consulspawner-demo": self.instance},
            },
        )
        self.undo.append(
            (f"service-defaults {TRINO}", lambda: consul("DELETE", f"/v1/config/service-defaults/{TRINO}", ok=(404,)))
        )
        say(f"L7: wrote service-defaults {TRINO} with protocol http")

    def start_hub(self, hub_token: Path, janitor_token: Path, jwt_key: Path) -> None:
        passwords = {"admin_password": secrets.token_urlsafe(24), "user_password": secrets.token_urlsafe(9)}
        self.passwords = passwords
        write_secret(self.secrets / "passwords.json", json.dumps(passwords))
        write_secret(self.secrets / "hub-api-token", self.api_token)
        # Nothing of Consul's secrets in the hub's environment (configurable-http-proxy inherits
        # it): the hub reads its token from a 0600 file, the janitor from another.
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CONSUL_HTTP_TOKEN", "CONSULSPAWNER_DEMO"))}
        env.update(
            {
                "CONSUL_HTTP_ADDR": self.consul_url,
                "CONSUL_HTTP_TOKEN_FILE": str(hub_token),
                "CONSULSPAWNER_JWT_KEY_FILE": str(jwt_key),
                "CONSULSPAWNER_JANITOR_TOKEN_FILE": str(janitor_token),
                "CONSULSPAWNER_SIDECAR_CONSUL_ADDR": self.sidecar_consul_url,
                "CONSULSPAWNER_NETWORK": self.args.network,
                "CONSULSPAWNER_HUB_IP": self.gateway,
                "CONSULSPAWNER_HUB_PORT": str(free_port(self.gateway)),
                "CONSULSPAWNER_PROXY_PORT": str(self.args.port),
                "CONSULSPAWNER_PROXY_API_PORT": str(free_port()),
                "CONSULSPAWNER_SIDECAR_IMAGE": os.environ["CONSULSPAWNER_PROXY_IMAGE"],
                "CONSULSPAWNER_SIDECAR_COMMAND": json.dumps(SIDECAR_COMMAND),
                "CONSULSPAWNER_HUB_INSTANCE": self.instance,
                "CONSULSPAWNER_INTENTION_MODE": "L7" if self.args.l7 else "L4",
                "CONSULSPAWNER_CULL_TIMEOUT": str(self.args.cull_timeout),
                "CONSULSPAWNER_CULL_EVERY": "60",
                "CONSULSPAWNER_ADMIN_USER": self.args.admin_user,
                "CONSULSPAWNER_PASSWORDS_FILE": str(self.secrets / "passwords.json"),
                "CONSULSPAWNER_ADMIN_SERVICE_TOKEN_FILE": str(self.secrets / "hub-api-token"),
                "CONSULSPAWNER_CLEANUP_SERVERS": "1",
                "CONSULSPAWNER_DEFAULT_URL": f"/lab/tree/{EXAMPLE}",
                # Timeouts that hold on a busy 2-core machine (images started cold, Envoy's
                # first xDS round, other work on the host): a spawn waits up to 90 s for its
                # sidecar, each Consul call up to 20 s, the notebook up to 120 s to answer,
                # the whole start up to 300 s (JupyterHub's defaults: 60 s and 30 s).
                "CONSULSPAWNER_START_TIMEOUT": "300",
                "CONSULSPAWNER_HTTP_TIMEOUT": "120",
                "CONSULSPAWNER_SIDECAR_READY_TIMEOUT": "90",
                "CONSULSPAWNER_CONSUL_REQUEST_TIMEOUT": "20",
                "CONSULSPAWNER_AUDIT_LOG": str(self.audit_log),
            }
        )
        env.pop("CONSULSPAWNER_ADMIN_SERVICE_TOKEN", None)
        self.hub = self.spawn(
            "JupyterHub",
            [sys.executable, "-m", "jupyterhub", "-f", str(HUB_CONFIG)],
            "jupyterhub.log",
            env=env,
            cwd=self.hubdir,
        )

        def answers() -> bool:
            self.hub.check()
            try:
                return self.hub_api("GET", "/users")[0] == 200
            except (OSError, HTTPError):
                return False

        wait_until(answers, 120, "JupyterHub to answer", interval=0.5)

    def hub_api(self, method: str, path: str, body=None):
        return http(method, f"{self.hub_url}/hub/api{path}", body, {"Authorization": f"token {self.api_token}"})

    def banner(self) -> None:
        mode = "L7" if self.args.l7 else "L4"
        secrets_dir = self.secrets
        if self.args.consul:
            consul_lines = [
                f"  Consul:          {self.consul_url} (yours; containers reach it at {self.sidecar_consul_url})",
            ]
        else:
            consul_lines = [
                f"  Consul:          {self.consul_url}  (dev agent: the in-repo fake, ACLs on, HTTP API, no UI)",
                f"  its token:       {secrets_dir / 'management-token'}  (management token, mode 0600), e.g.",
                f'                   curl -H "X-Consul-Token: $(cat {secrets_dir / "management-token"})" '
                f"{self.consul_url}/v1/agent/services",
            ]
        lines = [
            "",
            f"JupyterHub with ConsulSpawner is up: {self.hub_url}/",
            f"  admin login:     {self.args.admin_user} / {self.passwords['admin_password']}",
            f"  analyst login:   any other user name / {self.passwords['user_password']}",
            f"  hub API token:   log in, then {self.hub_url}/hub/token",
            f"  in your server:  open {EXAMPLE} and run it: 25 rows from {TRINO} through the sidecar's",
            f"                   upstream 127.0.0.1:{UPSTREAM_PORT} (mutual TLS, intention {mode})",
            *consul_lines,
            f"  hub's token:     {secrets_dir / 'hub-token'} (docker/consul/hub-policy.hcl); janitor's: "
            f"{secrets_dir / 'janitor-token'} (docker/consul/janitor-policy.hcl)",
            f"  hub's JWT key:   {secrets_dir / 'hub-jwt-key.pem'} (0600; servers' tokens come from login at "
            f"auth method consulspawner-{self.instance})",
            f"  intentions:      {mode}"
            + ("" if self.args.l7 else "; L4 trusts the notebook's X-Trino-User: re-run without --l4 for L7"),
            "  Trino:           a stand-in (dev/consulspawner_dev/trinostandin.py), not Trino",
            f"  logs:            {self.logs}/",
            f"  audit trail:     {self.audit_log} (one JSON line per grant, extension, revoke, token, teardown)",
            f'  metrics:         curl -H "Authorization: token $(cat {secrets_dir / "hub-api-token"})" '
            f"{self.hub_url}/hub/metrics | grep ^consulspawner_",
            f"  who can reach:   .venv/bin/consulspawner-reach --consul-address {self.consul_url} "
            f"--token-file {secrets_dir / 'janitor-token'}",
            "Ctrl-C stops every server, the hub and the rest, and removes every container, service, token and "
            "intention the demo made.",
            "",
        ]
        print("\n".join(lines), flush=True)

    # -- teardown -------------------------------------------------------------------------------
    def stop_servers(self) -> None:
        if self.hub is None or not self.hub.alive():
            return
        try:
            users = self.hub_api("GET", "/users")[1]
        except (OSError, HTTPError) as e:
            self.problems.append(f"could not list the hub's servers: {e}")
            return
        running = [(u["name"], name) for u in users for name in (u.get("servers") or {})]
        if not running:
            say("no server running")
            return
        say(
            f"stopping {len(running)} server(s) through the hub's API: "
            + ", ".join(f"{user}/{name}" for user, name in running)
        )
        for user, name in running:
            path = (
                f"/users/{urllib.parse.quote(user)}/servers/{urllib.parse.quote(name)}"
                if name
                else f"/users/{urllib.parse.quote(user)}/server"
            )
            try:
                self.hub_api("DELETE", path)
            except (OSError, HTTPError) as e:
                self.problems.append(f"stopping {user}/{name}: {e}")

        def all_stopped() -> bool:
            try:
                return not any(u.get("servers") for u in self.hub_api("GET", "/users")[1])
            except (OSError, HTTPError):
                return False

        try:
            wait_until(all_stopped, 180, "the servers to stop", interval=0.5)
            say("every server stopped")
        except DemoError as e:
            self.problems.append(str(e))

    def stop_hub(self) -> None:
        if self.hub is None:
            return
        self.hub.stop(timeout=90)  # cleanup_servers: the hub stops what is still running, then exits
        pid_file = self.hubdir / "jupyterhub-proxy.pid"
        try:
            pid = int(pid_file.read_text().strip())
            if b"configurable-http-proxy" in Path(f"/proc/{pid}/cmdline").read_bytes():
                os.kill(pid, signal.SIGTERM)
        except (OSError, ValueError):
            pass
        say("JupyterHub stopped")

    def janitor_pass(self) -> None:
        token_file = self.secrets / "janitor-token"
        if not token_file.exists():
            return
        env = {k: v for k, v in os.environ.items() if not k.startswith("CONSUL_HTTP_TOKEN")}
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "consulspawner.janitor",
                "--once",
                "--consul-address",
                self.consul_url,
                "--hub-instance",
                self.instance,
                "--token-file",
                str(token_file),
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        for line in result.stderr.splitlines():
            if "Pass done" in line or "Deleted" in line or "WARNING" in line or "ERROR" in line:
                say(f"janitor --once: {line.split(': ', 1)[-1]}")
        if result.returncode != 0:
            self.problems.append(f"consulspawner-janitor --once exited {result.returncode}: {result.stderr[-500:]}")

    def ours(self, description: str | None) -> bool:
        from consulspawner import ownership

        owner = ownership.parse(description)
        return owner is not None and owner.hub == self.instance

    def leftovers(self) -> dict[str, list[str]]:
        """Everything of this hub's that is still there: containers, services, tokens, sources."""
        from consulspawner import ownership

        found: dict[str, list[str]] = {"containers": [], "services": [], "tokens": [], "intentions": []}
        found["containers"] = [
            line
            for line in docker(
                "ps", "-a", "--filter", f"label={LABEL}.hub-instance={self.instance}", "--format", "{{.ID}} {{.Names}}"
            ).splitlines()
            if line
        ]
        if self.consul is None:
            return found
        services = self.consul("GET", "/v1/agent/services") or {}
        for service_id, service in services.items():
            meta = service.get("Meta") or {}
            if ownership.is_managed_service(service) and meta.get(ownership.META_HUB) == self.instance:
                found["services"].append(service_id)
        for service_id, service in services.items():  # their sidecars, whatever Meta they carry
            if (service.get("Proxy") or {}).get("DestinationServiceID") in found["services"]:
                if service_id not in found["services"]:
                    found["services"].append(service_id)
        # The servers' tokens: those made by login at this hub's auth method.
        method = getattr(self, "auth_method", f"consulspawner-{self.instance}")
        found["tokens"] = [
            t["AccessorID"]
            for t in self.consul("GET", f"/v1/acl/tokens?authmethod={method}", ok=(403, 404)) or []
            if t.get("AuthMethod") == method
        ]
        for entry in self.consul("GET", "/v1/config/service-intentions") or []:
            for source in entry.get("Sources") or []:
                if self.ours(source.get("Description")):
                    found["intentions"].append(f"{source['Name']} -> {entry['Name']}")
        return found

    def sweep(self) -> None:
        """Remove whatever still carries this hub's marker (nothing, when the hub stopped well)."""
        try:
            found = self.leftovers()
        except (OSError, HTTPError, DemoError) as e:
            self.problems.append(f"could not look for leftovers: {e}")
            return
        if not any(found.values()):
            say(f"sweep: nothing of hub {self.instance!r} left in Docker or Consul")
            return
        say("sweep: removing what the hub left: " + "; ".join(f"{k}: {', '.join(v)}" for k, v in found.items() if v))
        for line in found["containers"]:
            docker("rm", "-f", line.split()[0], check=False)
        consul = self.consul
        try:
            for service_id in found["services"]:
                consul("PUT", f"/v1/agent/service/deregister/{service_id}", ok=(404,))
            for accessor in found["tokens"]:
                consul("DELETE", f"/v1/acl/token/{accessor}", ok=(404,))
            for _ in range(10):  # CAS: another hub may write the same entry meanwhile
                if self._revoke_ours():
                    break
        except (OSError, HTTPError) as e:
            self.problems.append(f"sweep: {e}")

    def _revoke_ours(self) -> bool:
        consul = self.consul
        for entry in consul("GET", "/v1/config/service-intentions") or []:
            sources = entry.get("Sources") or []
            kept = [s for s in sources if not self.ours(s.get("Description"))]
            if len(kept) == len(sources):
                continue
            index = entry["ModifyIndex"]
            if kept:
                body = {k: v for k, v in entry.items() if k not in ("CreateIndex", "ModifyIndex", "Hash")}
                body["Sources"] = kept
                ok = consul("PUT", f"/v1/config?cas={index}", body)
            else:
                ok = consul("DELETE", f"/v1/config/service-intentions/{entry['Name']}?cas={index}")
                ok = ok is not False and not (isinstance(ok, dict) and ok.get("Deleted") is False)
            if not ok:
                return False
        return True

    def audit(self) -> None:
        try:
            found = self.leftovers()
        except (OSError, HTTPError, DemoError) as e:
            self.problems.append(f"could not check for leftovers: {e}")
            return
        if any(found.values()):
            self.problems.append("left behind: " + "; ".join(f"{k}: {', '.join(v)}" for k, v in found.items() if v))
        else:
            print(
                f"demo: clean: no container, service, token or intention of hub {self.instance!r} left "
                f"(Docker, Consul at {self.consul_url})",
                flush=True,
            )

    def teardown(self) -> int:
        if not self.started:
            return 1
        say("stopping")
        steps = [self.stop_servers, self.stop_hub, self.janitor_pass, self.sweep]
        for step in steps:
            try:
                step()
            except Exception as e:  # keep going: the later steps clean up what this one missed
                self.problems.append(f"{step.__name__}: {type(e).__name__}: {e}")
        for what, undo in reversed(self.undo):
            try:
                undo()
            except Exception as e:
                self.problems.append(f"removing {what}: {e}")
        self.undo.clear()
        self.audit()  # while Consul still runs: the embedded agent's state goes with it
        for process in reversed(self.processes):
            process.stop()
        if self.network_created:
            if subprocess.run(["docker", "network", "rm", self.args.network], capture_output=True).returncode:
                self.problems.append(f"could not remove the Docker network {self.args.network}")
            else:
                say(f"removed the Docker network {self.args.network}")
        for secret in self.secrets.glob("*"):
            secret.unlink(missing_ok=True)
        if self.problems:
            for problem in self.problems:
                say(f"PROBLEM: {problem}")
            say("stopped, with the problems above")
            return 1
        say("stopped; nothing left behind")
        return 1 if self.failed else 0

    # -- main -----------------------------------------------------------------------------------
    def run(self) -> int:
        stop = {"signal": None}

        def on_signal(signum, _frame):
            if stop["signal"] is None:
                stop["signal"] = signum
                raise KeyboardInterrupt

        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)
        try:
            self.prepare_dirs()
            self.network()
            self.start_consul()
            hub_token = self.acl_token("hub")
            janitor_token = self.acl_token("janitor")
            jwt_key = self.hub_identity()
            self.start_trino()
            if self.args.l7:
                self.l7()
            self.start_hub(hub_token, janitor_token, jwt_key)
            self.banner()
            while True:
                for process in self.processes:
                    process.check()
                time.sleep(1)
        except KeyboardInterrupt:
            pass
        except (DemoError, HTTPError, OSError) as e:
            say(f"ERROR: {e}")
            self.failed = True
        # No second interrupt may cut the cleanup short; it takes seconds, and says what it does.
        signal.signal(signal.SIGINT, lambda *_: say("still cleaning up, please wait"))
        signal.signal(signal.SIGTERM, lambda *_: say("still cleaning up, please wait"))
        return self.teardown()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.l7 = not args.l4  # L7 (only the user's own X-Trino-User) unless --l4
    return Demo(args).run()


if __name__ == "__main__":
    sys.exit(main())
