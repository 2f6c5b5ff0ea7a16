"""Spawn and stop latency of ConsulSpawner on the real Docker daemon with the fake Consul.

Starts K servers one after another, then K at once, and prints per-phase timings (mint, register,
notebook, sidecar, readiness, grant are inside "start"). Needs the images from
docker/build-images.sh in $CONSULSPAWNER_NOTEBOOK_IMAGE / $CONSULSPAWNER_SIDECAR_IMAGE.

    python benchmarks/bench_spawn.py [--servers 4]
"""

import argparse
import asyncio
import os
import statistics
import time
import uuid

import docker

from consulspawner_dev.fakeconsul import FakeConsul
from consulspawner_dev.standalone import standalone_spawner

NETWORK = "consulspawner-bench"
TOKEN = str(uuid.uuid4())
# An HTTP server that exits on SIGTERM, as jupyterhub-singleuser does, without needing a hub.
NOTEBOOK_COMMAND = [
    "python3",
    "-c",
    "import http.server, signal, sys; signal.signal(signal.SIGTERM, lambda *_: sys.exit(0)); "
    "http.server.ThreadingHTTPServer(('', 8888), http.server.SimpleHTTPRequestHandler).serve_forever()",
]


async def settings(fake_url: str) -> dict:
    from common import bootstrap_hub

    return dict(
        **(await bootstrap_hub(fake_url, "jupyterhub", master_token=TOKEN)),
        image=os.environ["CONSULSPAWNER_NOTEBOOK_IMAGE"],
        cmd=NOTEBOOK_COMMAND,
        network_name=NETWORK,
        use_internal_ip=True,
        remove=True,
        pull_policy="never",
        consul_address=fake_url,
        sidecar_image=os.environ["CONSULSPAWNER_SIDECAR_IMAGE"],
        sidecar_command=["connectproxy", "-sidecar-for", "{service_id}", "-token-file", "{token_file}"],
    )


async def timed(coro) -> float:
    started = time.perf_counter()
    await coro
    return time.perf_counter() - started


def report(label: str, seconds: list[float]) -> None:
    print(f"{label:<28} n={len(seconds):<3} median {statistics.median(seconds):6.2f}s  max {max(seconds):6.2f}s")


async def main(servers: int) -> None:
    client = docker.from_env()
    for stale in client.networks.list(names=[NETWORK]):
        stale.remove()
    network = client.networks.create(NETWORK, driver="bridge")
    network.reload()
    gateway = network.attrs["IPAM"]["Config"][0]["Gateway"]
    try:
        with FakeConsul(acl_master_token=TOKEN, host=gateway, check_interval_override=0.5).start() as fake:
            config = await settings(fake.url)
            one_by_one = [standalone_spawner(f"bench{uuid.uuid4().hex[:8]}", **config) for _ in range(servers)]
            starts = [await timed(s.start()) for s in one_by_one]
            stops = [await timed(s.stop()) for s in one_by_one]
            report("start, one at a time", starts)
            report("stop, one at a time", stops)

            together = [standalone_spawner(f"bench{uuid.uuid4().hex[:8]}", **config) for _ in range(servers)]
            started = time.perf_counter()
            starts = await asyncio.gather(*(timed(s.start()) for s in together))
            wall = time.perf_counter() - started
            report(f"start, {servers} at once", starts)
            print(f"{'':<28} wall {wall:.2f}s, config writes so far {fake.count('PUT', r'^/v1/config$')}")
            stops = await asyncio.gather(*(timed(s.stop()) for s in together))
            report(f"stop, {servers} at once", stops)
            for spawner in one_by_one + together:
                await spawner._client_and_writer()[0].close()
    finally:
        for container in client.api.containers(all=True, filters={"name": "jupyter-bench"}):
            try:
                client.api.remove_container(container["Id"], force=True)
            except docker.errors.NotFound:
                pass
        network.remove()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", type=int, default=4)
    asyncio.run(main(parser.parse_args().servers))
