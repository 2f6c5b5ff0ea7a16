"""Figure 2 (issue 12): HTTP requests ConsulSpawner makes to Consul per spawn and per stop, by
endpoint, counted at the fake agent (default timings).

    python benchmarks/fig2_consul_calls.py [--runs 3] [--docker real|stub] [--smoke]

``--docker real`` (default) starts real containers (the minimal notebook and the dev sidecar);
``--docker stub`` replaces the Docker API by an in-memory stand-in (benchmarks/stubdocker.py),
which changes no Consul call: the smoke test uses it. Servers are spawned one at a time, and
every request the fake served between the start of ``start()`` and its return (and likewise
for ``stop()``) is attributed to that spawn (stop).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import uuid
from collections import Counter

import common
from stubdocker import StubDockerAPI

from consulspawner_dev.fakeconsul import FakeConsul

_SIDECAR_ID = re.compile(r"jupyter-[a-z0-9-]+-sidecar-proxy")
_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|jupyter-[a-z0-9-]+[a-z0-9]")
# What the sidecar asks its agent (its registration, certificates, upstream endpoints,
# intentions, its own service's protocol and the global proxy-defaults), never the hub: with
# real Docker the fake serves the sidecar's requests too. (The hub reads proxy-defaults only
# when the destination's service-defaults has no protocol, which is not the case here.)
SIDECAR_ENDPOINTS = re.compile(
    r"^GET /v1/(agent/service/:sidecar-id|agent/connect/|health/connect/|connect/intentions/match"
    r"|config/service-defaults/:id$|config/proxy-defaults/global$)"
)


def endpoint(method: str, path: str) -> str:
    return f"{method} {_ID.sub(':id', _SIDECAR_ID.sub(':sidecar-id', path))}"


def hub_total(counts: Counter) -> int:
    return sum(n for e, n in counts.items() if not SIDECAR_ENDPOINTS.match(e))


def spawner_class(stub: StubDockerAPI | None):
    from consulspawner import ConsulSpawner

    if stub is None:
        return ConsulSpawner

    from concurrent.futures import ThreadPoolExecutor

    mesh_thread = ThreadPoolExecutor(1, thread_name_prefix="csbench-stub-sidecar")

    class StubbedConsulSpawner(ConsulSpawner):
        _client = stub
        _executor = None

        def sidecar_docker(self, method, *args, **kwargs):  # the mesh's own Docker client, if any
            return asyncio.wrap_future(mesh_thread.submit(getattr(stub, method), *args, **kwargs))

        sidecar_ready_wait = sidecar_docker  # (the stub's exec answers at once)

    return StubbedConsulSpawner


def make(cls, user_name: str, settings: dict):
    from types import SimpleNamespace

    from jupyterhub.objects import Hub
    from traitlets.config import Config

    config = Config()
    for key, value in settings.items():
        setattr(config.ConsulSpawner, key, value)
    user = SimpleNamespace(name=user_name, url=f"/user/{user_name}/", escaped_name=user_name, id=1, settings={})
    return cls(
        user=user, hub=Hub(), config=config, api_token=uuid.uuid4().hex, oauth_client_id=f"jupyter-user-{user_name}"
    )


async def count(fake: FakeConsul, cls, settings: dict, runs: int) -> tuple[list[Counter], list[Counter]]:
    spawns, stops = [], []
    for i in range(runs):
        spawner = make(cls, f"{common.PREFIX}c{i}{uuid.uuid4().hex[:4]}", settings)
        # Every request received (answered 404 too: a read of an absent entry is a request).
        mark = len(fake.attempts)
        await spawner.start()
        after = fake.attempts
        spawns.append(Counter(endpoint(m, p) for m, p in after[mark:]))
        mark = len(after)
        await spawner.stop()
        stops.append(Counter(endpoint(m, p) for m, p in fake.attempts[mark:]))
        await spawner.forget()
    await common.close_shared_clients()
    return spawns, stops


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", "-n", type=int, default=3)
    parser.add_argument("--docker", choices=["real", "stub"], default="real")
    parser.add_argument("--smoke", action="store_true", help="2 runs with the Docker stub")
    args = parser.parse_args()
    runs, mode = (2, "stub") if args.smoke else (args.runs, args.docker)

    def settings(url: str, images: dict | None) -> dict:
        return dict(
            image=(images or {}).get("CONSULSPAWNER_NOTEBOOK_IMAGE", "csbench/none"),
            cmd=common.MINIMAL_NOTEBOOK,
            network_name=common.NETWORK if mode == "real" else "csbench-stub",
            use_internal_ip=True,
            remove=True,
            pull_policy="never",
            consul_address=url,
            hub_instance="csbench",
            **common.hub_identity(url, "csbench"),
            sidecar_image=(images or {}).get("CONSULSPAWNER_SIDECAR_IMAGE", "csbench/none"),
            sidecar_command=common.SIDECAR_COMMAND,
        )

    if mode == "real":
        import docker

        images = common.images()
        client = docker.from_env()
        with (
            common.docker_network(client) as gateway,
            FakeConsul(acl_master_token=common.MASTER_TOKEN, host=gateway, check_interval_override=None) as fake,
        ):
            spawns, stops = asyncio.run(count(fake, spawner_class(None), settings(fake.url, images), runs))
        client.close()
    else:
        with FakeConsul(acl_master_token=common.MASTER_TOKEN, host="127.0.0.1", check_interval_override=None) as fake:
            spawns, stops = asyncio.run(count(fake, spawner_class(StubDockerAPI()), settings(fake.url, None), runs))

    endpoints = sorted(set().union(*spawns, *stops))
    rows = [
        [e + (" (sidecar's)" if SIDECAR_ENDPOINTS.match(e) else ""), *(c[e] for c in spawns), *(c[e] for c in stops)]
        for e in endpoints
    ]
    rows.append(["all requests", *(sum(c.values()) for c in spawns), *(sum(c.values()) for c in stops)])
    rows.append(["the hub's", *(hub_total(c) for c in spawns), *(hub_total(c) for c in stops)])
    common.table(
        ["endpoint", *(f"spawn{i + 1}" for i in range(runs)), *(f"stop{i + 1}" for i in range(runs))],
        rows,
        title=f"Figure 2: HTTP requests to Consul per spawn and per stop, counted at the fake (Docker {mode})",
    )
    per_spawn = max(hub_total(c) for c in spawns)
    per_stop = max(hub_total(c) for c in stops)
    targets = {
        "spawn_le_4": common.target(per_spawn <= 4, per_spawn, 4, "the hub's requests per spawn (worst run)"),
        "stop_le_4": common.target(per_stop <= 4, per_stop, 4, "the hub's requests per stop (worst run)"),
    }
    results = {
        "spawns": [dict(c) for c in spawns],
        "stops": [dict(c) for c in stops],
        "per_spawn_max": per_spawn,
        "per_stop_max": per_stop,
    }
    return common.emit("2-consul-calls", {"runs": runs, "docker": mode, "smoke": args.smoke}, results, targets)


if __name__ == "__main__":
    main()
