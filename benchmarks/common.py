"""Shared helpers of the issue-12 figures: statistics, the table, the one JSON line, and the
benchmarks' own Docker network and container names (never the tests' ones, so a benchmark and
a test session can share one Docker daemon)."""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python benchmarks/figN_*.py` from anywhere
    sys.path.insert(0, str(REPO))

# Our own names: the tests use consulspawner-test / jupyter-cstest*, the data-path work
# cs-datapath / csdp. Every container a benchmark creates has PREFIX in its name.
NETWORK = os.environ.get("CSBENCH_NETWORK", "csbench-net")
PREFIX = os.environ.get("CSBENCH_PREFIX", "csbn")
MASTER_TOKEN = "6f1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
SIDECAR_COMMAND = ["connectproxy", "-sidecar-for", "{service_id}", "-token-file", "{token_file}"]
# The minimal notebook of the side-by-side figures: an HTTP server on the notebook port that
# exits on SIGTERM (as jupyterhub-singleuser does), so docker stop never waits its 10 s.
MINIMAL_NOTEBOOK = [
    "python3",
    "-c",
    "import http.server, signal, sys; signal.signal(signal.SIGTERM, lambda *_: sys.exit(0)); "
    "http.server.ThreadingHTTPServer(('', 8888), http.server.SimpleHTTPRequestHandler).serve_forever()",
]


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100); nan for no values."""
    data = sorted(values)
    if not data:
        return math.nan
    if len(data) == 1:
        return data[0]
    rank = (len(data) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(data) - 1)
    return data[low] + (data[high] - data[low]) * (rank - low)


def summary(values: Sequence[float]) -> dict:
    """n, median, p90, p95, max (seconds, rounded to the millisecond... and a bit)."""
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "median": round(statistics.median(values), 4),
        "p90": round(percentile(values, 90), 4),
        "p95": round(percentile(values, 95), 4),
        "max": round(max(values), 4),
    }


def ratio(a: float, b: float) -> float:
    return round(a / b, 3) if b else math.inf


def table(headers: Sequence[str], rows: Sequence[Sequence], title: str = "") -> None:
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in cells)) if cells else len(str(h)) for i, h in enumerate(headers)]
    if title:
        print(title)
    print("  ".join(str(h).rjust(w) for h, w in zip(headers, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(v.rjust(w) for v, w in zip(row, widths, strict=True)))
    print()


def _cell(value) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:.3f}"
    return str(value)


def emit(figure: str, args: dict, results: dict, targets: dict) -> dict:
    """Print the figure's one JSON line (the last line of output) and return it."""
    line = {
        "figure": figure,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "code": code_version(),
        "args": args,
        "results": results,
        "targets": targets,
    }
    print(json.dumps(line, sort_keys=True, default=_jsonable))
    sys.stdout.flush()
    return line


def code_version() -> str:
    """The commit measured, with "+dirty" when consulspawner/ has uncommitted changes."""
    import subprocess

    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "consulspawner"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def _jsonable(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, set | tuple):
        return list(value)
    return str(value)


def target(met: bool, measured, limit, what: str) -> dict:
    return {"met": bool(met), "measured": measured, "limit": limit, "what": what}


@contextmanager
def stopwatch():
    started = time.perf_counter()
    box = {"s": 0.0}
    try:
        yield box
    finally:
        box["s"] = time.perf_counter() - started


def images() -> dict[str, str]:
    """The locally built images, from the environment or docker/.images.env (build-images.sh)."""
    found = {}
    env_file = REPO / "docker" / ".images.env"
    if env_file.exists():
        for line in env_file.read_text().splitlines():
            key, _, value = line.partition("=")
            if key.strip():
                found[key.strip()] = value.strip()
    for key in ("CONSULSPAWNER_NOTEBOOK_IMAGE", "CONSULSPAWNER_SIDECAR_IMAGE", "CONSULSPAWNER_PROXY_IMAGE"):
        if os.environ.get(key):
            found[key] = os.environ[key]
    missing = [k for k in ("CONSULSPAWNER_NOTEBOOK_IMAGE", "CONSULSPAWNER_SIDECAR_IMAGE") if k not in found]
    if missing:
        sys.exit(f"{', '.join(missing)} unknown: run `bash docker/build-images.sh` first")
    return found


@contextmanager
def docker_network(client):
    """The benchmarks' own bridge network; yields its gateway (the host address containers
    reach host processes on). Removes every container named with PREFIX, and the network."""
    remove_our_containers(client)
    for stale in client.networks.list(names=[NETWORK]):
        stale.remove()
    network = client.networks.create(NETWORK, driver="bridge")
    network.reload()
    try:
        yield network.attrs["IPAM"]["Config"][0]["Gateway"]
    finally:
        remove_our_containers(client)
        network.remove()


def remove_our_containers(client) -> None:
    import docker

    for container in client.api.containers(all=True, filters={"name": PREFIX}):
        if not any(PREFIX in name for name in container.get("Names") or []):
            continue
        try:
            client.api.remove_container(container["Id"], force=True, v=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as e:
            if e.status_code != 409:  # removal already in progress (auto_remove)
                raise


async def close_shared_clients() -> None:
    """Close the Consul clients the spawners share per loop (what the hub does at shutdown)."""
    from consulspawner import spawner

    for client, _ in list(spawner._shared_clients.values()):
        await client.close()
    spawner._shared_clients.clear()
    for closer in list(spawner._client_closers):
        closer.cancel()
    spawner._client_closers.clear()


async def bootstrap_hub(consul_url: str, hub_instance: str, master_token: str = MASTER_TOKEN) -> dict:
    """The operator's once-per-hub step on a benchmark's fake agent (JWT auth method, binding
    rule, a token of docker/consul/hub-policy.hcl), as the tests and the demo do it: the hub
    under measurement never holds the management token. Returns the spawner settings."""
    import tempfile

    from consulspawner_dev.admin import AdminClient
    from consulspawner_dev.bootstrap import bootstrap_identity, policy_token, write_signing_key

    key_file = write_signing_key(Path(tempfile.mkdtemp(prefix="csbench-jwt-")) / "key.pem")
    async with AdminClient(consul_url, master_token) as admin:
        # The default L7 intentions need the destination to speak http, as a site sets it.
        await admin.set_config({"Kind": "service-defaults", "Name": "trino-coordinator", "Protocol": "http"})
        method = await bootstrap_identity(admin, hub_instance=hub_instance, key_file=key_file)
        token = await policy_token(admin, "hub", description="benchmark hub")
    return {"consul_token": token, "jwt_signing_key_file": key_file, "auth_method": method}


def hub_identity(consul_url: str, hub_instance: str) -> dict:
    """:func:`bootstrap_hub` for code outside an event loop."""
    import asyncio

    return asyncio.run(bootstrap_hub(consul_url, hub_instance))
