"""The Trino side of the mesh for the data-path tests, as host threads on the test network's
gateway: what the article (../shared/context/001_*) runs as containers.

* ``trino-coordinator``: the Trino stand-in on 127.0.0.1 only (its plain port is closed to every
  container), behind its Connect proxy stand-in whose public (mTLS) listener is on the gateway;
  the proxy has an upstream to ``trino-worker``.
* ``trino-worker``: a second stand-in behind its own proxy, upstream to the coordinator
  (Trino's discovery.uri).
* ``orchestrator``: the article's foreign service; a proxy with an upstream to the coordinator.
* intentions as in the article: orchestrator -> coordinator, worker <-> coordinator (L4 allow),
  written before any notebook spawns, so the spawner must keep them when it adds its sources.

Every service has its own token with only its service identity, as in production.
"""

from __future__ import annotations

import json
import socket
import urllib.request

import trino

from consulspawner_dev.connectproxy import Agent, ConnectProxy
from consulspawner_dev.fakeconsul import FakeConsul
from consulspawner_dev.trinostandin import TrinoStandIn

from ..conftest import MASTER_TOKEN

REAUTHORIZE = 1.0  # every proxy's re-authorization interval in these tests (production default: 5 s)
# How long the Trino-side proxies drain a connection the intentions no longer allow before they
# close it (Envoy's --drain-time-s: 600 s by default; shortened so the tests see the end).
DRAIN = 2.0
COORDINATOR, WORKER, ORCHESTRATOR = "trino-coordinator", "trino-worker", "orchestrator"


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class TrinoSide:
    def __init__(self, fake: FakeConsul, gateway: str, tmp_path):
        self.fake, self.gateway, self.tmp = fake, gateway, tmp_path
        # Configured as docker/stack/trino: behind Envoy, x-forwarded-* headers are ignored.
        self.coordinator = TrinoStandIn(host="127.0.0.1", process_forwarded="ignore").start()
        self.worker = TrinoStandIn(host="127.0.0.1", process_forwarded="ignore").start()
        self.public = {name: free_port(gateway) for name in (COORDINATOR, WORKER, ORCHESTRATOR)}
        self.worker_upstream = free_port("127.0.0.1")  # on the coordinator's proxy
        self.discovery_upstream = free_port("127.0.0.1")  # on the worker's proxy
        self.orchestrator_upstream = free_port("127.0.0.1")
        self.proxies: dict[str, ConnectProxy] = {}
        self._register(COORDINATOR, self.coordinator.port, WORKER, self.worker_upstream)
        self._register(WORKER, self.worker.port, COORDINATOR, self.discovery_upstream)
        self._register(ORCHESTRATOR, free_port("127.0.0.1"), COORDINATOR, self.orchestrator_upstream)
        self.write_intentions(COORDINATOR, [ORCHESTRATOR, WORKER])
        self.write_intentions(WORKER, [COORDINATOR])
        self.tokens = {
            name: self.consul("PUT", "/v1/acl/token", {"ServiceIdentities": [{"ServiceName": name}]})["SecretID"]
            for name in self.public
        }

    # ---------------------------------------------------------------- Consul, as an operator
    def consul(self, method: str, path: str, body=None):
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.fake.url + path, data=data, method=method)
        request.add_header("X-Consul-Token", MASTER_TOKEN)
        with urllib.request.urlopen(request, timeout=10) as response:
            raw = response.read()
            return json.loads(raw) if raw.strip() else None

    def _register(self, name: str, app_port: int, upstream: str, upstream_port: int) -> None:
        self.consul(
            "PUT",
            "/v1/agent/service/register",
            {
                "Name": name,
                "Address": self.gateway,
                "Port": app_port,
                "Connect": {
                    "SidecarService": {
                        "Address": self.gateway,
                        "Port": self.public[name],
                        "Proxy": {
                            "LocalServiceAddress": "127.0.0.1",
                            "LocalServicePort": app_port,
                            "Upstreams": [
                                {
                                    "DestinationName": upstream,
                                    "LocalBindAddress": "127.0.0.1",
                                    "LocalBindPort": upstream_port,
                                }
                            ],
                        },
                    }
                },
            },
        )

    def write_intentions(self, destination: str, sources: list[str]) -> None:
        entry = {
            "Kind": "service-intentions",
            "Name": destination,
            "Sources": [{"Name": s, "Action": "allow", "Description": "the article's"} for s in sources],
        }
        assert self.consul("PUT", "/v1/config", entry) is True

    def http_protocol(self) -> None:
        entry = {"Kind": "service-defaults", "Name": COORDINATOR, "Protocol": "http"}
        assert self.consul("PUT", "/v1/config", entry) is True

    def sources(self, destination: str = COORDINATOR) -> list[str]:
        """Source names of the destination's intentions entry, read from the fake's state."""
        with self.fake.state.lock:
            entry = self.fake.state.config_entries.get(("service-intentions", destination)) or {}
            return [s["Name"] for s in entry.get("Sources") or []]

    def healthy(self, name: str = COORDINATOR) -> bool:
        return bool(self.consul("GET", f"/v1/health/connect/{name}?passing=1"))

    # ---------------------------------------------------------------- the proxies
    def start(self) -> TrinoSide:
        for name in self.public:
            agent = Agent(self.fake.url, self.tokens[name])
            proxy = ConnectProxy(
                agent,
                f"{name}-sidecar-proxy",
                admin_socket=str(self.tmp / f"{name}.sock"),
                reauthorize_interval=REAUTHORIZE,
                drain_time=DRAIN,
            )
            self.proxies[name] = proxy.start(timeout=60)
        return self

    def close(self) -> None:
        for proxy in self.proxies.values():
            proxy.stop()
        self.coordinator.stop()
        self.worker.stop()

    # ---------------------------------------------------------------- the article's traffic
    def orchestrator_query(self) -> list:
        """The orchestrator's query through its own sidecar: 25 rows, as user orchestrator."""
        cur = trino.dbapi.connect(
            host="127.0.0.1", port=self.orchestrator_upstream, user="orchestrator", max_attempts=1, request_timeout=15
        ).cursor()
        cur.execute("SELECT * FROM tpch.tiny.nation")
        rows = cur.fetchall()
        assert len(rows) == 25
        return rows

    def coordinator_reaches_worker(self) -> dict:
        """The coordinator's call to the worker, through the coordinator's upstream."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.worker_upstream}/v1/info", timeout=15) as r:
            return json.load(r)
