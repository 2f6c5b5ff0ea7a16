"""The janitor's own metrics endpoint (--metrics-port): passes, deletions and failures, scraped
from a janitor process running against the fake agent."""

import os
import socket
import subprocess
import sys
import time
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from consulspawner import ownership
from consulspawner.entries import L4, source_entry
from consulspawner.intentions import IntentionWriter

from .conftest import MASTER_TOKEN

HUB = "hub-m"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def janitor(url: str, port: int, *extra: str) -> subprocess.Popen:
    env = dict(os.environ, CONSUL_HTTP_TOKEN=MASTER_TOKEN)
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "consulspawner.janitor",
            "--consul-address",
            url,
            "--interval",
            "0.2",
            "--metrics-port",
            str(port),
            *extra,
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_for(port: int, proc: subprocess.Popen, condition, deadline: float = 60.0) -> dict:
    end = time.monotonic() + deadline
    seen: dict = {}
    while time.monotonic() < end:
        assert proc.poll() is None, proc.communicate()[0]
        try:
            seen = scrape(port)
        except OSError:
            seen = {}
        if seen and condition(seen):
            return seen
        time.sleep(0.1)
    raise AssertionError(f"condition not met within {deadline}s; last scrape: {seen}")


def stop(proc: subprocess.Popen) -> str:
    proc.terminate()
    out, _ = proc.communicate(timeout=30)
    return out


async def test_passes_and_deletions_are_served_on_the_janitors_port(acl_consul, acl_client):
    writer = IntentionWriter(acl_client, HUB)
    for user in ("ann", "ben"):
        owner = ownership.Owner(hub=HUB, user=user, server="", service=f"jupyter-{user}", expires_at=1, incarnation="i")
        await writer.grant("trino", source_entry(owner.service, owner, L4))
    port = free_port()
    proc = janitor(acl_consul.url, port, "--hub-instance", HUB)
    try:
        passes = ("consulspawner_janitor_passes_total", (("outcome", "success"),))
        seen = wait_for(port, proc, lambda m: m.get(passes, 0) >= 2)
    finally:
        out = stop(proc)
    assert seen[("consulspawner_janitor_deletions_total", (("kind", "intention"),))] == 2
    assert seen[("consulspawner_janitor_deletions_total", (("kind", "token"),))] == 0
    assert seen[("consulspawner_janitor_deletion_failures_total", (("kind", "intention"),))] == 0
    assert seen[("consulspawner_janitor_passes_total", (("outcome", "failure"),))] == 0
    assert seen[("consulspawner_janitor_last_success_timestamp_seconds", ())] > 0
    assert not any(name.startswith("consulspawner_mesh_") for name, _ in seen)  # not the hub's series
    assert MASTER_TOKEN not in out


def test_failed_passes_are_counted():
    with socket.socket() as s:  # a port nobody listens on: Consul unreachable
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    port = free_port()
    proc = janitor(dead, port)
    try:
        failed = ("consulspawner_janitor_passes_total", (("outcome", "failure"),))
        seen = wait_for(port, proc, lambda m: m.get(failed, 0) >= 1)
    finally:
        stop(proc)
    assert seen[("consulspawner_janitor_passes_total", (("outcome", "success"),))] == 0
