"""An in-memory stand-in for docker.APIClient, enough for DockerSpawner and ConsulSpawner to
start and stop servers without a Docker daemon (figure 2's --docker stub, the smoke test).
Containers "run" as soon as they are started; the sidecar's ready command exits 0."""

from __future__ import annotations

import itertools
import threading

import docker
import requests

_ids = itertools.count(1)


def _not_found(what: str) -> docker.errors.NotFound:
    response = requests.Response()
    response.status_code = 404
    return docker.errors.NotFound(f"No such container: {what}", response=response)


class StubDockerAPI:
    def __init__(self, network: str = "csbench-stub"):
        self.network = network
        self.containers: dict[str, dict] = {}
        self.calls: list[str] = []
        self._lock = threading.Lock()

    def _find(self, ref: str) -> dict:
        for c in self.containers.values():
            if ref in (c["Id"], c["Name"], c["Name"].lstrip("/")):
                return c
        raise _not_found(ref)

    def _record(self, name: str) -> None:
        with self._lock:
            self.calls.append(name)

    # what the spawners build locally
    def create_host_config(self, **kwargs):
        return dict(kwargs)

    def create_networking_config(self, config):
        return dict(config)

    def create_endpoint_config(self, **kwargs):
        return dict(kwargs)

    # Docker API calls
    def inspect_image(self, image):
        self._record("inspect_image")
        return {"Id": f"sha256:{image}", "Config": {"Cmd": ["true"]}}

    def create_container(self, name=None, labels=None, **kwargs):
        self._record("create_container")
        n = next(_ids)
        cid = f"{n:064x}"
        self.containers[cid] = {
            "Id": cid,
            "Name": f"/{name}",
            "Config": {"Labels": labels or {}},
            "State": {"Running": False, "ExitCode": 0, "Error": "", "FinishedAt": ""},
            "NetworkSettings": {
                "IPAddress": "",
                "Ports": {},
                "Networks": {self.network: {"IPAddress": f"10.98.{n // 250}.{n % 250 + 1}"}},
            },
        }
        return {"Id": cid, "Warnings": []}

    def start(self, container, *args, **kwargs):
        self._record("start")
        self._find(container)["State"]["Running"] = True

    def inspect_container(self, container):
        self._record("inspect_container")
        return self._find(container)

    def put_archive(self, container, path, data):
        self._record("put_archive")
        self._find(container)
        return True

    def update_container(self, container, **kwargs):
        self._record("update_container")
        self._find(container)
        return {"Warnings": None}

    def exec_create(self, container, cmd, **kwargs):
        self._record("exec_create")
        self._find(container)
        return {"Id": f"exec{next(_ids)}"}

    def exec_start(self, exec_id, **kwargs):
        self._record("exec_start")
        return (b"", b"") if kwargs.get("demux") else b""

    def exec_inspect(self, exec_id):
        self._record("exec_inspect")
        return {"ExitCode": 0, "Running": False}

    def stop(self, container, *args, **kwargs):
        self._record("stop")
        c = self._find(container)
        c["State"]["Running"] = False
        if c.get("_auto_remove", True):
            self.containers.pop(c["Id"], None)

    def kill(self, container, *args, **kwargs):
        self.stop(container)

    def wait(self, container, *args, **kwargs):
        return {"StatusCode": 0}

    def remove_container(self, container, **kwargs):
        self._record("remove_container")
        c = self._find(container)
        self.containers.pop(c["Id"], None)

    def port(self, container, port):
        return [{"HostIp": "127.0.0.1", "HostPort": str(port)}]

    def close(self):
        pass
