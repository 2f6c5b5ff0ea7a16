"""How the intention writer scales: N concurrent grants then revokes from H hubs against the
fake agent. Prints changes, config writes, CAS conflicts and wall time; asserts nothing.

    python benchmarks/bench_intentions.py [--sizes 10,100,500,1000] [--hubs 1,3]
"""

import argparse
import asyncio
import time

from consulspawner import ownership
from consulspawner.consul import ConsulClient
from consulspawner.entries import KIND, source_entry
from consulspawner.intentions import IntentionWriter
from consulspawner_dev.fakeconsul import FakeConsul

DEST = "trino-coordinator"


async def one_run(url: str, size: int, hubs: int) -> dict:
    clients = [ConsulClient(url) for _ in range(hubs)]
    writers = [IntentionWriter(client, f"hub-{i}") for i, client in enumerate(clients)]

    def entry(hub: int, i: int) -> dict:
        name = f"jupyter-h{hub}-u{i}"
        owner = ownership.Owner(hub=f"hub-{hub}", user=f"u{i}", server="", service=name, expires_at=10**10)
        return source_entry(name, owner)

    started = time.perf_counter()
    await asyncio.gather(*(w.grant(DEST, entry(h, i)) for h, w in enumerate(writers) for i in range(size)))
    granted = time.perf_counter()
    await asyncio.gather(*(w.revoke(DEST, f"jupyter-h{h}-u{i}") for h, w in enumerate(writers) for i in range(size)))
    done = time.perf_counter()
    remaining = await clients[0].get_config(KIND, DEST)
    result = {
        "changes": 2 * size * hubs,
        "writes": sum(w.writes for w in writers),
        "conflicts": sum(w.conflicts for w in writers),
        "grant_s": granted - started,
        "revoke_s": done - granted,
        "left": len((remaining or {}).get("Sources") or []),
    }
    for client in clients:
        await client.close()
    return result


async def main(sizes: list[int], hub_counts: list[int]) -> None:
    print(
        f"{'hubs':>4} {'servers/hub':>11} {'changes':>8} {'writes':>7} {'conflicts':>9} "
        f"{'grant s':>8} {'revoke s':>8} {'left':>4}"
    )
    for hubs in hub_counts:
        for size in sizes:
            with FakeConsul().start() as fake:
                r = await one_run(fake.url, size, hubs)
            print(
                f"{hubs:>4} {size:>11} {r['changes']:>8} {r['writes']:>7} {r['conflicts']:>9} "
                f"{r['grant_s']:>8.3f} {r['revoke_s']:>8.3f} {r['left']:>4}"
            )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,100,500,1000")
    parser.add_argument("--hubs", default="1,3")
    args = parser.parse_args()
    asyncio.run(main([int(x) for x in args.sizes.split(",")], [int(x) for x in args.hubs.split(",")]))
