"""Figure 4 (issue 12): time to end access. From the stop request to (a) the intention absent in
Consul, (b) a new connection through the notebook's upstream refused, (c) an already-open
connection closed.

    python benchmarks/fig4_end_access.py [--runs 3] [--reauthorize 5] [--smoke]

The data path is real: the notebook's sidecar is the connectproxy image (mTLS, authorize,
re-authorization every ``--reauthorize`` s and on intention changes), Trino is the stand-in
behind its own connectproxy; both are host processes bound to the Docker network's gateway,
next to the fake Consul (default timings). A probe runs inside the notebook container (it
shares the sidecar's network namespace): it holds one keep-alive connection to Trino through
127.0.0.1:28080 and opens a new one every 20 ms, and prints when a new one first fails and when
the held one is closed. Timestamps are the one kernel clock of host and containers.

Two ways access ends, each ``--runs`` times:
* ``stop``: ``ConsulSpawner.stop()`` (what the hub calls on a stop request or a cull): revoke,
  then remove the sidecar, stop the notebook, deregister, delete the token.
* ``revoke``: the intention alone is revoked (as an expiry, the janitor or a failed keeper
  would) while the sidecar keeps running: what the proxies themselves enforce.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import json
import logging
import os
import shutil
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid

import common
import docker

from consulspawner.consul import ConsulClient
from consulspawner.entries import KIND
from consulspawner.intentions import IntentionWriter
from consulspawner_dev.connectproxy import Agent, ConnectProxy
from consulspawner_dev.fakeconsul import FakeConsul
from consulspawner_dev.trinostandin import TrinoStandIn

DEST = "trino-coordinator"
HUB = "csbench-hub"
UPSTREAM_PORT = 28080

PROBE = r"""
import re, select, socket, sys, time
PORT = %d
def request(sock):
    sock.sendall(b"GET /v1/info HTTP/1.1\r\nHost: trino\r\nX-Trino-User: probe\r\n\r\n")
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return None
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    m = re.search(rb"(?i)content-length:\s*(\d+)", head)
    need = int(m.group(1)) if m else 0
    while len(body) < need:
        chunk = sock.recv(65536)
        if not chunk:
            return None
        body += chunk
    return int(head.split()[1])
def fresh():
    try:
        with socket.create_connection(("127.0.0.1", PORT), timeout=2) as s:
            s.settimeout(2)
            return request(s)
    except OSError:
        return None
def closed(sock):
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        return bool(readable) and sock.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True
deadline = time.time() + 15
while fresh() != 200:
    if time.time() > deadline:
        try:
            with socket.create_connection(("127.0.0.1", PORT), timeout=2) as s:
                s.settimeout(5)
                print("LAST", request(s), flush=True)
        except Exception as e:
            print("LAST", repr(e), flush=True)
        print("NEVER", flush=True); sys.exit(1)
    time.sleep(0.05)
held = socket.create_connection(("127.0.0.1", PORT), timeout=5)
assert request(held) == 200
print("READY", time.time(), flush=True)
refused = gone = None
end = time.time() + 60
while time.time() < end and (refused is None or gone is None):
    if refused is None and fresh() != 200:
        refused = time.time(); print("REFUSED", refused, flush=True)
    if gone is None and closed(held):
        gone = time.time(); print("CLOSED", gone, flush=True)
    time.sleep(0.02)
print("DONE", flush=True)
"""


def consul(fake_url: str, method: str, path: str, body=None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        fake_url + path, data=data, method=method, headers={"X-Consul-Token": common.MASTER_TOKEN}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        raw = response.read()
        return json.loads(raw) if raw.strip() else None


class Probe:
    """The probe's output lines, as they come, from a docker exec in the notebook container."""

    def __init__(self, client: docker.DockerClient, container: str):
        self.events: dict[str, float] = {}
        self.lines: list[str] = []
        self.ready = threading.Event()
        self.done = threading.Event()
        exec_id = client.api.exec_create(container, ["python3", "-u", "-c", PROBE % UPSTREAM_PORT])["Id"]
        self.stream = client.api.exec_start(exec_id, stream=True)
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        buffer = b""
        try:
            for chunk in self.stream:
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    self.lines.append(line.decode(errors="replace"))
                    parts = self.lines[-1].split()
                    if not parts:
                        continue
                    if len(parts) > 1:
                        self.events[parts[0]] = float(parts[1])
                    if parts[0] == "READY":
                        self.ready.set()
                    if parts[0] in ("DONE", "NEVER"):
                        self.done.set()
        finally:
            self.ready.set()
            self.done.set()


async def one_run(
    how: str, i: int, fake: FakeConsul, settings: dict, client: docker.DockerClient, make_spawner
) -> dict:
    spawner = make_spawner(f"{common.PREFIX}e{how[0]}{i}{uuid.uuid4().hex[:4]}", settings)
    await spawner.start()
    service = spawner.mesh_state.service_name
    probe = Probe(client, spawner.container_id)
    await asyncio.to_thread(probe.ready.wait, 90)
    if "READY" not in probe.events:
        logs = client.api.logs(spawner.sidecar_container_id, tail=30).decode(errors="replace")
        raise RuntimeError(
            "the probe never reached Trino through the mesh:\n"
            + "\n".join(probe.lines[-20:])
            + f"\n--- sidecar logs ---\n{logs}"
        )

    def intention_present() -> bool:
        try:
            entry = consul(fake.url, "GET", f"/v1/config/{KIND}/{DEST}")
        except urllib.error.HTTPError as e:
            if e.code == 404:
                return False
            raise
        return any(s.get("Name") == service for s in (entry or {}).get("Sources") or [])

    absent_at: list[float] = []

    async def watch_intention():
        def poll() -> float:  # on a thread: one GET after another until the source is gone
            while intention_present():
                time.sleep(0.005)
            return time.time()

        absent_at.append(await asyncio.to_thread(poll))

    watcher = asyncio.create_task(watch_intention())
    began = time.time()
    if how == "stop":
        await spawner.stop()
        stop_returned = time.time() - began
    else:
        revoker = ConsulClient(fake.url, common.MASTER_TOKEN)
        await IntentionWriter(revoker, HUB).revoke(DEST, service)
        await revoker.close()
        stop_returned = None
    await asyncio.wait_for(watcher, 30)
    await asyncio.to_thread(probe.done.wait, 30)
    if how == "revoke":
        await spawner.stop()
    await spawner.forget()
    ev = probe.events
    return {
        "how": how,
        "intention_absent_s": absent_at[0] - began,
        "new_connection_refused_s": ev["REFUSED"] - began if "REFUSED" in ev else None,
        "open_connection_closed_s": ev["CLOSED"] - began if "CLOSED" in ev else None,
        "stop_returned_s": stop_returned,
    }


async def measure(
    runs: int, reauth: float, fake: FakeConsul, gateway: str, images: dict, client: docker.DockerClient
) -> list[dict]:
    from fig1_spawn_overhead import make_spawner

    settings = {
        "docker": dict(
            image=images["CONSULSPAWNER_NOTEBOOK_IMAGE"],
            cmd=common.MINIMAL_NOTEBOOK,
            network_name=common.NETWORK,
            use_internal_ip=True,
            remove=True,
            pull_policy="never",
        ),
        "consul": dict(
            consul_address=fake.url,
            consul_token=common.MASTER_TOKEN,
            hub_instance=HUB,
            sidecar_image=images["CONSULSPAWNER_PROXY_IMAGE"],
            sidecar_command=[
                "connectproxy",
                "-sidecar-for",
                "{service_id}",
                "-token-file",
                "{token_file}",
                "-reauthorize-interval",
                f"{reauth:g}",
            ],
        ),
    }
    out = []
    for i in range(runs):
        for how in ("stop", "revoke"):
            out.append(await one_run(how, i, fake, settings, client, lambda u, s: make_spawner("ConsulSpawner", u, s)))
    await common.close_shared_clients()
    return out


def trino_sidecar(fake: FakeConsul, gateway: str, trino: TrinoStandIn, reauth: float) -> ConnectProxy:
    """Register trino-coordinator with a sidecar, run that sidecar (connectproxy, in process, on
    the gateway address) and wait until it passes its checks (TCP every 10 s: Consul's default)."""
    with socket_port(gateway) as public:
        consul(
            fake.url,
            "PUT",
            "/v1/agent/service/register",
            {
                "Name": DEST,
                "Address": gateway,
                "Port": trino.port,
                "Connect": {
                    "SidecarService": {
                        "Address": gateway,
                        "Port": public,
                        "Proxy": {"LocalServiceAddress": gateway, "LocalServicePort": trino.port},
                    }
                },
            },
        )
    token = consul(fake.url, "PUT", "/v1/acl/token", {"ServiceIdentities": [{"ServiceName": DEST}]})["SecretID"]
    admin = tempfile.mkdtemp(prefix="csbench-proxy-")
    atexit.register(shutil.rmtree, admin, ignore_errors=True)
    proxy = ConnectProxy(
        Agent(fake.url, token),
        f"{DEST}-sidecar-proxy",
        admin_socket=f"{admin}/trino.sock",
        reauthorize_interval=reauth,
        # This figure measures re-authorization alone; Envoy would also drain for --drain-time-s.
        drain_time=0.0,
    ).start(timeout=60)
    deadline = time.time() + 60
    while not consul(fake.url, "GET", f"/v1/health/connect/{DEST}?passing=1"):
        if time.time() > deadline:
            proxy.stop()
            raise RuntimeError("trino-coordinator's sidecar never passed its checks")
        time.sleep(0.2)
    return proxy


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", "-n", type=int, default=3)
    parser.add_argument(
        "--reauthorize",
        type=float,
        default=5.0,
        help="the proxies' re-authorization interval, s (connectproxy's default: 5)",
    )
    parser.add_argument("--smoke", action="store_true", help="1 run of each")
    args = parser.parse_args()
    if os.environ.get("CSBENCH_DEBUG"):
        logging.basicConfig(level=logging.DEBUG if os.environ["CSBENCH_DEBUG"] == "2" else logging.INFO)
    runs = 1 if args.smoke else args.runs
    images = common.images()
    if "CONSULSPAWNER_PROXY_IMAGE" not in images:
        raise SystemExit("CONSULSPAWNER_PROXY_IMAGE unknown: run `bash docker/build-images.sh` first")
    client = docker.from_env()
    try:
        with (
            common.docker_network(client) as gateway,
            FakeConsul(acl_master_token=common.MASTER_TOKEN, host=gateway, check_interval_override=None) as fake,
        ):
            trino = TrinoStandIn(host=gateway, process_forwarded="ignore").start()  # as docker/stack/trino
            proxy = None
            try:
                proxy = trino_sidecar(fake, gateway, trino, args.reauthorize)
                rows = asyncio.run(measure(runs, args.reauthorize, fake, gateway, images, client))
            finally:  # before the agent goes: the proxy would retry it noisily
                if proxy is not None:
                    proxy.stop()
                trino.stop()
    finally:
        client.close()

    table, results = [], {}
    for how in ("stop", "revoke"):
        mine = [r for r in rows if r["how"] == how]
        results[how] = {}
        for key in ("intention_absent_s", "new_connection_refused_s", "open_connection_closed_s", "stop_returned_s"):
            values = [r[key] for r in mine if r[key] is not None]
            results[how][key] = common.summary(values)
            if values:
                s = results[how][key]
                table.append([how, key, s["n"], s["median"], s["max"]])
    results["runs"] = rows
    common.table(
        ["how", "from the request to", "n", "median s", "max s"],
        table,
        title=f"Figure 4: time to end access (re-authorization every {args.reauthorize:g} s)",
    )

    def worst(how: str, key: str) -> float:
        return results[how][key].get("max", float("inf"))

    targets = {}
    for how in ("stop", "revoke"):
        targets[f"{how}_a_intention_absent_lt_0.5s"] = common.target(
            worst(how, "intention_absent_s") < 0.5,
            worst(how, "intention_absent_s"),
            0.5,
            f"{how}: worst time to the intention absent in Consul",
        )
        targets[f"{how}_b_new_refused_lt_1s"] = common.target(
            worst(how, "new_connection_refused_s") < 1.0,
            worst(how, "new_connection_refused_s"),
            1.0,
            f"{how}: worst time to a new connection refused",
        )
        limit = args.reauthorize + 1.0
        targets[f"{how}_c_open_closed_lt_reauth_plus_1s"] = common.target(
            worst(how, "open_connection_closed_s") < limit,
            worst(how, "open_connection_closed_s"),
            limit,
            f"{how}: worst time to the open connection closed",
        )
    return common.emit(
        "4-end-access", {"runs": runs, "reauthorize": args.reauthorize, "smoke": args.smoke}, results, targets
    )


class socket_port:
    """A free TCP port on ``host`` (bound briefly to pick it)."""

    def __init__(self, host: str):
        import socket

        self.sock = socket.socket()
        self.sock.bind((host, 0))

    def __enter__(self) -> int:
        port = self.sock.getsockname()[1]
        self.sock.close()
        return port

    def __exit__(self, *exc) -> None:
        pass


if __name__ == "__main__":
    main()
