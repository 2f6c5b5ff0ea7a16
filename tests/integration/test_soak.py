"""Soak: 200 start/stop cycles of 5 users on real containers while the fake agent misbehaves at
random (5xx answers, slow answers, answers that never arrive, the agent paused), then Consul
holds exactly the live servers' objects (none), Docker exactly their containers (none), and a
foreign intention source is byte-identical to what it was."""

import asyncio
import copy
import logging
import os
import random
import re
import time

from consulspawner import spawner as spawner_module
from consulspawner.entries import KIND

from .conftest import NAME_PREFIX, NOTHING, container_ids, hub_stop, mesh_objects, wait_for

DEST = "trino-coordinator"
ORCHESTRATOR = {"Name": "orchestrator", "Action": "allow", "Description": "the report orchestrator (ops)"}
CYCLES = 200
# The auth method's MaxTokenTTL in these tests (consulspawner_dev.bootstrap.bootstrap_identity).
TOKEN_LIFETIME = 3600
# What a spawner logs for each token it receives (mesh.ServerMesh.login).
RECEIVED = re.compile(r"^Logged in Consul token ([0-9a-f-]{36}) ")
USERS = 5
# Every kind of call a lifecycle makes, so every step meets faults.
CALLS = [
    ("POST", r"^/v1/acl/login$"),
    ("POST", r"^/v1/acl/logout$"),
    ("PUT", r"^/v1/agent/service/register$"),
    ("PUT", r"^/v1/agent/service/deregister/"),
    ("GET", r"^/v1/agent/service/"),
    ("PUT", r"^/v1/agent/check/pass/"),
    ("GET", r"^/v1/health/service/"),
    ("GET", r"^/v1/config/service-intentions/"),
    ("PUT", r"^/v1/config$"),
    ("DELETE", r"^/v1/config/service-intentions/"),
]


async def test_soak_start_stop_cycles_with_random_consul_faults(
    make_spawner, admin, mesh_consul, docker_client, user_name, caplog
):
    caplog.set_level(logging.INFO, logger="traitlets")

    def received_tokens():
        """Accessors of every token whose login answer reached a spawner (it logs each one)."""
        found = (RECEIVED.search(r.getMessage()) for r in caplog.records if r.name == "traitlets")
        return {m.group(1) for m in found if m}

    seed = int(os.environ.get("CONSULSPAWNER_SOAK_SEED", time.time()))
    rng = random.Random(seed)
    print(f"\nsoak seed {seed}")
    assert await admin.set_config({"Kind": KIND, "Name": DEST, "Sources": [ORCHESTRATOR]}, cas=0)
    orchestrator = copy.deepcopy((await admin.get_config(KIND, DEST))["Sources"][0])

    users = [f"{user_name}{i}" for i in range(USERS)]
    spawners = {
        user: make_spawner(
            user, consul_request_timeout=1.5, consul_retry_budget=3, keeper_interval=0.5, sidecar_ready_timeout=30
        )
        for user in users
    }
    counts = {"cycles": 0, "started": 0, "failed_starts": 0, "faults": 0}
    done = asyncio.Event()

    async def misbehave():
        while not done.is_set():
            method, path = rng.choice(CALLS)
            kind = rng.choice(["5xx", "slow", "lost answer", "paused", "calm"])
            if kind == "5xx":
                mesh_consul.fail(method, path, status=rng.choice([500, 503]), times=rng.randint(1, 3))
            elif kind == "slow":
                mesh_consul.hang(method, path, times=rng.randint(1, 2), seconds=rng.uniform(0.2, 2.5))
            elif kind == "lost answer":  # Consul acts, the client times out without the answer
                mesh_consul.delay_response(method, path, seconds=3, times=1)
            elif kind == "paused":
                mesh_consul.stop()
                await asyncio.sleep(rng.uniform(0.3, 2.0))
                mesh_consul.restart()
            counts["faults"] += kind != "calm"
            await asyncio.sleep(rng.uniform(0.3, 1.5))

    async def cycle_user(user):
        spawner = spawners[user]
        while counts["cycles"] < CYCLES:
            counts["cycles"] += 1
            try:
                await spawner.start()
            except Exception:
                counts["failed_starts"] += 1  # a clean failure: rolled back, checked at the end
                spawner.clear_state()
                continue
            counts["started"] += 1
            if rng.random() < 0.5:
                await spawner.poll()
            await hub_stop(spawner)

    faults = asyncio.ensure_future(misbehave())
    began = time.monotonic()
    try:
        await asyncio.gather(*(cycle_user(user) for user in users))
    finally:
        done.set()
        await faults
        mesh_consul.clear_faults()
        mesh_consul.start()  # serving again if the last fault left it paused (no-op otherwise)
    print(f"soak: {counts} in {time.monotonic() - began:.0f}s")
    assert counts["started"] >= CYCLES // 4, counts  # the faults left room for real work

    left = {}

    def lost_logins():
        """Tokens of a login whose answer never reached the hub (a "lost answer" or a pause
        mid-call): Consul made them, nobody knows their secret, and the hub cannot log them out
        (README, "A lost token"). Every other object must be gone."""
        return {t for user in users for t in left[user]["tokens"]} - received_tokens()

    async def clean():
        left.clear()
        left.update({user: await mesh_objects(admin, f"jupyter-{user}") for user in users})
        left["pending teardowns"] = len(spawner_module._pending_teardowns)
        known = [{**left[user], "tokens": sorted(set(left[user]["tokens"]) - lost_logins())} for user in users]
        return not left["pending teardowns"] and all(objects == NOTHING for objects in known)

    try:
        await wait_for(clean, timeout=180, interval=1, message="Consul to hold nothing of the stopped servers")
    except AssertionError as e:
        raise AssertionError(f"{e}; left: {left}; tokens the hub received: {len(received_tokens())}") from None
    # Those tokens grant nothing (no source, no registration: checked above) and Consul deletes
    # them at the auth method's MaxTokenTTL.
    print(f"soak: {len(lost_logins())} token(s) of logins whose answer was lost")
    mesh_consul.advance(TOKEN_LIFETIME + 1)
    assert all([await mesh_objects(admin, f"jupyter-{user}") == NOTHING for user in users])
    await wait_for(
        lambda: not container_ids(docker_client, name=f"jupyter-{NAME_PREFIX}"),
        timeout=60,
        message="Docker to hold no container of the stopped servers",
    )
    assert (await admin.get_config(KIND, DEST))["Sources"] == [orchestrator]
