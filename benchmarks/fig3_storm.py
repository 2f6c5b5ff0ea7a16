"""Figure 3 (issue 12): a storm of K concurrent spawns, then K concurrent stops, of the mesh layer.

Docker is stubbed: each spawn drives ``consulspawner.mesh.ServerMesh`` exactly as
``ConsulSpawner`` sequences it (mint token -> [notebook] -> register at its address ->
[sidecar, ready] -> grant) and each stop as its teardown does (revoke -> [containers] ->
deregister and delete tokens together). All servers share one ``ConsulClient`` and one
``IntentionWriter``, as the spawners of one hub do. Consul is the fake agent over real HTTP,
in its own process, at its default timings.

    python benchmarks/fig3_storm.py [--servers 500] [--smoke]

Reports wall time, p50/p95 of the per-server mesh time, config-entry writes (counted at the
fake), CAS conflicts, and lost grants (sources that should be in the entry and are not; must
be 0), the same for the stops (sources left behind).
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid

import common
from fakeproc import FakeConsulProcess

from consulspawner import ownership
from consulspawner.consul import ConsulClient
from consulspawner.entries import KIND
from consulspawner.identity import Signer
from consulspawner.intentions import IntentionWriter
from consulspawner.mesh import MeshState, ServerMesh, new_incarnation
from consulspawner.plan import TRINO_DESTINATION, MeshPlan, MeshSettings, build_plan

HUB = "csbench-hub"


def pin_sidecar_port(port: int) -> None:
    """Emulate the proposed change (README, "proposed changes"): register every sidecar on a
    fixed port at its own notebook's address, instead of letting the agent pick one from its
    sidecar range (21000..21255: 256 sidecars per agent)."""
    original = MeshPlan.registration

    def registration(self, address=None):
        definition = original(self, address)
        definition["Connect"]["SidecarService"]["Port"] = port
        return definition

    MeshPlan.registration = registration


async def storm(url: str, servers: int) -> dict:
    identity = await common.bootstrap_hub(url, HUB)
    signer = Signer.from_file(identity["jwt_signing_key_file"])
    client = ConsulClient(url, identity["consul_token"])
    writer = IntentionWriter(client, HUB)
    settings = MeshSettings(hub_instance=HUB)
    users = [f"{common.PREFIX}{i:05d}{uuid.uuid4().hex[:4]}" for i in range(servers)]
    meshes = [
        ServerMesh(
            client,
            writer,
            build_plan(settings, user, trino_user=user, incarnation=new_incarnation()),
            MeshState(),
            retry_budget=15.0,
        )
        for user in users
    ]

    async def spawn(i: int, mesh: ServerMesh) -> float:
        started = time.perf_counter()
        await mesh.login(signer, identity["auth_method"], "consul", "jupyter-")
        await mesh.register(f"10.99.{i // 250}.{i % 250 + 1}")  # the notebook's address (stub)
        await mesh.grant()
        return time.perf_counter() - started

    async def stop(mesh: ServerMesh) -> float:
        started = time.perf_counter()
        await mesh.revoke()
        await asyncio.gather(mesh.deregister(), mesh.logout())
        return time.perf_counter() - started

    out: dict = {}
    began, cpu = time.perf_counter(), time.process_time()
    spawn_results = await asyncio.gather(*(spawn(i, m) for i, m in enumerate(meshes)), return_exceptions=True)
    out["spawn_wall_s"] = time.perf_counter() - began
    out["spawn_hub_cpu_s"] = time.process_time() - cpu  # this process: the hub's side, not the agent's
    spawn_times = [r for r in spawn_results if isinstance(r, float)]
    out["spawn_errors"] = sorted({repr(r) for r in spawn_results if not isinstance(r, float)})[:5]
    out["spawn"] = common.summary(spawn_times)
    out["spawn_failed"] = len(spawn_results) - len(spawn_times)
    out["spawn_writes"], out["spawn_conflicts"] = writer.writes, writer.conflicts

    entry = await client.get_config(KIND, TRINO_DESTINATION)
    present = {s["Name"]: s for s in (entry or {}).get("Sources") or []}
    granted = [m for m, r in zip(meshes, spawn_results, strict=True) if isinstance(r, float)]
    lost = [
        m.state.service_name
        for m in granted
        if m.state.service_name not in present
        or not m.state.owns(ownership.parse(present[m.state.service_name].get("Description")))
    ]
    out["lost_grants"] = len(lost)
    out["entry_sources"] = len(present)

    writes_before, conflicts_before = writer.writes, writer.conflicts
    began, cpu = time.perf_counter(), time.process_time()
    stop_results = await asyncio.gather(*(stop(m) for m in meshes), return_exceptions=True)
    out["stop_wall_s"] = time.perf_counter() - began
    out["stop_hub_cpu_s"] = time.process_time() - cpu
    stop_times = [r for r in stop_results if isinstance(r, float)]
    out["stop_errors"] = sorted({repr(r) for r in stop_results if not isinstance(r, float)})[:5]
    out["stop"] = common.summary(stop_times)
    out["stop_failed"] = len(stop_results) - len(stop_times)
    out["stop_writes"] = writer.writes - writes_before
    out["stop_conflicts"] = writer.conflicts - conflicts_before
    entry = await client.get_config(KIND, TRINO_DESTINATION)
    out["left_after_stops"] = len((entry or {}).get("Sources") or [])
    out["services_left"] = len([s for s in await client.agent_services() if s.startswith("jupyter-")])
    await client.close()
    return out


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", "-k", type=int, default=500, help="K, concurrent spawns (default 500)")
    parser.add_argument(
        "--sidecar-port",
        type=int,
        default=0,
        help="register sidecars on this fixed port (the proposed change); 0: as the code does "
        "today, the agent assigns one from 21000..21255",
    )
    parser.add_argument(
        "--fake-as-is",
        action="store_true",
        help="keep the fake's O(checks^2)-per-registration alias refresh (default: the "
        "benchmark replaces it by an indexed one with the same results; see fakeproc.py)",
    )
    parser.add_argument("--smoke", action="store_true", help="tiny size (K=20) for the smoke test")
    args = parser.parse_args()
    k = 20 if args.smoke else args.servers
    if args.sidecar_port:
        pin_sidecar_port(args.sidecar_port)

    with FakeConsulProcess(
        acl_master_token=common.MASTER_TOKEN, host="127.0.0.1", fast_aliases=not args.fake_as_is
    ) as fake:
        r = asyncio.run(storm(fake.url, k))
        requests = fake.requests
    config_puts = sum(1 for m, p in requests if m == "PUT" and p == "/v1/config")
    config_deletes = sum(1 for m, p in requests if m == "DELETE" and p.startswith("/v1/config/"))
    config_reads = sum(1 for m, p in requests if m == "GET" and p.startswith("/v1/config/"))

    rows = [
        [
            phase,
            k,
            r[f"{phase}_wall_s"],
            r[f"{phase}_hub_cpu_s"],
            r[phase].get("median"),
            r[phase].get("p95"),
            r[f"{phase}_writes"],
            r[f"{phase}_conflicts"],
            tally,
            r[f"{phase}_failed"],
        ]
        for phase, tally in (("spawn", f"lost {r['lost_grants']}"), ("stop", f"left {r['left_after_stops']}"))
    ]
    common.table(
        ["phase", "K", "wall s", "hub CPU s", "p50 s", "p95 s", "cfg writes", "CAS confl", "sources", "failed"],
        rows,
        title=f"Figure 3: storm of {k} concurrent mesh spawns, then {k} stops (fake Consul, own process)",
    )
    print(
        f"at the fake: {config_puts} PUT /v1/config, {config_deletes} DELETE /v1/config/..., "
        f"{config_reads} GET /v1/config/... ; {len(requests)} requests in all"
    )
    for err in r["spawn_errors"] + r["stop_errors"]:
        print("error:", err)
    limit = k / 10
    targets = {
        "all_spawns_succeed": common.target(
            r["spawn_failed"] == 0 and r["stop_failed"] == 0,
            [r["spawn_failed"], r["stop_failed"]],
            [0, 0],
            "failed spawns, stops",
        ),
        "spawn_writes_le_k_over_10": common.target(
            r["spawn_writes"] <= limit, r["spawn_writes"], limit, "config-entry writes during K spawns"
        ),
        "stop_writes_le_k_over_10": common.target(
            r["stop_writes"] <= limit, r["stop_writes"], limit, "config-entry writes during K stops"
        ),
        "spawn_p95_lt_1s": common.target(
            r["spawn"].get("p95", 99) < 1.0, r["spawn"].get("p95"), 1.0, "p95 per-spawn mesh time, s"
        ),
        "stop_p95_lt_1s": common.target(
            r["stop"].get("p95", 99) < 1.0, r["stop"].get("p95"), 1.0, "p95 per-stop mesh time, s"
        ),
        "no_lost_grants": common.target(
            r["lost_grants"] == 0 and r["left_after_stops"] == 0,
            [r["lost_grants"], r["left_after_stops"]],
            [0, 0],
            "lost grants after spawns, sources left after stops",
        ),
    }
    results = {
        **r,
        "k": k,
        "fake_config_puts": config_puts,
        "fake_config_deletes": config_deletes,
        "fake_config_reads": config_reads,
        "fake_requests": len(requests),
    }
    settings = {"servers": k, "sidecar_port": args.sidecar_port, "fake_as_is": args.fake_as_is, "smoke": args.smoke}
    return common.emit("3-storm", settings, results, targets)


if __name__ == "__main__":
    main()
