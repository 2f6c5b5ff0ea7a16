"""The Connect proxy stand-in against the fake Consul agent, with the Trino stand-in behind it.

Everything runs as host processes/threads on 127.0.0.1: the fake agent (ACLs on, default deny),
the Trino stand-in, and two proxies: ``trino-coordinator``'s sidecar (inbound) and
``jupyter-alice``'s sidecar (its upstream binds trino-coordinator on a local port). Each proxy
has its own token with only its service identity, as the spawner mints them.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import ssl
import stat
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

from consulspawner_dev import connectproxy
from consulspawner_dev.connectproxy import Agent, ConnectProxy, Request, evaluate, probe_ready
from consulspawner_dev.fakeconsul import FakeConsul
from consulspawner_dev.trinostandin import TrinoStandIn

from .conftest import MASTER_TOKEN

trino = pytest.importorskip("trino")

REAUTH = 1.0  # the proxies' re-authorization interval in these tests
DRAIN = 1.0  # their drain time (Envoy's --drain-time-s, 600 s by default)
DEADLINE = 30.0  # generous: the machine is shared


# ------------------------------------------------------------------------------------ helpers
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, what: str, timeout: float = DEADLINE, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval)


class Consul:
    """Plain HTTP on the fake agent with the management token."""

    def __init__(self, fake: FakeConsul):
        self.fake = fake

    def __call__(self, method: str, path: str, body=None, token: str = MASTER_TOKEN):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.fake.url + path, data=data, method=method)
        request.add_header("X-Consul-Token", token)
        with urllib.request.urlopen(request, timeout=10) as response:
            raw = response.read()
            return json.loads(raw) if raw.strip() else None

    def token_for(self, service: str) -> str:
        return self("PUT", "/v1/acl/token", {"ServiceIdentities": [{"ServiceName": service}]})["SecretID"]

    def allow(self, source: str = "jupyter-alice", destination: str = "trino-coordinator") -> None:
        entry = {"Kind": "service-intentions", "Name": destination, "Sources": [{"Name": source, "Action": "allow"}]}
        assert self("PUT", "/v1/config", entry) is True

    def allow_l7(self, user: str, source: str = "jupyter-alice", destination: str = "trino-coordinator") -> None:
        perm = {"Action": "allow", "HTTP": {"Header": [{"Name": "X-Trino-User", "Exact": user}]}}
        entry = {
            "Kind": "service-intentions",
            "Name": destination,
            "Sources": [{"Name": source, "Permissions": [perm]}],
        }
        assert self("PUT", "/v1/config", entry) is True

    def revoke(self, destination: str = "trino-coordinator") -> None:
        self("DELETE", f"/v1/config/service-intentions/{destination}")

    def http_protocol(self, service: str = "trino-coordinator") -> None:
        entry = {"Kind": "service-defaults", "Name": service, "Protocol": "http"}
        assert self("PUT", "/v1/config", entry) is True

    def healthy(self, service: str) -> list:
        return self("GET", f"/v1/health/connect/{service}?passing=1")


class Mesh:
    """The fake agent, Trino behind its sidecar, and alice's sidecar with an upstream to it."""

    def __init__(self, tmp_path):
        self.tmp = tmp_path
        self.fake = FakeConsul(acl_master_token=MASTER_TOKEN, host="127.0.0.1", check_interval_override=0.2).start()
        self.consul = Consul(self.fake)
        self.trino = TrinoStandIn(page_size=10, process_forwarded="ignore").start()  # as docker/stack/trino
        self.trino_public = free_port()
        self.alice_public = free_port()
        self.upstream = free_port()
        self.consul(
            "PUT",
            "/v1/agent/service/register",
            {
                "Name": "trino-coordinator",
                "Address": "127.0.0.1",
                "Port": self.trino.port,
                "Connect": {"SidecarService": {"Address": "127.0.0.1", "Port": self.trino_public}},
            },
        )
        self.consul(
            "PUT",
            "/v1/agent/service/register",
            {
                "Name": "jupyter-alice",
                "Address": "127.0.0.1",
                "Port": free_port(),
                "Connect": {
                    "SidecarService": {
                        "Address": "127.0.0.1",
                        "Port": self.alice_public,
                        "Proxy": {
                            "Upstreams": [
                                {
                                    "DestinationName": "trino-coordinator",
                                    "LocalBindAddress": "127.0.0.1",
                                    "LocalBindPort": self.upstream,
                                }
                            ]
                        },
                    }
                },
            },
        )
        self.tokens = {s: self.consul.token_for(s) for s in ("trino-coordinator", "jupyter-alice")}
        self.proxies: list[ConnectProxy] = []

    def proxy(self, service: str, **kw) -> ConnectProxy:
        agent = Agent(self.fake.url, self.tokens[service])
        proxy = ConnectProxy(
            agent,
            f"{service}-sidecar-proxy",
            admin_socket=str(self.tmp / f"{service}.sock"),
            reauthorize_interval=REAUTH,
            **{"drain_time": DRAIN, **kw},
        )
        self.proxies.append(proxy)
        return proxy.start(timeout=DEADLINE)

    def start_both(self) -> tuple[ConnectProxy, ConnectProxy]:
        server = self.proxy("trino-coordinator")
        client = self.proxy("jupyter-alice")
        wait_for(lambda: self.consul.healthy("trino-coordinator"), "the coordinator's sidecar to pass its checks")
        return server, client

    def trino_cursor(self, user: str = "alice"):
        return trino.dbapi.connect(
            host="127.0.0.1", port=self.upstream, user=user, max_attempts=1, request_timeout=10
        ).cursor()

    def close(self) -> None:
        for proxy in self.proxies:
            proxy.stop()
        self.trino.stop()
        self.fake.close()


@pytest.fixture
def mesh(tmp_path):
    m = Mesh(tmp_path)
    yield m
    m.close()


def http_get(port: int, path: str = "/v1/info", user: str = "alice", sock: socket.socket | None = None):
    """One keep-alive HTTP/1.1 request on ``sock`` (or a new connection); (status, body, sock)."""
    if sock is None:
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: trino\r\nX-Trino-User: {user}\r\n\r\n".encode())
    stream = connectproxy.Stream(sock)
    head = stream.head()
    if head is None:
        return None, b"", sock
    status_line, headers = connectproxy.parse_head(head)
    body = []
    framing, length = connectproxy.body_framing(headers)
    if framing == "length":
        stream.exactly(length, body.append)
    return int(status_line.split()[1]), b"".join(body), sock


def closed(sock: socket.socket) -> bool:
    """True once the peer has closed ``sock`` (EOF or reset); never blocks long."""
    sock.settimeout(0.05)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except OSError:
        return True


# ------------------------------------------------------------------------------------ L4
def test_trino_through_the_mesh_sees_the_analyst(mesh):
    mesh.consul.allow()
    server, _client = mesh.start_both()
    cur = mesh.trino_cursor("alice")
    cur.execute("SELECT * FROM tpch.tiny.nation")
    assert len(cur.fetchall()) == 25
    cur.execute("SELECT current_user")
    assert cur.fetchall() == [["alice"]]
    assert mesh.trino.users == ["alice", "alice"]
    assert server.counters["authorize"] >= 1 and server.counters["denied_connections"] == 0


def test_no_intention_refuses_the_connection(mesh):
    server, _client = mesh.start_both()
    cur = mesh.trino_cursor("alice")
    with pytest.raises(trino.exceptions.TrinoConnectionError):
        cur.execute("SELECT current_user")
    assert mesh.trino.queries == []
    assert server.counters["denied_connections"] >= 1
    # The connection is cut before any byte reaches Trino: the app sees EOF, no HTTP answer.
    status, _body, sock = http_get(mesh.upstream)
    sock.close()
    assert status is None


def test_revoking_the_intention_drains_then_closes_an_open_connection(mesh):
    """Envoy gets the changed intentions as a listener update and drains the connections of the
    old filter chain for --drain-time-s (DRAIN here), then closes them; new ones are refused."""
    mesh.consul.allow()
    server, _client = mesh.start_both()
    status, body, sock = http_get(mesh.upstream)
    try:
        assert status == 200 and json.loads(body)["coordinator"] is True
        status, _body, sock = http_get(mesh.upstream, sock=sock)  # the same connection, still open
        assert status == 200 and not closed(sock)
        wait_for(lambda: server.status()["open_inbound"] == 1, "the open connection to be tracked")
        mesh.consul.revoke()
        wait_for(lambda: closed(sock), "the revoked connection to close", timeout=REAUTH + DRAIN + 5.0)
    finally:
        sock.close()
    assert server.counters["drained"] >= 1
    assert server.counters["closed_on_reauthorize"] >= 1
    # ...and new connections are refused.
    status, _body, sock = http_get(mesh.upstream)
    sock.close()
    assert status is None


def test_a_draining_connection_keeps_serving_until_the_drain_time_ends(mesh):
    """Not kinder than Envoy, and not harsher: during the drain the open connection still works."""
    mesh.consul.allow()
    server = mesh.proxy("trino-coordinator", drain_time=DEADLINE * 10)
    mesh.proxy("jupyter-alice")
    wait_for(lambda: mesh.consul.healthy("trino-coordinator"), "the coordinator's sidecar to pass its checks")
    status, _body, sock = http_get(mesh.upstream)
    try:
        assert status == 200
        wait_for(lambda: server.status()["open_inbound"] == 1, "the open connection to be tracked")
        mesh.consul.revoke()
        wait_for(lambda: server.status()["draining"] == 1, "the revoked connection to be draining")
        status, _body, sock = http_get(mesh.upstream, sock=sock)
        assert status == 200
        new_status, _b, other = http_get(mesh.upstream)
        other.close()
        assert new_status is None
    finally:
        sock.close()


def test_periodic_reauthorization_without_an_intention_change(mesh):
    """The interval is the backstop when no intention change is seen (e.g. a missed watch)."""
    mesh.consul.allow()
    server, _client = mesh.start_both()
    status, _body, sock = http_get(mesh.upstream)
    try:
        assert status == 200
        wait_for(lambda: server.status()["open_inbound"] == 1, "the open connection to be tracked")
        before = server.counters["authorize"]
        wait_for(lambda: server.counters["authorize"] > before, "a periodic re-authorization", timeout=REAUTH * 3)
        assert not closed(sock)
    finally:
        sock.close()


def test_public_port_requires_a_mesh_certificate(mesh, tmp_path):
    mesh.consul.allow()
    mesh.start_both()
    # Plain TCP: the proxy expects a TLS handshake; nothing reaches Trino.
    with socket.create_connection(("127.0.0.1", mesh.trino_public), timeout=10) as plain:
        plain.sendall(b"GET /v1/info HTTP/1.1\r\nHost: x\r\nX-Trino-User: alice\r\n\r\n")
        assert wait_for(lambda: closed(plain), "the plain connection to be dropped")
    # TLS without a client certificate: the handshake (or the first read) fails.
    roots = mesh.consul("GET", "/v1/agent/connect/ca/roots")
    cadata = "".join(r["RootCert"] for r in roots["Roots"])
    ctx = ssl.create_default_context(cadata=cadata)
    ctx.check_hostname = False
    with pytest.raises((ssl.SSLError, OSError)):
        with ctx.wrap_socket(socket.create_connection(("127.0.0.1", mesh.trino_public), timeout=10)) as tls:
            tls.sendall(b"GET /v1/info HTTP/1.1\r\nHost: x\r\nX-Trino-User: alice\r\n\r\n")
            if tls.recv(1) == b"":
                raise OSError("closed")
    # A certificate naming jupyter-alice but from another cluster's CA: refused as well.
    with FakeConsul(host="127.0.0.1") as other:
        with urllib.request.urlopen(other.url + "/v1/agent/connect/ca/leaf/jupyter-alice", timeout=10) as r:
            foreign = json.load(r)
    cert, key = tmp_path / "foreign.pem", tmp_path / "foreign.key"
    cert.write_text(foreign["CertPEM"])
    key.write_text(foreign["PrivateKeyPEM"])
    ctx.load_cert_chain(str(cert), str(key))
    with pytest.raises((ssl.SSLError, OSError)):
        with ctx.wrap_socket(socket.create_connection(("127.0.0.1", mesh.trino_public), timeout=10)) as tls:
            tls.sendall(b"GET /v1/info HTTP/1.1\r\nHost: x\r\nX-Trino-User: alice\r\n\r\n")
            if tls.recv(1) == b"":
                raise OSError("closed")
    assert mesh.trino.queries == []


# ------------------------------------------------------------------------------------ L7
def test_l7_intention_allows_only_the_analysts_own_trino_user(mesh):
    mesh.consul.http_protocol()
    mesh.consul.allow_l7("alice")
    server, _client = mesh.start_both()
    assert server.protocol == "http"
    cur = mesh.trino_cursor("alice")
    cur.execute("SELECT * FROM tpch.tiny.nation")
    assert len(cur.fetchall()) == 25
    with pytest.raises(trino.exceptions.HttpError, match="403") as err:
        mesh.trino_cursor("bob").execute("SELECT current_user")
    assert "RBAC: access denied" in str(err.value)
    assert mesh.trino.users == ["alice"]
    assert server.counters["denied_requests"] >= 1
    # The same kept-alive connection: alice's request passes, bob's gets 403, alice's passes again.
    status, _b, sock = http_get(mesh.upstream, user="alice")
    try:
        assert status == 200
        status, body, sock = http_get(mesh.upstream, user="bob", sock=sock)
        assert (status, body) == (403, b"RBAC: access denied")
        status, _b, sock = http_get(mesh.upstream, user="alice", sock=sock)
        assert status == 200
        # Revoking: the next request on the open connection is denied by the default (deny).
        mesh.consul.revoke()
        wait_for(lambda: server.status()["intentions"] == 0, "the proxy to see the revocation")
        status, body, sock = http_get(mesh.upstream, user="alice", sock=sock)
        assert (status, body) == (403, b"RBAC: access denied")
    finally:
        sock.close()


def test_l7_switch_from_tcp_closes_l4_connections(mesh):
    """A protocol change re-plans the listener, as Envoy drains its filter chains."""
    mesh.consul.allow()
    server, _client = mesh.start_both()
    status, _b, sock = http_get(mesh.upstream)
    try:
        assert status == 200
        wait_for(lambda: server.status()["open_inbound"] == 1, "the open connection to be tracked")
        mesh.consul.http_protocol()
        wait_for(lambda: closed(sock), "the L4 connection to close after the switch to http")
    finally:
        sock.close()
    assert server.protocol == "http"
    status, _b, sock = http_get(mesh.upstream)  # the L4 allow intention still allows, per request now
    sock.close()
    assert status == 200


@pytest.mark.parametrize(
    ("perm", "request_", "allowed"),
    [
        ({"Header": [{"Name": "X-Trino-User", "Exact": "alice"}]}, ("GET", "/", {"X-Trino-User": "alice"}), True),
        ({"Header": [{"Name": "x-trino-user", "Exact": "alice"}]}, ("GET", "/", {"X-Trino-User": "bob"}), False),
        ({"Header": [{"Name": "X-Trino-User", "Exact": "alice"}]}, ("GET", "/", {}), False),
        ({"Header": [{"Name": "X-Trino-User", "Exact": "bob", "Invert": True}]}, ("GET", "/", {}), False),
        (
            {"Header": [{"Name": "X-Trino-User", "Exact": "bob", "Invert": True}]},
            ("GET", "/", {"X-Trino-User": "al"}),
            True,
        ),
        ({"Header": [{"Name": "X-A", "Present": True, "Invert": True}]}, ("GET", "/", {}), True),
        ({"Header": [{"Name": "X-A", "Prefix": "ab"}]}, ("GET", "/", {"X-A": "abc"}), True),
        ({"Header": [{"Name": "X-A", "Suffix": "bc"}]}, ("GET", "/", {"X-A": "abc"}), True),
        ({"Header": [{"Name": "X-A", "Regex": "a.c"}]}, ("GET", "/", {"X-A": "abcd"}), False),
        ({"PathExact": "/v1/info"}, ("GET", "/v1/info", {}), True),
        ({"PathPrefix": "/v1/statement"}, ("POST", "/v1/statement", {}), True),
        ({"PathRegex": "/v1/statement/.*"}, ("GET", "/v1/info", {}), False),
        ({"PathPrefix": "/v1/", "Methods": ["GET", "HEAD"]}, ("POST", "/v1/statement", {}), False),
        ({"PathPrefix": "/v1/", "Methods": ["GET", "POST"]}, ("POST", "/v1/statement", {}), True),
    ],
)
def test_l7_permission_matching(perm, request_, allowed):
    method, path, headers = request_
    ixn = {"SourceName": "jupyter-alice", "Precedence": 9, "Permissions": [{"Action": "allow", "HTTP": perm}]}
    got, _reason = evaluate([ixn], "jupyter-alice", Request(method, path, list(headers.items())), False)
    assert got is allowed


def test_l7_first_match_and_defaults():
    req = Request("GET", "/v1/info", [("X-Trino-User", "alice")])
    deny_then_allow = {
        "SourceName": "jupyter-alice",
        "Precedence": 9,
        "Permissions": [
            {"Action": "deny", "HTTP": {"PathPrefix": "/v1/info"}},
            {"Action": "allow", "HTTP": {"Header": [{"Name": "X-Trino-User", "Exact": "alice"}]}},
        ],
    }
    assert evaluate([deny_then_allow], "jupyter-alice", req, True)[0] is False
    wildcard_allow = {"SourceName": "*", "Precedence": 8, "Action": "allow"}
    only_post = {
        "SourceName": "jupyter-alice",
        "Precedence": 9,
        "Permissions": [{"Action": "allow", "HTTP": {"Methods": ["POST"]}}],
    }
    # alice's own L7 intention wins over the wildcard; no permission matches -> the default.
    assert evaluate([wildcard_allow, only_post], "jupyter-alice", req, False)[0] is False
    assert evaluate([wildcard_allow, only_post], "jupyter-bob", req, False)[0] is True
    assert evaluate([], "jupyter-alice", req, True)[0] is True
    # On a TCP service an L7 intention counts as deny.
    assert evaluate([only_post], "jupyter-alice", None, True)[0] is False


# ------------------------------------------------------------------------------------ certificates
@pytest.mark.parametrize("keep_old", [True, False], ids=["old-root-kept", "old-root-pruned"])
def test_rotated_root_keeps_the_mesh_working(mesh, keep_old):
    """FakeConsul.rotate_ca: a new root of the same trust domain, leaves re-issued. Kept, the old
    root cross-signs the new one (Consul's rotation); pruned, only a proxy that re-read both its
    roots and its leaf can still connect."""
    mesh.consul.allow()
    server, client = mesh.start_both()
    cur = mesh.trino_cursor("alice")
    cur.execute("SELECT current_user")
    assert cur.fetchall() == [["alice"]]
    old_leaves = {p.proxy_id: p.status()["leaf_index"] for p in (server, client)}
    status, _body, sock = http_get(mesh.upstream)  # a connection opened before the rotation
    assert status == 200
    new_root = mesh.fake.rotate_ca(keep_old=keep_old)
    for proxy in (server, client):
        wait_for(lambda p=proxy: p.status()["active_root_id"] == new_root, f"{proxy.proxy_id} to load the new root")
        wait_for(
            lambda p=proxy: p.status()["leaf_index"] != old_leaves[p.proxy_id], f"{proxy.proxy_id} to load a new leaf"
        )
    try:
        status, _body, sock = http_get(mesh.upstream, sock=sock)  # its session outlives the rotation
        assert status == 200
    finally:
        sock.close()
    cur = mesh.trino_cursor("alice")
    cur.execute("SELECT * FROM tpch.tiny.nation")
    assert len(cur.fetchall()) == 25
    assert len(server.status()["listeners"]) == 1  # nothing was restarted


# ------------------------------------------------------------------------------------ process
def listening_tcp_ports(pid: int) -> set[int]:
    """TCP ports in LISTEN state on sockets that process ``pid`` holds."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = open(table).read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: TCP_LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def run_proxy(mesh: Mesh, service: str, token: str, admin: str) -> subprocess.Popen:
    token_file = mesh.tmp / f"{service}.token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONSUL_")}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "consulspawner_dev.connectproxy",
            "-sidecar-for",
            service,
            "-token-file",
            str(token_file),
            "-http-addr",
            mesh.fake.url,
            "-admin-socket",
            admin,
            "-reauthorize-interval",
            str(REAUTH),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def ready_cli(admin: str) -> int:
    return subprocess.run(
        [sys.executable, "-m", "consulspawner_dev.connectproxy", "ready", "-admin-socket", admin],
        capture_output=True,
        timeout=30,
    ).returncode


def test_process_readiness_on_a_unix_socket_only_and_sigterm(mesh):
    mesh.consul.allow()
    admin = str(mesh.tmp / "alice-admin.sock")
    proc = run_proxy(mesh, "jupyter-alice", mesh.tokens["jupyter-alice"], admin)
    try:
        wait_for(lambda: ready_cli(admin) == 0 or proc.poll() is not None, "the proxy to be ready")
        assert proc.poll() is None
        assert probe_ready(admin) == (200, "LIVE")
        mode = os.stat(admin).st_mode
        assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
        # Only the public and the upstream listener are TCP; the admin endpoint is not.
        assert listening_tcp_ports(proc.pid) == {mesh.alice_public, mesh.upstream}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=DEADLINE) == 0
        assert not os.path.exists(admin)
        assert ready_cli(admin) == 1
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()


def test_refused_token_exits_non_zero(mesh):
    admin = str(mesh.tmp / "bad.sock")
    proc = run_proxy(mesh, "jupyter-alice", "00000000-1111-4222-8333-444444444444", admin)
    try:
        assert proc.wait(timeout=DEADLINE) == 1
        assert b"ACL not found" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()


def test_token_deleted_while_running_stops_the_proxy(mesh):
    _server, client = mesh.start_both()
    accessor = mesh.consul("GET", "/v1/acl/token/self", token=mesh.tokens["jupyter-alice"])["AccessorID"]
    mesh.consul("DELETE", f"/v1/acl/token/{accessor}")
    # Wake the watches: any change they follow makes them re-ask the agent with the dead token.
    mesh.consul.allow()
    assert client.stopped.wait(DEADLINE)
    assert client.exit_code == 1
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", mesh.upstream), timeout=2).close()


def test_waits_for_readiness_until_listeners_and_certificates(mesh):
    proxy = ConnectProxy(
        Agent(mesh.fake.url, mesh.tokens["jupyter-alice"]),
        "jupyter-alice-sidecar-proxy",
        admin_socket=str(mesh.tmp / "early.sock"),
    )
    assert proxy.state == "PRE_INITIALIZING"
    mesh.proxies.append(proxy)
    proxy.start(timeout=DEADLINE)
    assert probe_ready(str(mesh.tmp / "early.sock"))[0] == 200
    proxy.stop()
    assert probe_ready(str(mesh.tmp / "early.sock"))[0] == 0


# ------------------------------------------------------------------------------------ CLI
# What the retired placeholder sidecar (devsidecar) was tested for, now on the one dev sidecar.
def run_cli(*args: str, env: dict | None = None) -> subprocess.Popen:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("CONSUL_")}
    full_env.update(env or {})
    return subprocess.Popen(
        [sys.executable, "-m", "consulspawner_dev.connectproxy", *args],
        env=full_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen) -> tuple[int, str]:
    try:
        _, err = proc.communicate(timeout=DEADLINE)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return proc.returncode, err


@pytest.mark.parametrize("source", ["flag", "env-file", "env"])
def test_token_from_flag_then_env_file_then_env(tmp_path, monkeypatch, source):
    secret = "5a1f7c2e-0d4b-4c39-9e8e-0123456789ab"
    path = tmp_path / "token"
    path.write_text(secret + "\n")
    for name in ("CONSUL_HTTP_TOKEN_FILE", "CONSUL_HTTP_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    if source == "env-file":
        monkeypatch.setenv("CONSUL_HTTP_TOKEN_FILE", str(path))
        monkeypatch.setenv("CONSUL_HTTP_TOKEN", "not-this-one")
    elif source == "env":
        monkeypatch.setenv("CONSUL_HTTP_TOKEN", secret)
    assert connectproxy.read_token(str(path) if source == "flag" else None) == secret


@pytest.mark.parametrize(
    ("addr", "url"),
    [
        ("consul:8500", "http://consul:8500"),
        ("http://10.0.0.1:8500/", "http://10.0.0.1:8500"),
        ("https://consul.example:8501", "https://consul.example:8501"),
    ],
)
def test_agent_address_forms(addr, url):
    assert Agent(addr).base == url


def test_listener_specs_defaults_and_skips_socket_upstreams():
    registration = {
        "Port": 21000,
        "Proxy": {
            "Upstreams": [
                {"DestinationName": "db", "LocalBindPort": 9191},
                {"DestinationName": "cache", "LocalBindSocketPath": "/tmp/cache.sock"},
            ]
        },
    }
    assert connectproxy.listener_specs(registration) == {
        connectproxy.ListenerSpec("public", "0.0.0.0", 21000, ""),
        connectproxy.ListenerSpec("upstream", "127.0.0.1", 9191, "db"),
    }


def test_proxy_id_and_env_address_with_scheme(mesh):
    admin = str(mesh.tmp / "env.sock")
    proc = run_cli(
        "-proxy-id",
        "jupyter-alice-sidecar-proxy",
        "-admin-socket",
        admin,
        env={"CONSUL_HTTP_ADDR": mesh.fake.url, "CONSUL_HTTP_TOKEN": mesh.tokens["jupyter-alice"]},
    )
    try:
        wait_for(lambda: ready_cli(admin) == 0 or proc.poll() is not None, "the proxy to be ready")
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
    finally:
        rc, err = finish(proc)
    assert rc == 0, err
    assert mesh.tokens["jupyter-alice"] not in err


def test_follows_registration_changes(mesh):
    _server, client = mesh.start_both()
    moved = free_port()
    registration = mesh.consul("GET", "/v1/agent/service/jupyter-alice-sidecar-proxy")
    registration["Proxy"]["Upstreams"][0]["LocalBindPort"] = moved
    mesh.consul(
        "PUT",
        "/v1/agent/service/register",
        {k: registration[k] for k in ("Kind", "ID", "Name", "Address", "Port", "Proxy") if k in registration}
        | {"Name": registration["Service"]},
    )
    wait_for(lambda: any(s.port == moved for s in client.listeners), "the upstream listener to move")
    wait_for(lambda: not any(s.port == mesh.upstream for s in client.listeners), "the old listener to close")
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", mesh.upstream), timeout=2).close()
    socket.create_connection(("127.0.0.1", moved), timeout=2).close()


def test_exits_non_zero_when_the_registration_never_appears(mesh):
    rc, err = finish(
        run_cli("-sidecar-for", "ghost", "-http-addr", mesh.fake.url, "-register-timeout", "1.5", "-admin-socket", "")
    )
    assert rc == 1
    assert "no registration ghost-sidecar-proxy within 1.5s" in err


def test_exits_non_zero_when_the_agent_is_unreachable():
    rc, err = finish(run_cli("-sidecar-for", "x", "-http-addr", f"127.0.0.1:{free_port()}", "-register-timeout", "1"))
    assert rc == 1
    assert "cannot reach the Consul agent" in err


def test_public_port_taken_is_a_clear_failure(mesh):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", mesh.alice_public))
        busy.listen()
        rc, err = finish(
            run_cli(
                "-sidecar-for",
                "jupyter-alice",
                "-http-addr",
                mesh.fake.url,
                "-admin-socket",
                str(mesh.tmp / "busy.sock"),
                env={"CONSUL_HTTP_TOKEN": mesh.tokens["jupyter-alice"]},
            )
        )
    assert rc == 1
    assert f"cannot listen on 127.0.0.1:{mesh.alice_public}" in err


def test_sigterm_while_waiting_for_the_registration_is_clean(mesh):
    proc = run_cli("-sidecar-for", "later", "-http-addr", mesh.fake.url, "-admin-socket", str(mesh.tmp / "l.sock"))
    try:
        wait_for(lambda: probe_ready(str(mesh.tmp / "l.sock"))[0] == 503, "the proxy to wait for its registration")
        proc.send_signal(signal.SIGTERM)
    finally:
        rc, err = finish(proc)
    assert rc == 0, err


def test_requires_a_service_id():
    rc, err = finish(run_cli())
    assert rc == 2
    assert "-sidecar-for" in err


# ------------------------------------------------------------------------------------ L7 as Envoy
class EchoApp:
    """Stands in for the app behind the coordinator's sidecar: records each request head it gets."""

    def __init__(self):
        self.heads: list[bytes] = []
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        stream = connectproxy.Stream(conn)
        with conn:
            try:
                while (head := stream.head()) is not None:
                    self.heads.append(head)
                    _line, headers = connectproxy.parse_head(head)
                    framing, length = connectproxy.body_framing(headers)
                    if framing == "length":
                        stream.exactly(length, lambda _b: None)
                    conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            except (OSError, ValueError):
                return

    def close(self):
        self.sock.close()


@pytest.fixture
def echo(mesh):
    """The coordinator's sidecar forwards to an EchoApp instead of the Trino stand-in."""
    app = EchoApp()
    registration = mesh.consul("GET", "/v1/agent/service/trino-coordinator")
    mesh.consul(
        "PUT",
        "/v1/agent/service/register",
        {
            "Name": "trino-coordinator",
            "Address": "127.0.0.1",
            "Port": app.port,
            "Connect": {"SidecarService": {"Address": "127.0.0.1", "Port": mesh.trino_public}},
        },
    )
    assert registration["Port"] != app.port
    yield app
    app.close()


def exchange(port: int, request: bytes) -> tuple[int | None, bytes]:
    """One raw request through the upstream listener; (status or None if closed, body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        stream = connectproxy.Stream(sock)
        try:
            head = stream.head()
        except (OSError, ValueError):
            return None, b""
        if head is None:
            return None, b""
        status_line, headers = connectproxy.parse_head(head)
        body: list[bytes] = []
        framing, length = connectproxy.body_framing(headers)
        if framing == "length":
            stream.exactly(length, body.append)
        return int(status_line.split()[1]), b"".join(body)


def test_l7_adds_xfcc_and_xfp_as_consuls_envoy(mesh, echo):
    """listeners.go makeInboundListener: APPEND_FORWARD with Subject, Cert, Chain, DNS, URI (Envoy
    writes By, Hash, then Cert, Chain, Subject, URI, DNS); Envoy sets x-forwarded-proto."""
    mesh.consul.http_protocol()
    mesh.consul.allow()
    server, client = mesh.start_both()
    forged = "By=spiffe://evil/ns/default/dc/dc1/svc/trino-coordinator;URI=spiffe://evil/svc/admin"
    status, _ = exchange(
        mesh.upstream, f"GET / HTTP/1.1\r\nHost: t\r\nX-Forwarded-Client-Cert: {forged}\r\n\r\n".encode()
    )
    assert status == 200
    _line, headers = connectproxy.parse_head(echo.heads[-1])
    xfcc = [v for k, v in headers if k.lower() == "x-forwarded-client-cert"]
    assert len(xfcc) == 1
    earlier, ours = xfcc[0].rsplit(",By=", 1)
    assert earlier == forged  # APPEND_FORWARD keeps what came before and appends this hop
    fields = [part.split("=", 1) for part in ("By=" + ours).split(";")]
    assert [k for k, _ in fields][:6] == ["By", "Hash", "Cert", "Chain", "Subject", "URI"]
    values = dict(fields)
    assert values["By"] == server.self_uri
    alice_der = ssl.PEM_cert_to_DER_cert(client.material.leaf["CertPEM"])
    assert values["Hash"] == hashlib.sha256(alice_der).hexdigest()
    assert values["URI"] == client.self_uri
    assert urllib.parse.unquote(values["Cert"].strip('"')).strip() == client.material.leaf["CertPEM"].strip()
    assert [v for k, v in headers if k.lower() == "x-forwarded-proto"] == ["https"]


@pytest.mark.parametrize(
    "framing",
    [
        "Content-Length: 5\r\nTransfer-Encoding: chunked",
        "Content-Length: 5\r\nContent-Length: 5",
        "Content-Length: 5\r\nContent-Length: 50",
        "X-Trino-User: bob\r\n alice",
    ],
    ids=["cl-and-te", "duplicate-cl", "differing-cl", "obs-fold"],
)
def test_l7_refuses_ambiguous_framing_with_400(mesh, echo, framing):
    """Envoy's HTTP/1 codec (codec_impl.cc, balsa_parser.cc): 400, and nothing reaches the app."""
    mesh.consul.http_protocol()
    mesh.consul.allow()
    mesh.start_both()
    smuggled = b"0\r\n\r\nPOST /v1/statement HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n"
    request = f"POST /v1/statement HTTP/1.1\r\nHost: t\r\n{framing}\r\n\r\n".encode() + smuggled
    status, body = exchange(mesh.upstream, request)
    assert (status, body) == (400, b"Bad Request")
    assert echo.heads == []


def test_l7_header_values_are_compared_as_bytes(mesh, echo):
    """Envoy compares header bytes: latin-1 bytes of "jürgen" are not the UTF-8 intention value."""
    mesh.consul.http_protocol()
    mesh.consul.allow_l7("jürgen")
    mesh.start_both()
    head = b"GET / HTTP/1.1\r\nHost: t\r\nX-Trino-User: %s\r\n\r\n"
    assert exchange(mesh.upstream, head % "jürgen".encode("latin-1"))[0] == 403
    assert exchange(mesh.upstream, head % "jürgen".encode())[0] == 200
    assert len(echo.heads) == 1


@pytest.mark.parametrize(
    ("rule", "allowed"),
    [
        ({"Exact": "alice,x"}, True),
        ({"Exact": "alice"}, False),
        ({"Prefix": "alice,"}, True),
        ({"Suffix": ",x"}, True),
        ({"Regex": "[a-z]+"}, False),
        ({"Regex": "[a-z,]+"}, True),
        ({"Present": True}, True),
        ({"Exact": "alice", "Invert": True}, True),
    ],
)
def test_l7_repeated_headers_are_joined_with_commas_before_matching(rule, allowed):
    """Envoy's HeaderUtility::getAllOfHeaderAsString: two X-Trino-User lines are one value "a,b"."""
    ixn = {
        "SourceName": "jupyter-alice",
        "Precedence": 9,
        "Permissions": [{"Action": "allow", "HTTP": {"Header": [{"Name": "X-Trino-User", **rule}]}}],
    }
    request = Request("GET", "/", [("X-Trino-User", "alice"), ("x-trino-user", "x")])
    assert evaluate([ixn], "jupyter-alice", request, False)[0] is allowed


def test_ready_only_once_the_listeners_are_bound(mesh):
    """Envoy's /ready can answer LIVE before its listeners exist (the initial fetch timeout, 15 s,
    ends initialization without them): the readiness probe checks the sockets themselves."""
    mesh.consul.allow()
    proxy = mesh.proxy("jupyter-alice")
    admin = str(mesh.tmp / "jupyter-alice.sock")
    assert ready_cli(admin) == 0
    [upstream] = [spec for spec in proxy.listeners if spec.kind == "upstream"]
    proxy.listeners[upstream].close()  # /ready still says LIVE, the listener is gone
    assert probe_ready(admin) == (200, "LIVE")
    assert ready_cli(admin) == 1


def test_pump_is_not_stalled_by_a_tls_record_without_data(mesh):
    """A TLS 1.3 server sends session tickets after the handshake: a record the upstream side of
    the relay can read without any application data. The relay must not block on it while the
    other side's bytes wait (seen as 15-60 s stalls of the data-path tests under load)."""
    roots = mesh.consul("GET", "/v1/agent/connect/ca/roots")
    server_m = connectproxy.build_material(mesh.consul("GET", "/v1/agent/connect/ca/leaf/trino-coordinator"), roots)
    client_m = connectproxy.build_material(mesh.consul("GET", "/v1/agent/connect/ca/leaf/jupyter-alice"), roots)
    listener = socket.create_server(("127.0.0.1", 0))

    def echo():
        raw, _ = listener.accept()
        with server_m.server.wrap_socket(raw, server_side=True) as tls:
            while data := tls.recv(65536):
                tls.sendall(data)

    threading.Thread(target=echo, daemon=True).start()
    tls = client_m.client.wrap_socket(socket.create_connection(listener.getsockname(), timeout=10))
    tls.settimeout(60)  # IO_TIMEOUT
    assert tls.version() == "TLSv1.3"
    import select

    assert select.select([tls], [], [], DEADLINE)[0], "no session ticket arrived"
    local, remote = socket.socketpair()
    threading.Thread(target=connectproxy.relay.pump, args=(remote, tls), daemon=True).start()
    # Only once the relay has read the tickets (the kernel buffer is empty) does the notebook send.
    wait_for(lambda: not select.select([tls.fileno()], [], [], 0)[0], "the relay to read the session tickets")
    local.settimeout(10)
    try:
        local.sendall(b"ping")
        assert local.recv(4) == b"ping"
    finally:
        local.close()
        listener.close()
