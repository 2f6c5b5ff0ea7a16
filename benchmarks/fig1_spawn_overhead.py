"""Figure 1 (issue 12): spawn and stop overhead of ConsulSpawner against plain DockerSpawner,
same notebook image, real Docker, fake Consul at its real default timings, interleaved A B A B.

    python benchmarks/fig1_spawn_overhead.py [--runs 10] [--setting b|a|both] [--smoke]

(b) minimal: a minimal HTTP server as the notebook (the mesh's pure cost); from ``start()`` to
    the server answering HTTP at the address start() returned, and ``stop()``.
(a) hub: a real JupyterHub + configurable-http-proxy per spawner class (two hubs, same
    config but for the class), ``jupyterhub-singleuser``; from ``POST /users/<u>/server`` to
    the hub reporting the server ready, and from ``DELETE`` to the server gone.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import time
import urllib.request
import uuid

import common
import docker
from hubs import BenchHub

from consulspawner_dev.fakeconsul import FakeConsul

PLAIN, MESH = "DockerSpawner", "ConsulSpawner"


def make_spawner(kind: str, user_name: str, settings: dict):
    """A spawner built as JupyterHub builds one (cf. consulspawner_dev.standalone)."""
    from types import SimpleNamespace

    from dockerspawner import DockerSpawner
    from jupyterhub.objects import Hub
    from traitlets.config import Config

    from consulspawner import ConsulSpawner

    config = Config()
    for key, value in settings["docker"].items():
        setattr(config.DockerSpawner, key, value)
    if kind == MESH:
        for key, value in settings["consul"].items():
            setattr(config.ConsulSpawner, key, value)
    cls = ConsulSpawner if kind == MESH else DockerSpawner
    user = SimpleNamespace(name=user_name, url=f"/user/{user_name}/", escaped_name=user_name, id=1, settings={})
    return cls(
        user=user, hub=Hub(), config=config, api_token=uuid.uuid4().hex, oauth_client_id=f"jupyter-user-{user_name}"
    )


async def http_answers(url: str, deadline: float = 60.0) -> None:
    def once() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                return response.status < 500
        except Exception:
            return False

    end = time.monotonic() + deadline
    while not await asyncio.to_thread(once):
        if time.monotonic() > end:
            raise TimeoutError(f"{url} did not answer within {deadline}s")
        await asyncio.sleep(0.01)


async def minimal(runs: int, images: dict, gateway: str, consul_url: str) -> dict:
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
            consul_address=consul_url,
            sidecar_image=images["CONSULSPAWNER_SIDECAR_IMAGE"],
            sidecar_command=common.SIDECAR_COMMAND,
            hub_instance="csbench",
            **(await common.bootstrap_hub(consul_url, "csbench")),
        ),
    }
    times: dict = {PLAIN: {"spawn": [], "stop": []}, MESH: {"spawn": [], "stop": []}, "phases": []}
    for i in range(runs):
        for kind in (PLAIN, MESH):  # interleaved: A B A B
            spawner = make_spawner(
                kind, f"{common.PREFIX}{'p' if kind == PLAIN else 'm'}{i}{uuid.uuid4().hex[:4]}", settings
            )
            marks: list = []
            if kind == MESH:
                watch_phases(spawner, marks)
            started = time.perf_counter()
            ip, port = await spawner.start()
            marks.append(("start() returned", time.perf_counter()))
            await http_answers(f"http://{ip}:{port}/")
            marks.append(("answers HTTP", time.perf_counter()))
            times[kind]["spawn"].append(time.perf_counter() - started)
            if kind == MESH:
                times["phases"].append([(what, at - started) for what, at in marks])
            started = time.perf_counter()
            await spawner.stop()
            times[kind]["stop"].append(time.perf_counter() - started)
            if kind == MESH:
                await spawner.forget()
    await common.close_shared_clients()
    return times


def watch_phases(spawner, marks: list) -> None:
    """Record when each of the spawner's progress messages (one per mesh step) is reported."""
    report_step = getattr(spawner, "_report", None)
    if report_step is None:
        return

    def timed(progress, message):
        marks.append((re.sub(r"jupyter-[a-z0-9-]+", "<service>", message), time.perf_counter()))
        return report_step(progress, message)

    spawner._report = timed


def phase_table(all_marks: list) -> list:
    """Median start time of each mesh step since start() was called, in order."""
    steps: dict[str, list[float]] = {}
    for marks in all_marks:
        for what, at in marks:
            steps.setdefault(what, []).append(at)
    rows = sorted(([what, common.summary(at)["median"]] for what, at in steps.items()), key=lambda r: r[1])
    return rows


def report(setting: str, times: dict) -> tuple[dict, list]:
    out, rows = {}, []
    for phase in ("spawn", "stop"):
        plain, mesh = common.summary(times[PLAIN][phase]), common.summary(times[MESH][phase])
        paired = [m - p for m, p in zip(times[MESH][phase], times[PLAIN][phase], strict=True)]
        out[phase] = {
            "plain": plain,
            "mesh": mesh,
            # each mesh run minus the plain run just before it: robust to drift on a shared machine
            "paired_added_median_s": round(common.summary(paired)["median"], 4),
            "ratio_median": common.ratio(mesh["median"], plain["median"]),
            "ratio_p90": common.ratio(mesh["p90"], plain["p90"]),
            "added_median_s": round(mesh["median"] - plain["median"], 4),
            # every run, for the distributions plot (benchmarks/plot_fig1.py)
            "plain_runs_s": [round(v, 4) for v in times[PLAIN][phase]],
            "mesh_runs_s": [round(v, 4) for v in times[MESH][phase]],
        }
        rows.append(
            [
                setting,
                phase,
                plain["n"],
                plain["median"],
                plain["p90"],
                mesh["median"],
                mesh["p90"],
                out[phase]["ratio_median"],
                out[phase]["ratio_p90"],
                out[phase]["added_median_s"],
                out[phase]["paired_added_median_s"],
            ]
        )
    return out, rows


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", "-n", type=int, default=10)
    parser.add_argument("--setting", choices=["a", "b", "both"], default="both")
    parser.add_argument("--smoke", action="store_true", help="2 runs")
    args = parser.parse_args()
    runs = 2 if args.smoke else args.runs
    images = common.images()
    client = docker.from_env()
    results, rows, targets = {}, [], {}
    with common.docker_network(client) as gateway:
        with FakeConsul(acl_master_token=common.MASTER_TOKEN, host=gateway, check_interval_override=None) as fake:
            if args.setting in ("b", "both"):
                times = asyncio.run(minimal(runs, images, gateway, fake.url))
                results["b_minimal"], new = report("b minimal", times)
                rows += new
                phases = phase_table(times["phases"])
                results["b_minimal"]["mesh_phases_median_s"] = phases
                common.table(
                    ["ConsulSpawner step (b)", "median s since start()"],
                    phases,
                    title="Figure 1 (b): when each step of a ConsulSpawner spawn begins",
                )
            if args.setting in ("a", "both"):
                identity = common.hub_identity(fake.url, "csbench-hub")  # hub_config.py's hub_instance
                hubs = {kind: BenchHub(kind, images, gateway, fake.url, identity) for kind in (PLAIN, MESH)}
                try:
                    for hub in hubs.values():
                        hub.start()
                    times = {kind: {"spawn": [], "stop": []} for kind in hubs}
                    for i in range(runs):
                        for kind, hub in hubs.items():  # interleaved: A B A B
                            spawn_s, stop_s = hub.spawn_and_stop(f"{common.PREFIX}h{kind[0].lower()}{i}")
                            times[kind]["spawn"].append(spawn_s)
                            times[kind]["stop"].append(stop_s)
                finally:
                    for hub in hubs.values():
                        hub.close()
                results["a_hub"], new = report("a hub", times)
                rows += new
    client.close()
    common.table(
        [
            "setting",
            "phase",
            "n",
            "plain med",
            "plain p90",
            "mesh med",
            "mesh p90",
            "x med",
            "x p90",
            "added s",
            "paired s",
        ],
        rows,
        title="Figure 1: DockerSpawner (plain) vs ConsulSpawner (mesh), same image, interleaved, seconds",
    )
    if "a_hub" in results:
        r = results["a_hub"]["spawn"]["ratio_median"]
        targets["a_spawn_median_le_1.10x"] = common.target(r <= 1.10, r, 1.10, "hub: mesh/plain median spawn")
        r = results["a_hub"]["stop"]["ratio_median"]
        targets["a_stop_median_le_1.10x"] = common.target(r <= 1.10, r, 1.10, "hub: mesh/plain median stop")
    if "b_minimal" in results:
        added = results["b_minimal"]["spawn"]["added_median_s"]
        targets["b_added_le_0.2s"] = common.target(added <= 0.2, added, 0.2, "minimal: median seconds added")
        r = results["b_minimal"]["stop"]["ratio_median"]
        targets["b_stop_median_le_1.10x"] = common.target(r <= 1.10, r, 1.10, "minimal: mesh/plain median stop")
    return common.emit(
        "1-spawn-overhead", {"runs": runs, "setting": args.setting, "smoke": args.smoke}, results, targets
    )


if __name__ == "__main__":
    main()
