"""dev/consulspawner_dev/devsidecar.py as a real subprocess against a stub Consul agent."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from consulspawner_dev import devsidecar

SCRIPT = Path(devsidecar.__file__)
TOKEN = "5a1f7c2e-0d4b-4c39-9e8e-devsidecar-secret"
DEADLINE = 20.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sidecar_definition(service_id: str, public_port: int, upstreams: dict[str, int]) -> dict:
    """What Consul's agent answers for a sidecar registered through Connect.SidecarService."""
    return {
        "Kind": "connect-proxy",
        "ID": f"{service_id}-sidecar-proxy",
        "Service": f"{service_id}-sidecar-proxy",
        "Tags": [],
        "Meta": {},
        "Port": public_port,
        "Address": "",
        "TaggedAddresses": {},
        "Weights": {"Passing": 1, "Warning": 1},
        "EnableTagOverride": False,
        "Proxy": {
            "DestinationServiceName": service_id.split("-")[0],
            "DestinationServiceID": service_id,
            "LocalServiceAddress": "127.0.0.1",
            "LocalServicePort": 8888,
            "Mode": "",
            "MeshGateway": {},
            "Expose": {},
            "Upstreams": [
                {
                    "DestinationType": "service",
                    "DestinationName": name,
                    "LocalBindAddress": "127.0.0.1",
                    "LocalBindPort": port,
                    "MeshGateway": {},
                }
                for name, port in upstreams.items()
            ],
        },
        "Datacenter": "dc1",
    }


class StubAgent:
    """A thread serving /v1/agent/service/<id> with hash-based blocking, recording requests."""

    def __init__(self):
        self.services: dict[str, dict] = {}
        self.requests: list[dict] = []
        self.cond = threading.Condition()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                url = urllib.parse.urlsplit(self.path)
                query = urllib.parse.parse_qs(url.query)
                with stub.cond:
                    stub.requests.append(
                        {"path": self.path, "token": self.headers.get("X-Consul-Token"), "query": query}
                    )
                    service_id = urllib.parse.unquote(url.path.removeprefix("/v1/agent/service/"))
                    if "hash" in query:
                        wait = min(float(query.get("wait", ["5s"])[0].rstrip("s")), 5.0)
                        stub.cond.wait_for(lambda: stub.content_hash(service_id) != query["hash"][0], timeout=wait)
                    definition = stub.services.get(service_id)
                if not url.path.startswith("/v1/agent/service/") or definition is None:
                    self.send_error(404, "unknown service ID")
                    return
                body = json.dumps({**definition, "ContentHash": stub.content_hash(service_id)}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("X-Consul-ContentHash", stub.content_hash(service_id))
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.addr = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def content_hash(self, service_id: str) -> str:
        definition = self.services.get(service_id)
        return hashlib.sha256(json.dumps(definition, sort_keys=True).encode()).hexdigest()[:16]

    def register(self, definition: dict) -> None:
        with self.cond:
            self.services[definition["ID"]] = definition
            self.cond.notify_all()

    def close(self) -> None:
        with self.cond:
            self.cond.notify_all()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def agent():
    stub = StubAgent()
    yield stub
    stub.close()


@pytest.fixture
def run_sidecar(tmp_path):
    procs = []

    def start(*args: str, env: dict | None = None) -> subprocess.Popen:
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("CONSUL_")}
        full_env.update(env or {})
        proc = subprocess.Popen(
            [sys.executable, str(SCRIPT), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=full_env,
        )
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=DEADLINE)


def http_get(port: int, deadline: float = DEADLINE) -> dict:
    """GET / on 127.0.0.1:port, retrying until the listener answers or the deadline passes."""
    end = time.monotonic() + deadline
    last: Exception | None = None
    while time.monotonic() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                s.sendall(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
                data = b""
                while chunk := s.recv(4096):
                    data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200"), head
            return json.loads(body)
        except (OSError, ValueError) as e:
            last = e
            time.sleep(0.05)
    raise AssertionError(f"nothing answered on 127.0.0.1:{port} within {deadline}s: {last!r}")


def wait_closed(port: int, deadline: float = DEADLINE) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            return
        time.sleep(0.05)
    raise AssertionError(f"127.0.0.1:{port} still accepts connections after {deadline}s")


def stop(proc: subprocess.Popen) -> tuple[int, str, str]:
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=DEADLINE)
    return proc.returncode, out, err


@pytest.mark.parametrize("token_source", ["flag", "env-file", "env"])
def test_listeners_answer_and_token_stays_in_header(agent, run_sidecar, tmp_path, token_source):
    public, upstream = free_port(), free_port()
    agent.register(sidecar_definition("jupyter-alice", public, {"postgres": upstream}))
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    args = ["-sidecar-for", "jupyter-alice", "-http-addr", agent.addr]
    env = {}
    if token_source == "flag":
        args += ["-token-file", str(token_file)]
    elif token_source == "env-file":
        env["CONSUL_HTTP_TOKEN_FILE"] = str(token_file)
    else:
        env["CONSUL_HTTP_TOKEN"] = TOKEN
    proc = run_sidecar(*args, env=env)

    assert http_get(public) == {
        "sidecar": "jupyter-alice-sidecar-proxy",
        "listener": "public",
        "port": public,
        "service": "jupyter",
    }
    assert http_get(upstream) == {
        "sidecar": "jupyter-alice-sidecar-proxy",
        "listener": "upstream",
        "port": upstream,
        "upstream": "postgres",
    }
    # A bare TCP probe, as Consul's TCP check does it, must not disturb the listener.
    socket.create_connection(("127.0.0.1", public), timeout=2).close()
    assert http_get(public)["listener"] == "public"

    rc, out, err = stop(proc)
    assert rc == 0, err
    assert agent.requests, "the sidecar never asked the agent"
    for request in agent.requests:
        assert request["path"].startswith("/v1/agent/service/jupyter-alice-sidecar-proxy")
        assert request["token"] == TOKEN
        assert TOKEN not in request["path"]
    assert TOKEN not in out and TOKEN not in err
    assert f"public jupyter on 0.0.0.0:{public}" in err
    assert f"upstream postgres on 127.0.0.1:{upstream}" in err
    wait_closed(public)
    wait_closed(upstream)


def test_proxy_id_and_env_addr_with_scheme(agent, run_sidecar):
    public = free_port()
    agent.register(sidecar_definition("web", public, {}))
    proc = run_sidecar("-proxy-id", "web-sidecar-proxy", env={"CONSUL_HTTP_ADDR": f"http://{agent.addr}"})
    assert http_get(public)["sidecar"] == "web-sidecar-proxy"
    rc, _, err = stop(proc)
    assert rc == 0, err
    assert all(r["token"] is None for r in agent.requests)


def test_follows_registration_changes(agent, run_sidecar):
    public, first, second = free_port(), free_port(), free_port()
    agent.register(sidecar_definition("jupyter-bob", public, {"postgres": first}))
    proc = run_sidecar("-sidecar-for", "jupyter-bob", "-http-addr", agent.addr, "-refresh", "2")
    assert http_get(first)["upstream"] == "postgres"

    agent.register(sidecar_definition("jupyter-bob", public, {"redis": second}))
    assert http_get(second)["upstream"] == "redis"
    wait_closed(first)
    assert http_get(public)["listener"] == "public"

    rc, _, err = stop(proc)
    assert rc == 0, err
    assert any("hash" in r["query"] for r in agent.requests), "no blocking query was made"


def test_exits_nonzero_when_registration_never_appears(agent, run_sidecar):
    proc = run_sidecar("-sidecar-for", "ghost", "-http-addr", agent.addr, "-register-timeout", "1.5")
    _, err = proc.communicate(timeout=DEADLINE)
    assert proc.returncode == 1
    assert "ghost-sidecar-proxy not found within 1.5s" in err
    assert len(agent.requests) >= 2, "the sidecar did not retry"


def test_exits_nonzero_when_agent_unreachable(run_sidecar):
    port = free_port()  # nothing listens there
    proc = run_sidecar("-sidecar-for", "x", "-http-addr", f"127.0.0.1:{port}", "-register-timeout", "1")
    _, err = proc.communicate(timeout=DEADLINE)
    assert proc.returncode == 1
    assert "cannot reach the agent" in err


def test_public_port_taken_is_a_clear_failure(agent, run_sidecar):
    with socket.socket() as busy:
        busy.bind(("0.0.0.0", 0))
        busy.listen()
        port = busy.getsockname()[1]
        agent.register(sidecar_definition("busy", port, {}))
        proc = run_sidecar("-sidecar-for", "busy", "-http-addr", agent.addr, "-register-timeout", "5")
        _, err = proc.communicate(timeout=DEADLINE)
    assert proc.returncode == 1
    assert f"cannot listen on 0.0.0.0:{port}" in err


def test_sigterm_while_waiting_for_registration_is_clean(agent, run_sidecar):
    proc = run_sidecar("-sidecar-for", "later", "-http-addr", agent.addr, "-register-timeout", "60")
    end = time.monotonic() + DEADLINE
    while not agent.requests and time.monotonic() < end:
        time.sleep(0.05)
    assert agent.requests, "the sidecar never asked the agent"
    start = time.monotonic()
    rc, _, err = stop(proc)
    assert rc == 0, err
    assert time.monotonic() - start < 10


def test_requires_a_service_id(run_sidecar):
    proc = run_sidecar()
    _, err = proc.communicate(timeout=DEADLINE)
    assert proc.returncode == 2
    assert "-sidecar-for" in err


@pytest.mark.parametrize(
    ("addr", "url"),
    [
        ("consul:8500", "http://consul:8500"),
        ("http://10.0.0.1:8500/", "http://10.0.0.1:8500"),
        ("https://consul.example:8501", "https://consul.example:8501"),
    ],
)
def test_normalize_http_addr(addr, url):
    assert devsidecar.normalize_http_addr(addr) == url


def test_listener_specs_defaults_and_skips_socket_upstreams():
    definition = sidecar_definition("web", 21000, {"db": 9191})
    definition["Proxy"]["Upstreams"][0].pop("LocalBindAddress")
    definition["Proxy"]["Upstreams"].append(
        {"DestinationType": "service", "DestinationName": "cache", "LocalBindSocketPath": "/tmp/cache.sock"}
    )
    assert devsidecar.listener_specs(definition) == {
        devsidecar.ListenerSpec("public", "0.0.0.0", 21000, "web"),
        devsidecar.ListenerSpec("upstream", "127.0.0.1", 9191, "db"),
    }
