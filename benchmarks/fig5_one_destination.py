"""Figure 5 (issue 12): one destination at scale. Time and bytes of one grant when the
``service-intentions`` entry of trino-coordinator already holds N sources, for the current
design (one config entry per destination, read + CAS write of the whole entry by
``IntentionWriter``) against per-source writes (``PUT /v1/connect/intentions/exact``).

    python benchmarks/fig5_one_destination.py [--sizes 10,100,1000,5000] [--grants 5] [--burst 50] [--smoke]

For each N: the entry's size (JSON as served, L4 and L7 sources), then ``--grants`` grants one
after another (median time, bytes on the wire per grant: what the hub sends plus what it
reads), and a burst of ``--burst`` concurrent grants (wall time, writes, bytes). Consul is the
fake agent over real HTTP in its own process, default timings. The README cites Consul's own
limits on the size of one entry; this prints where the measured entry size meets them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
import uuid

import common
from fakeproc import FakeConsulProcess

from consulspawner import ownership
from consulspawner.consul import ConsulClient
from consulspawner.entries import KIND, L4, L7, source_entry
from consulspawner.intentions import IntentionWriter
from consulspawner.plan import TRINO_DESTINATION

HUB = "csbench-hub"
# hashicorp/raft api.go: SuggestedMaxDataSize = 512 * 1024 ("no actual hard checking");
# hashicorp/consul agent/consul/rpc.go: raftWarnSize = 1024 * 1024 (a warning, then applied).
RAFT_SUGGESTED_MAX = 512 * 1024
RAFT_WARN_SIZE = 1024 * 1024


class CountingClient(ConsulClient):
    """A ConsulClient that tallies the JSON bytes it sends and receives (bodies only)."""

    sent = 0
    received = 0

    async def request(self, method, path, **kwargs):
        body = kwargs.get("body")
        if body is not None:
            self.sent += len(json.dumps(body))
        response = await super().request(method, path, **kwargs)
        if response.body is not None:
            self.received += len(json.dumps(response.body))
        return response


def owner(i: int, tag: str) -> ownership.Owner:
    name = f"jupyter-{common.PREFIX}-{tag}-{i:05d}"
    return ownership.Owner(
        hub=HUB,
        user=f"{common.PREFIX}{tag}{i:05d}",
        server="",
        service=name,
        expires_at=int(time.time()) + 600,
        incarnation=uuid.uuid4().hex,
    )


def sources(n: int, mode: str) -> list[dict]:
    return [
        source_entry(o.service, o, mode, trino_user=o.user if mode == L7 else None)
        for o in (owner(i, "pre") for i in range(n))
    ]


async def prefill(client: ConsulClient, n: int, mode: str) -> int:
    """Put N sources into the destination's entry in one write; returns the entry's JSON size."""
    await client.delete_config(KIND, TRINO_DESTINATION)
    if n:
        ok = await client.set_config({"Kind": KIND, "Name": TRINO_DESTINATION, "Sources": sources(n, mode)})
        assert ok, "prefill refused"
    entry = await client.get_config(KIND, TRINO_DESTINATION)
    return len(json.dumps(entry)) if entry else 0


async def exact_grant(client: ConsulClient, entry: dict) -> None:
    """The alternative: one source through the legacy-style per-source endpoint. Consul applies
    it on the server (an IntentionMutation of one source in the raft log); no read, no CAS."""
    body = {"SourceType": "consul", "Description": entry["Description"]}
    if "Action" in entry:
        body["Action"] = entry["Action"]
    else:
        body["Permissions"] = entry["Permissions"]
    await client.request(
        "PUT",
        "/v1/connect/intentions/exact",
        params={"source": entry["Name"], "destination": TRINO_DESTINATION},
        body=body,
    )


async def measure(url: str, n: int, grants: int, burst: int, design: str) -> dict:
    client = CountingClient(url, common.MASTER_TOKEN)
    entry_bytes = await prefill(client, n, L4)
    writer = IntentionWriter(client, HUB)

    async def one(o: ownership.Owner) -> None:
        entry = source_entry(o.service, o, L4)
        if design == "entry":
            await writer.grant(TRINO_DESTINATION, entry)
        else:
            await exact_grant(client, entry)

    times, per_grant_bytes = [], []
    for i in range(grants):
        client.sent = client.received = 0
        started = time.perf_counter()
        await one(owner(i, f"one{n}"))
        times.append(time.perf_counter() - started)
        per_grant_bytes.append(client.sent + client.received)
    client.sent = client.received = 0
    writes_before = writer.writes
    started = time.perf_counter()
    await asyncio.gather(*(one(owner(i, f"burst{n}")) for i in range(burst)))
    burst_s = time.perf_counter() - started
    burst_bytes = client.sent + client.received
    final = await client.get_config(KIND, TRINO_DESTINATION)
    held = {s["Name"] for s in (final or {}).get("Sources") or []}
    expected = {owner(i, f"burst{n}").service for i in range(burst)} | {
        owner(i, f"one{n}").service for i in range(grants)
    }
    await client.close()
    return {
        "n": n,
        "design": design,
        "entry_bytes_before": entry_bytes,
        "grant_median_s": statistics.median(times),
        "grant_max_s": max(times),
        "grant_bytes": int(statistics.median(per_grant_bytes)),
        "burst": burst,
        "burst_s": burst_s,
        "burst_bytes": burst_bytes,
        "burst_config_writes": writer.writes - writes_before if design == "entry" else burst,
        "missing_after": len(expected - held),
    }


async def per_source_bytes(url: str) -> dict:
    """JSON bytes per source in the entry as Consul serves it, for L4 and L7 sources."""
    client = ConsulClient(url, common.MASTER_TOKEN)
    # L7 permissions need an http destination (Consul refuses them on tcp).
    await client.set_config({"Kind": "service-defaults", "Name": TRINO_DESTINATION, "Protocol": "http"})
    out = {}
    for mode in (L4, L7):
        small = await prefill(client, 100, mode)
        large = await prefill(client, 1100, mode)
        out[mode] = (large - small) / 1000
    await client.delete_config(KIND, TRINO_DESTINATION)
    await client.delete_config("service-defaults", TRINO_DESTINATION)
    await client.close()
    return out


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,100,1000,5000")
    parser.add_argument("--grants", type=int, default=5, help="sequential grants measured per size")
    parser.add_argument("--burst", type=int, default=50, help="concurrent grants in the burst per size")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes for the smoke test")
    args = parser.parse_args()
    sizes = [10, 100] if args.smoke else [int(x) for x in args.sizes.split(",")]
    grants, burst = (2, 5) if args.smoke else (args.grants, args.burst)

    rows, results = [], []
    with FakeConsulProcess(acl_master_token=common.MASTER_TOKEN, host="127.0.0.1") as fake:
        per_source = asyncio.run(per_source_bytes(fake.url))
        for n in sizes:
            for design in ("entry", "exact"):
                r = asyncio.run(measure(fake.url, n, grants, burst, design))
                results.append(r)
                rows.append(
                    [
                        n,
                        design,
                        r["entry_bytes_before"],
                        r["grant_median_s"],
                        r["grant_bytes"],
                        r["burst_s"],
                        r["burst_config_writes"],
                        r["burst_bytes"],
                        r["missing_after"],
                    ]
                )
    common.table(
        ["N", "design", "entry B", "grant s", "grant B", f"burst{burst} s", "writes", "burst B", "lost"],
        rows,
        title="Figure 5: one grant to trino-coordinator whose entry already holds N sources "
        "(entry = read + CAS write of the whole entry; exact = PUT /v1/connect/intentions/exact)",
    )
    limits = {}
    for mode, per in per_source.items():
        limits[mode] = {
            "bytes_per_source": round(per, 1),
            "sources_at_raft_suggested_max_512KiB": int(RAFT_SUGGESTED_MAX / per),
            "sources_at_raft_warn_1MiB": int(RAFT_WARN_SIZE / per),
        }
        print(
            f"{mode}: {per:.0f} JSON bytes per source -> the entry reaches raft's suggested max (512 KiB) at "
            f"~{limits[mode]['sources_at_raft_suggested_max_512KiB']} sources and Consul's 1 MiB "
            f"large-entry warning at ~{limits[mode]['sources_at_raft_warn_1MiB']}"
        )
    by = {(r["n"], r["design"]): r for r in results}
    largest = max(sizes)
    targets = {
        "no_lost_grants": common.target(
            all(r["missing_after"] == 0 for r in results),
            sum(r["missing_after"] for r in results),
            0,
            "grants missing after bursts",
        ),
        "entry_under_raft_suggested_max_at_largest_n": common.target(
            by[(largest, "entry")]["entry_bytes_before"] < RAFT_SUGGESTED_MAX,
            by[(largest, "entry")]["entry_bytes_before"],
            RAFT_SUGGESTED_MAX,
            f"entry JSON bytes at N={largest} vs raft.SuggestedMaxDataSize",
        ),
    }
    return common.emit(
        "5-one-destination",
        {"sizes": sizes, "grants": grants, "burst": burst, "smoke": args.smoke},
        {"rows": results, "limits": limits},
        targets,
    )


if __name__ == "__main__":
    main()
