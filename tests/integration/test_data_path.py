"""The mesh data path (issue 10), on the real Docker daemon with the real trino client:
notebook -> 127.0.0.1:28080 -> its sidecar -> mutual TLS -> trino-coordinator's sidecar -> Trino.

ConsulSpawner runs the Connect proxy stand-in image as every notebook's sidecar (readiness by its
``sidecar-ready`` command); the Trino side (datapath.py) runs as host threads on the test
network's gateway. Every proxy re-authorizes open connections every REAUTHORIZE seconds.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import ssl
import threading
import time
import uuid

import pytest
from cryptography import x509

from consulspawner_dev.fakeconsul import FakeConsul
from consulspawner_dev.fakeconsul import state as fakeconsul_state

from ..conftest import MASTER_TOKEN
from .conftest import NAME_PREFIX, container_exec, hub_stop, wait_for
from .datapath import COORDINATOR, DRAIN, ORCHESTRATOR, REAUTHORIZE, WORKER, TrinoSide

PROXY_COMMAND = [
    "connectproxy",
    "-sidecar-for",
    "{service_id}",
    "-token-file",
    "{token_file}",
    "-reauthorize-interval",
    str(REAUTHORIZE),
]

# Run inside a notebook with python3 -c: the first query, printed as one JSON line.
QUERY = """
import json, os, sys, trino
user = sys.argv[1] if len(sys.argv) > 1 and sys.argv[1] else os.environ["TRINO_USER"]
sql = sys.argv[2] if len(sys.argv) > 2 else "SELECT * FROM tpch.tiny.nation"
try:
    conn = trino.dbapi.connect(host="127.0.0.1", port=28080, user=user, max_attempts=1, request_timeout=15)
    cur = conn.cursor()
    cur.execute(sql)
    print(json.dumps({"ok": True, "rows": cur.fetchall()}))
except Exception as e:
    print(json.dumps({"ok": False, "error": type(e).__name__, "message": str(e)[:300]}))
"""

# One kept-alive HTTP/1.1 connection through the upstream: a request every 0.2 s, one line per
# answer ("<time> <status>"), "<time> closed" when the connection is cut.
SESSION = r"""
import socket, sys, time
s = socket.create_connection(("127.0.0.1", 28080), timeout=30)
buf = b""
def answer():
    global buf
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        if not chunk:
            return None
        buf += chunk
    head, _, buf = buf.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(buf) < length:
        chunk = s.recv(65536)
        if not chunk:
            return None
        buf += chunk
    buf = buf[length:]
    return int(head.split()[1])
end = time.time() + float(sys.argv[1])
while time.time() < end:
    try:
        s.sendall(b"GET /v1/info HTTP/1.1\r\nHost: trino\r\nX-Trino-User: " + sys.argv[2].encode() + b"\r\n\r\n")
        status = answer()
    except OSError:
        status = None
    if status is None:
        print(time.time(), "closed", flush=True)
        break
    print(time.time(), status, flush=True)
    time.sleep(0.2)
"""


# ------------------------------------------------------------------------------------ fixtures
@pytest.fixture
def consul_intervals():
    """ "fast" (check_interval_override 0.5 s, as the other Docker tests) unless a test
    parametrizes it to "consul-defaults"."""
    return "fast"


@pytest.fixture
def mesh_consul(test_network, consul_intervals):
    """Overrides conftest's: the same fake agent, or one with Consul's own check timing
    (10 s intervals, first run after a random stagger) for the test about intervals."""
    if consul_intervals == "fast":
        fake = FakeConsul(acl_master_token=MASTER_TOKEN, host=test_network["gateway"], check_interval_override=0.5)
    else:
        fake = FakeConsul(acl_master_token=MASTER_TOKEN, host=test_network["gateway"], check_initial_stagger=True)
    with fake.start():
        yield fake


@pytest.fixture
def proxy_image(docker_client):
    image = os.environ.get("CONSULSPAWNER_PROXY_IMAGE")
    if not image:
        pytest.fail("$CONSULSPAWNER_PROXY_IMAGE is not set: export $(cat docker/.images.env | xargs)")
    docker_client.images.get(image)
    return image


@pytest.fixture
def trino_side(mesh_consul, test_network, tmp_path):
    side = TrinoSide(mesh_consul, test_network["gateway"], tmp_path)
    try:
        yield side
    finally:
        side.close()


@pytest.fixture(autouse=True)
async def tcp_site(hub_identity, admin):
    """The data path's Trino side speaks tcp (the article's L4 mesh) unless a test switches it
    to http (``trino_side.http_protocol()``): undo the protocol the identity fixture set."""
    await admin.delete_config("service-defaults", "trino-coordinator")


@pytest.fixture
def analyst(make_spawner, proxy_image):
    """analyst(tag, **traits): a spawner of a fresh hub user named after ``tag``, with the
    Connect proxy stand-in as its sidecar."""

    def make(tag, **traits):
        name = f"{NAME_PREFIX}{tag}{uuid.uuid4().hex[:6]}"
        # L4 unless a test asks for L7 (the default): the L4 section shows what L4 allows.
        traits.setdefault("intention_mode", "L4")
        return make_spawner(name, sidecar_image=proxy_image, sidecar_command=PROXY_COMMAND, **traits)

    return make


async def started(trino_side, spawner):
    if not trino_side.proxies:
        trino_side.start()
    await wait_for(trino_side.healthy, timeout=60, message="trino-coordinator's sidecar to pass its checks")
    await spawner.start()
    return spawner


# ------------------------------------------------------------------------------------ helpers
async def query(docker_client, spawner, user: str = "", sql: str | None = None) -> dict:
    args = [user] + ([sql] if sql else [])
    code, out = await asyncio.to_thread(
        container_exec, docker_client, spawner.container_id, "python3", "-c", QUERY, *args
    )
    assert code == 0, out
    return json.loads(out.strip().splitlines()[-1])


def ok_rows(result: dict) -> list:
    assert result["ok"], result
    return result["rows"]


def trino_user(spawner) -> str:
    return spawner.user.name  # trino_user's default: the hub user's name


class Session:
    """SESSION running in a notebook; ``lines`` are (time, "200"|"403"|"closed")."""

    def __init__(self, docker_client, spawner, user: str, seconds: float = 120):
        self.lines: list[tuple[float, str]] = []
        api = docker_client.api
        exec_id = api.exec_create(spawner.container_id, ["python3", "-c", SESSION, str(seconds), user])["Id"]
        stream = api.exec_start(exec_id, stream=True)
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream) -> None:
        pending = b""
        for chunk in stream:
            pending += chunk
            while b"\n" in pending:
                line, _, pending = pending.partition(b"\n")
                stamp, _, what = line.decode(errors="replace").partition(" ")
                try:
                    self.lines.append((float(stamp), what.strip()))
                except ValueError:
                    self.lines.append((time.time(), line.decode(errors="replace")))

    def answers(self) -> list[str]:
        return [what for _, what in self.lines]

    def closed_at(self) -> float | None:
        return next((t for t, what in self.lines if what == "closed"), None)


def notebook_python(docker_client, spawner, code: str):
    exit_code, out = container_exec(docker_client, spawner.container_id, "python3", "-c", code)
    assert exit_code == 0, out
    return json.loads(out.strip().splitlines()[-1])


def sidecar_status(docker_client, spawner) -> dict:
    """The sidecar's admin /status, asked over its unix socket from inside the sidecar."""
    code = (
        "import json, socket; s = socket.socket(socket.AF_UNIX); s.connect('/consul/admin.sock');"
        "s.sendall(b'GET /status HTTP/1.0\\r\\n\\r\\n'); data = b''\n"
        "while True:\n    c = s.recv(65536)\n    if not c: break\n    data += c\n"
        "print(data.partition(b'\\r\\n\\r\\n')[2].decode())"
    )
    exit_code, out = container_exec(docker_client, spawner.sidecar_container_id, "python3", "-c", code)
    assert exit_code == 0, out
    return json.loads(out)


async def remove_source(trino_side, source: str) -> None:
    """An operator revokes one source by hand (CAS write of the entry without it)."""
    entry = trino_side.consul("GET", f"/v1/config/service-intentions/{COORDINATOR}")
    entry["Sources"] = [s for s in entry["Sources"] if s["Name"] != source]
    index = entry.pop("ModifyIndex")
    entry.pop("CreateIndex", None)
    assert trino_side.consul("PUT", f"/v1/config?cas={index}", entry) is True


# ------------------------------------------------------------------------------------ L4
async def test_alice_queries_trino_through_her_upstream_as_herself(analyst, trino_side, docker_client):
    alice = await started(trino_side, analyst("alice"))
    result = await query(docker_client, alice)
    rows = ok_rows(result)
    assert len(rows) == 25 and rows[0][1] == "ALGERIA" and rows[24][1] == "UNITED STATES"
    assert ok_rows(await query(docker_client, alice, sql="SELECT current_user")) == [[trino_user(alice)]]
    assert trino_side.coordinator.users == [trino_user(alice)] * 2
    # The coordinator's proxy authorized alice's sidecar's connections by her identity.
    assert trino_side.proxies[COORDINATOR].counters["authorize"] >= 1
    assert trino_side.proxies[COORDINATOR].counters["denied_connections"] == 0
    # The article's other arrows work beside her: orchestrator -> coordinator -> worker.
    trino_side.orchestrator_query()
    assert trino_side.coordinator_reaches_worker()["coordinator"] is True
    assert set(trino_side.sources()) == {ORCHESTRATOR, WORKER, f"jupyter-{alice.user.name}"}
    await hub_stop(alice)


async def test_the_upstream_is_the_only_route_to_trino(analyst, trino_side, docker_client, mesh_consul):
    alice = await started(trino_side, analyst("alice"))
    gateway = trino_side.gateway
    probe = f"""
import json, socket, ssl, urllib.request, urllib.error
out = {{}}
def dial(port):
    try:
        socket.create_connection(({gateway!r}, port), timeout=5).close()
        return "open"
    except ConnectionRefusedError:
        return "refused"
    except OSError as e:
        return type(e).__name__
out["coordinator_plain"] = dial({trino_side.coordinator.port})
out["worker_plain"] = dial({trino_side.worker.port})
def answered(sock):
    sock.sendall(b"GET /v1/info HTTP/1.1\\r\\nHost: x\\r\\nX-Trino-User: alice\\r\\n\\r\\n")
    return sock.recv(100)
try:
    s = socket.create_connection(({gateway!r}, {trino_side.public[COORDINATOR]}), timeout=10)
    data = answered(s)
    out["mtls_port_plain_http"] = "answered " + data.decode(errors="replace") if data else "closed"
except OSError as e:
    out["mtls_port_plain_http"] = type(e).__name__
try:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    s = ctx.wrap_socket(socket.create_connection(({gateway!r}, {trino_side.public[COORDINATOR]}), timeout=10))
    data = answered(s)
    out["mtls_port_without_cert"] = "answered " + data.decode(errors="replace") if data else "closed"
except (OSError, ssl.SSLError) as e:
    out["mtls_port_without_cert"] = type(e).__name__
try:
    urllib.request.urlopen({mesh_consul.url!r} + "/v1/agent/connect/ca/leaf/jupyter-{alice.user.name}", timeout=10)
    out["leaf_without_token"] = 200
except urllib.error.HTTPError as e:
    out["leaf_without_token"] = e.code
print(json.dumps(out))
"""
    result = await asyncio.to_thread(notebook_python, docker_client, alice, probe)
    assert result["coordinator_plain"] == "refused"
    assert result["worker_plain"] == "refused"
    assert result["mtls_port_plain_http"] != "open" and not result["mtls_port_plain_http"].startswith("answered")
    assert not result["mtls_port_without_cert"].startswith("answered")
    assert result["leaf_without_token"] == 403  # no token in the notebook, no mesh certificate
    assert trino_side.coordinator.queries == []
    # ...while the upstream works.
    assert len(ok_rows(await query(docker_client, alice))) == 25
    await hub_stop(alice)


async def test_admin_interface_is_out_of_the_notebooks_reach(analyst, trino_side, docker_client):
    alice = await started(trino_side, analyst("alice"))
    listeners = (await asyncio.to_thread(sidecar_status, docker_client, alice))["listeners"]
    public = next(f"{item['host']}:{item['port']}" for item in listeners if item["kind"] == "public")
    probe = """
import json, os, socket
ports = set()
for table in ("/proc/net/tcp", "/proc/net/tcp6"):
    try:
        lines = open(table).read().splitlines()[1:]
    except OSError:
        continue
    for line in lines:
        fields = line.split()
        if fields[3] == "0A":
            address, port = fields[1].rsplit(":", 1)
            if len(address) == 8:  # IPv4, little-endian hex
                address = ".".join(str(b) for b in reversed(bytes.fromhex(address)))
            ports.add(f"{address}:{int(port, 16)}")
unix = [line.split()[-1] for line in open("/proc/net/unix").read().splitlines()[1:] if len(line.split()) > 7]
def dial(path):
    try:
        socket.socket(socket.AF_UNIX).connect(path)
        return "connected"
    except OSError as e:
        return type(e).__name__
admin = {path: dial(path) for path in set(unix) | {"/consul/admin.sock"} if path.startswith("/")}
print(json.dumps({"ports": sorted(ports), "unix": unix, "admin": admin, "consul_dir": os.path.exists("/consul")}))
"""
    result = await asyncio.to_thread(notebook_python, docker_client, alice, probe)
    # The shared network namespace listens on exactly: the notebook, the upstream, the mesh
    # listener, and Docker's embedded DNS resolver (dockerd's socket on 127.0.0.11, in every
    # container on a user-defined network). No admin port, not even on 127.0.0.1.
    docker_dns = [p for p in result["ports"] if p.startswith("127.0.0.11:")]
    assert len(docker_dns) <= 1
    assert sorted(set(result["ports"]) - set(docker_dns)) == sorted({"0.0.0.0:8888", "127.0.0.1:28080", public})
    # The admin socket is bound in the sidecar's filesystem; the notebook sees its name in the
    # namespace's socket table but has no such file to connect to, and there is no abstract one.
    # (bound under a temporary name, then renamed into place).
    assert [name for name in result["unix"] if name.startswith("/consul/")]
    assert not [name for name in result["unix"] if name.startswith("@")]
    assert set(result["admin"].values()) == {"FileNotFoundError"}, result["admin"]
    assert result["consul_dir"] is False
    # In the sidecar the same socket answers: that is how the spawner asks for readiness.
    code, out = await asyncio.to_thread(container_exec, docker_client, alice.sidecar_container_id, "sidecar-ready")
    assert code == 0, out
    await hub_stop(alice)


async def test_a_server_without_an_intention_is_denied_at_connection_time(analyst, trino_side, docker_client):
    never = await started(trino_side, analyst("never", intention_destinations=[]))
    result = await query(docker_client, never)
    assert not result["ok"] and result["error"] == "TrinoConnectionError", result
    assert trino_side.coordinator.queries == []
    assert trino_side.proxies[COORDINATOR].counters["denied_connections"] >= 1
    assert f"jupyter-{never.user.name}" not in trino_side.sources()
    trino_side.orchestrator_query()
    await hub_stop(never)


async def test_a_revoked_intention_is_denied_at_connection_time(analyst, trino_side, docker_client):
    alice = await started(trino_side, analyst("alice", keeper_interval=3600, check_ttl=7200, intention_ttl=7200))
    assert len(ok_rows(await query(docker_client, alice))) == 25
    denied = trino_side.proxies[COORDINATOR].counters["denied_connections"]
    await remove_source(trino_side, f"jupyter-{alice.user.name}")
    await wait_for(
        lambda: trino_side.proxies[COORDINATOR].status()["intentions"] == 2,
        message="the coordinator's proxy to see the revocation",
    )
    result = await query(docker_client, alice)
    assert not result["ok"] and result["error"] == "TrinoConnectionError", result
    assert trino_side.proxies[COORDINATOR].counters["denied_connections"] > denied
    assert trino_side.coordinator.users == [trino_user(alice)]
    trino_side.orchestrator_query()
    await hub_stop(alice)


async def test_cull_ends_open_connections_after_the_drain_time(analyst, trino_side, docker_client):
    """The stop revokes first; while the containers are held back (so nothing but the
    intention can cut the path), a query started afterwards fails and the connection opened
    before is drained, as Envoy drains on a listener update, and closed within
    REAUTHORIZE + DRAIN + 1 s of the revocation (with Envoy: up to --drain-time-s, 600 s)."""
    alice = await started(trino_side, analyst("alice"))
    source = f"jupyter-{alice.user.name}"
    session = Session(docker_client, alice, trino_user(alice))
    await wait_for(lambda: session.answers().count("200") >= 2, message="alice's session to be open")

    release = asyncio.Event()
    held: list[str] = []

    def holding(real):
        # The stop removes both containers side by side once the intention is revoked: hold
        # both Docker paths (the sidecar's own thread and DockerSpawner's).
        async def held_docker(method, *args, **kwargs):
            if method in ("remove_container", "stop", "kill"):
                held.append(method)
                await release.wait()
            return await real(method, *args, **kwargs)

        return held_docker

    alice.sidecar_docker = holding(alice.sidecar_docker)
    alice.docker = holding(alice.docker)
    stop = asyncio.ensure_future(hub_stop(alice))
    try:
        await wait_for(lambda: source not in trino_side.sources(), interval=0.02, message="the revocation")
        revoked = time.time()
        await wait_for(
            session.closed_at, timeout=REAUTHORIZE + DRAIN + 10, interval=0.05, message="the session to close"
        )
        cut_after = session.closed_at() - revoked
        print(f"\nopen connection closed {cut_after:.3f} s after the revocation")
        assert cut_after <= REAUTHORIZE + DRAIN + 1.0
        assert not stop.done() and held, "the containers must still be there"
        result = await query(docker_client, alice)
        assert not result["ok"] and result["error"] == "TrinoConnectionError", result
        trino_side.orchestrator_query()
    finally:
        release.set()
        await asyncio.wait_for(stop, 120)
    assert set(trino_side.sources()) == {ORCHESTRATOR, WORKER}
    trino_side.orchestrator_query()


# ------------------------------------------------------------------------------------ L7
async def test_l7_only_the_analysts_own_trino_user(analyst, trino_side, docker_client):
    trino_side.http_protocol()
    trino_side.start()
    await wait_for(lambda: trino_side.proxies[COORDINATOR].protocol == "http", message="the coordinator on http")
    alice = await started(trino_side, analyst("alice", intention_mode="L7"))
    bob = await started(trino_side, analyst("bob", intention_mode="L7"))
    a, b = trino_user(alice), trino_user(bob)

    assert len(ok_rows(await query(docker_client, alice))) == 25
    as_bob = await query(docker_client, alice, user=b)
    assert not as_bob["ok"] and as_bob["error"] == "HttpError" and "403" in as_bob["message"], as_bob
    assert "RBAC: access denied" in as_bob["message"]
    # bob's own server: his own user works; alice's header does not make him alice.
    assert ok_rows(await query(docker_client, bob, sql="SELECT current_user")) == [[b]]
    as_alice = await query(docker_client, bob, user=a)
    assert not as_alice["ok"] and "403" in as_alice["message"], as_alice
    assert trino_side.coordinator.users == [a, b]
    assert trino_side.proxies[COORDINATOR].counters["denied_requests"] >= 2
    # The article's L4 intentions still allow per request on the http listener.
    trino_side.orchestrator_query()
    assert trino_side.coordinator_reaches_worker()["coordinator"] is True
    await hub_stop(bob)
    assert len(ok_rows(await query(docker_client, alice))) == 25
    await hub_stop(alice)
    trino_side.orchestrator_query()


# ------------------------------------------------------------------------------------ certificates
async def test_rotated_root_existing_servers_keep_working_new_connections_use_it(
    analyst, trino_side, docker_client, mesh_consul
):
    alice = await started(trino_side, analyst("alice"))
    assert len(ok_rows(await query(docker_client, alice))) == 25
    session = Session(docker_client, alice, trino_user(alice))
    await wait_for(lambda: session.answers().count("200") >= 2, message="alice's session to be open")
    before = await asyncio.to_thread(sidecar_status, docker_client, alice)

    new_root = mesh_consul.rotate_ca()
    for name, proxy in trino_side.proxies.items():
        await wait_for(lambda p=proxy: p.status()["active_root_id"] == new_root, message=f"{name} on the new root")

    def alice_rotated():
        status = sidecar_status(docker_client, alice)
        return (
            status if status["active_root_id"] == new_root and status["leaf_serial"] != before["leaf_serial"] else None
        )

    after = await wait_for(lambda: asyncio.to_thread(alice_rotated), message="alice's sidecar on the new root")
    answered = session.answers().count("200")
    await wait_for(lambda: session.answers().count("200") >= answered + 3, message="the session to go on")
    assert session.closed_at() is None, "the connection opened before the rotation was cut"
    # New connections: the query works, and alice's sidecar presents its new leaf, issued by the
    # new root.
    assert len(ok_rows(await query(docker_client, alice))) == 25
    roots = trino_side.consul("GET", "/v1/agent/connect/ca/roots")
    assert [r["Active"] for r in roots["Roots"]] == [False, True]
    new_root_cert = x509.load_pem_x509_certificate(roots["Roots"][1]["RootCert"].encode())
    leaf = trino_side.consul("GET", f"/v1/agent/connect/ca/leaf/{COORDINATOR}")
    tmp = trino_side.tmp
    (tmp / "client.pem").write_text(leaf["CertPEM"])
    (tmp / "client.key").write_text(leaf["PrivateKeyPEM"])
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(cadata=roots["Roots"][1]["RootCert"])
    ctx.load_cert_chain(str(tmp / "client.pem"), str(tmp / "client.key"))
    public = next(item["port"] for item in after["listeners"] if item["kind"] == "public")
    ip = trino_side.consul("GET", f"/v1/agent/service/{alice.mesh_state.service_id}-sidecar-proxy")["Address"]

    def server_leaf():
        with ctx.wrap_socket(socket.create_connection((ip, public), timeout=10)) as tls:
            return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))

    presented = await asyncio.to_thread(server_leaf)
    presented.verify_directly_issued_by(new_root_cert)
    assert format(presented.serial_number, "x") == after["leaf_serial"].replace(":", "").lstrip("0")
    trino_side.orchestrator_query()
    await hub_stop(alice)


# ------------------------------------------------------------------------------------ intervals
@pytest.mark.parametrize("consul_intervals", ["consul-defaults"])
async def test_spawn_at_consuls_default_check_intervals_does_not_wait_for_them(
    analyst, trino_side, docker_client, consul_intervals, monkeypatch
):
    """Consul's own check timing: 10 s intervals, the first run after lib.RandomStagger(10 s).
    The draw is pinned to 9 s, the slow end the demo met (its spawns waited 9.5 s for the
    sidecar): a spawn that waited for a Consul check would take over 9 s; this one waits for the
    sidecar's own readiness, and the data path works at once."""
    trino_side.start()
    await wait_for(trino_side.healthy, timeout=60, message="trino-coordinator's sidecar to pass its checks")
    monkeypatch.setattr(fakeconsul_state.random, "uniform", lambda low, high: low + 0.9 * (high - low))
    alice = analyst("alice")
    started_at = time.monotonic()
    await alice.start()
    took = time.monotonic() - started_at
    print(f"\nspawn at Consul's default check intervals took {took:.2f} s")
    checks = trino_side.consul("GET", "/v1/agent/checks")
    [tcp] = [
        c
        for c in checks.values()
        if c["ServiceID"] == f"{alice.mesh_state.service_id}-sidecar-proxy" and c["Type"] == "tcp"
    ]
    assert tcp["Interval"] == "10s"
    assert tcp["Output"] == "", "the sidecar's TCP check ran before the spawn finished"
    assert took < 5.0, f"the spawn took {took:.1f} s: did it wait for a Consul check?"
    assert len(ok_rows(await query(docker_client, alice))) == 25
    await hub_stop(alice)


# A request hidden in a chunked body: framed by Content-Length (6 bytes: "0\r\n\r\nP"...), the
# rest is a second request as alice; framed by Transfer-Encoding it ends at "0\r\n\r\n".
SMUGGLE = r"""
import json, socket, sys
victim = sys.argv[1]
hidden = (
    "POST /v1/statement HTTP/1.1\r\nHost: t\r\nX-Trino-User: " + victim + "\r\nContent-Length: 19\r\n\r\n"
    "SELECT current_user"
).encode()
body = b"0\r\n\r\n" + hidden
head = (
    "POST /v1/statement HTTP/1.1\r\nHost: t\r\nX-Trino-User: " + sys.argv[2] + "\r\n"
    "Transfer-Encoding: chunked\r\nContent-Length: " + str(len(body)) + "\r\n\r\n"
).encode()
s = socket.create_connection(("127.0.0.1", 28080), timeout=15)
s.sendall(head + body)
data = b""
while True:
    chunk = s.recv(65536)
    if not chunk:
        break
    data += chunk
print(json.dumps({"answer": data.decode("latin-1")[:200]}))
"""


async def test_l7_a_request_smuggled_in_a_chunked_body_is_refused(analyst, trino_side, docker_client):
    """Envoy's HTTP/1 codec refuses Content-Length with Transfer-Encoding (400) before RBAC, so
    neither the outer request (bob's own user) nor the hidden one (as alice) reaches Trino."""
    trino_side.http_protocol()
    trino_side.start()
    await wait_for(lambda: trino_side.proxies[COORDINATOR].protocol == "http", message="the coordinator on http")
    alice = await started(trino_side, analyst("alice", intention_mode="L7"))
    bob = await started(trino_side, analyst("bob", intention_mode="L7"))
    code, out = await asyncio.to_thread(
        container_exec,
        docker_client,
        bob.container_id,
        "python3",
        "-c",
        SMUGGLE,
        trino_user(alice),
        trino_user(bob),
    )
    assert code == 0, out
    answer = json.loads(out.strip().splitlines()[-1])["answer"]
    assert answer.startswith("HTTP/1.1 400 "), answer
    assert answer.count("HTTP/1.1") == 1, answer
    assert trino_side.coordinator.queries == []
    assert ok_rows(await query(docker_client, bob, sql="SELECT current_user")) == [[trino_user(bob)]]
