"""Figure 6 (issue 17, item 10): the mesh's own time per spawn when 10 users spawn at once,
against a lone spawn, through a real JupyterHub (benchmarks/hubs.py, jupyterhub-singleuser).

    python benchmarks/fig6_concurrent_spawns.py [--users 10] [--lone 3] [--smoke] [--minimal-notebook]
        [--sidecar-cpu-shares N]

The mesh's own time of a spawn is read from the hub's log: from ConsulSpawner's progress step
"Registering ... in Consul" (the notebook container is running) to "Connected to the service
mesh" (the grant is written): registration, sidecar start (since the sidecar is created while
the notebook starts, what is left of its create), readiness, grant. Target: the median under 10
concurrent spawns within 2x the median of lone spawns. For scale, the same spawns then run
through a hub of plain DockerSpawner (whole spawns: it has no mesh).
"""

from __future__ import annotations

import argparse
import json
import re
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

import common
import docker
from hubs import BenchHub

from consulspawner_dev.fakeconsul import FakeConsul

MESH, PLAIN = "ConsulSpawner", "DockerSpawner"
# Ten jupyterhub-singleuser starting on two cores take a while. A spawn is followed on its
# progress event stream, as a browser's spawn page does: ten clients asking the hub's REST API
# every 0.1 s were load on the hub's event loop that no real hub sees. Stops are polled.
TIMEOUT, POLL = 300.0, 0.1
# JupyterHub's log line: "[I 2026-12-03 05:50:01.123 JupyterHub spawner:269] <user>: <message>"
LOG_LINE = re.compile(r"^\[\w (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}) [^\]]*\] (\S+): (.*)$")
FIRST, LAST = "Registering ", "Connected to the service mesh"
STEPS = ("Starting the Connect sidecar", "Waiting for the Connect sidecar", "Granting access", LAST)


def mesh_times(log: str, users: list[str]) -> dict[str, dict[str, float]]:
    """Per user: seconds from the notebook running (registering) to each later step, the last
    being the grant written."""
    begun: dict[str, datetime] = {}
    steps: dict[str, dict[str, float]] = {}
    for line in log.splitlines():
        match = LOG_LINE.match(line)
        if not match or match.group(2) not in users:
            continue
        at = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S.%f")
        user, message = match.group(2), match.group(3)
        if message.startswith(FIRST):
            begun[user], steps[user] = at, {}
        elif user in begun:
            for step in STEPS:
                if message.startswith(step):
                    steps[user][step] = (at - begun[user]).total_seconds()
    return {user: marks for user, marks in steps.items() if LAST in marks}


def step_rows(label: str, times: dict[str, dict[str, float]]) -> list:
    return [[label, step, common.summary([t[step] for t in times.values()])["median"]] for step in STEPS]


def spawns(kind: str, images: dict, gateway: str, consul_url: str, identity: dict, args, users: int, lone_runs: int):
    """Through one real hub of ``kind``: ``lone_runs`` spawns one after the other, then ``users``
    at once; (lone users, their spawn times, concurrent users, theirs, the hub's log)."""
    hub = BenchHub(kind, images, gateway, consul_url, identity)
    hub.env["CSBENCH_START_TIMEOUT"] = "300"  # ten jupyterhub-singleuser on two cores
    if args.minimal_notebook:
        hub.env["CSBENCH_NOTEBOOK_CMD"] = json.dumps(common.MINIMAL_NOTEBOOK)
    if args.sidecar_cpu_shares is not None:
        hub.env["CSBENCH_SIDECAR_CPU_SHARES"] = str(args.sidecar_cpu_shares)
    try:
        hub.start()
        lone_users = [f"{common.PREFIX}l{i}" for i in range(lone_runs)]
        lone_wall = []
        for user in lone_users:
            lone_wall.append(hub.spawn_following_progress(user, TIMEOUT))
            hub.stop(user, TIMEOUT, POLL)
        many = [f"{common.PREFIX}c{i}" for i in range(users)]
        with ThreadPoolExecutor(users) as pool:
            many_wall = list(pool.map(lambda u: hub.spawn_following_progress(u, TIMEOUT), many))
        log = (hub.workdir / "jupyterhub.log").read_text()
        with ThreadPoolExecutor(users) as pool:
            list(pool.map(lambda u: hub.stop(u, TIMEOUT, POLL), many))
    finally:
        hub.close()
    return lone_users, lone_wall, many, many_wall, log


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=10, help="concurrent spawns")
    parser.add_argument("--lone", type=int, default=3, help="lone spawns, one after the other")
    parser.add_argument("--smoke", action="store_true", help="2 concurrent, 1 lone")
    parser.add_argument(
        "--minimal-notebook",
        action="store_true",
        help="notebooks that are a minimal HTTP server, not jupyterhub-singleuser (no CPU to start)",
    )
    parser.add_argument(
        "--sidecar-cpu-shares", type=int, help="c.ConsulSpawner.sidecar_cpu_shares (default: the trait's)"
    )
    args = parser.parse_args()
    users, lone_runs = (2, 1) if args.smoke else (args.users, args.lone)
    images = common.images()
    client = docker.from_env()
    results: dict = {}
    with common.docker_network(client) as gateway:
        with FakeConsul(acl_master_token=common.MASTER_TOKEN, host=gateway, check_interval_override=None) as fake:
            identity = common.hub_identity(fake.url, "csbench-hub")  # hub_config.py's hub_instance
            runs = {
                kind: spawns(kind, images, gateway, fake.url, identity, args, users, lone_runs)
                for kind in (MESH, PLAIN)
            }
    client.close()
    lone_users, lone_wall, many, many_wall, log = runs[MESH]
    lone_steps, many_steps = mesh_times(log, lone_users), mesh_times(log, many)
    lone = [t[LAST] for t in lone_steps.values()]
    concurrent = [t[LAST] for t in many_steps.values()]
    common.table(
        ["spawns", "step begins (or, last, ends)", "median s after registering"],
        step_rows("lone", lone_steps) + step_rows(f"{users} at once", many_steps),
        title="Figure 6: where the mesh's time goes",
    )
    if len(lone) != lone_runs or len(concurrent) != users:
        raise RuntimeError(f"hub log had mesh times for {len(lone)} lone and {len(concurrent)} concurrent spawns")
    results = {
        "lone_mesh_s": common.summary(lone),
        "concurrent_mesh_s": common.summary(concurrent),
        "lone_spawn_s": common.summary(lone_wall),
        "concurrent_spawn_s": common.summary(many_wall),
        "lone_mesh_runs_s": [round(v, 3) for v in lone],
        "concurrent_mesh_runs_s": [round(v, 3) for v in concurrent],
        "lone_steps_median_s": step_rows("lone", lone_steps),
        "concurrent_steps_median_s": step_rows("concurrent", many_steps),
        # For scale: the same spawns through plain DockerSpawner (the whole spawn; it has no mesh).
        "plain_lone_spawn_s": common.summary(runs[PLAIN][1]),
        "plain_concurrent_spawn_s": common.summary(runs[PLAIN][3]),
    }
    results["plain_spawn_ratio_median"] = common.ratio(
        results["plain_concurrent_spawn_s"]["median"], results["plain_lone_spawn_s"]["median"]
    )
    ratio = common.ratio(results["concurrent_mesh_s"]["median"], results["lone_mesh_s"]["median"])
    results["ratio_median"] = ratio
    common.table(
        ["spawns", "n", "mesh med s", "mesh p90 s", "spawn med s", "spawn p90 s"],
        [
            [
                "lone",
                lone_runs,
                results["lone_mesh_s"]["median"],
                results["lone_mesh_s"]["p90"],
                results["lone_spawn_s"]["median"],
                results["lone_spawn_s"]["p90"],
            ],
            [
                f"{users} at once",
                users,
                results["concurrent_mesh_s"]["median"],
                results["concurrent_mesh_s"]["p90"],
                results["concurrent_spawn_s"]["median"],
                results["concurrent_spawn_s"]["p90"],
            ],
            [
                "plain lone",
                lone_runs,
                "-",
                "-",
                results["plain_lone_spawn_s"]["median"],
                results["plain_lone_spawn_s"]["p90"],
            ],
            [
                f"plain {users} at once",
                users,
                "-",
                "-",
                results["plain_concurrent_spawn_s"]["median"],
                results["plain_concurrent_spawn_s"]["p90"],
            ],
        ],
        title="Figure 6: the mesh's own time per spawn (notebook running -> grant written), real hub",
    )
    targets = {"mesh_median_le_2x_lone": common.target(ratio <= 2.0, ratio, 2.0, "concurrent/lone median mesh time")}
    run_args = {
        "users": users,
        "lone": lone_runs,
        "smoke": args.smoke,
        "minimal_notebook": args.minimal_notebook,
        "sidecar_cpu_shares": args.sidecar_cpu_shares,
    }
    return common.emit("6-concurrent-spawns", run_args, results, targets)


if __name__ == "__main__":
    main()
