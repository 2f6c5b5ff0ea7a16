"""Smoke run of the issue-12 figures that need no Docker (2: Consul calls, with the Docker
stub; 3: storm; 5: one destination), with tiny sizes: each prints a table and, as its last
line, one JSON object of a fixed shape."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def run_figure(script: str) -> dict:
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), "--smoke"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=BENCHMARKS.parent,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert len(lines) > 3, done.stdout  # a table, then the JSON line
    line = json.loads(lines[-1])
    assert set(line) == {"figure", "date", "host", "code", "args", "results", "targets"}
    assert line["args"]["smoke"] is True
    for name, target in line["targets"].items():
        assert set(target) == {"met", "measured", "limit", "what"}, name
        assert isinstance(target["met"], bool), name
    return line


@pytest.mark.parametrize("script", ["fig2_consul_calls.py", "fig3_storm.py", "fig5_one_destination.py"])
def test_figure_smoke(script):
    line = run_figure(script)
    results = line["results"]
    if script == "fig2_consul_calls.py":
        assert line["args"]["docker"] == "stub"
        assert len(results["spawns"]) == len(results["stops"]) == 2
        assert results["per_spawn_max"] >= 1 and results["per_stop_max"] >= 1
        assert any(endpoint.startswith("PUT /v1/agent/service/register") for endpoint in results["spawns"][0])
    elif script == "fig3_storm.py":
        assert results["k"] == 20
        assert results["lost_grants"] == 0 and results["left_after_stops"] == 0
        assert results["spawn"]["n"] == 20 and results["stop"]["n"] == 20
        assert results["spawn_writes"] >= 1
    else:
        assert [r["n"] for r in results["rows"]] == [10, 10, 100, 100]
        assert {r["design"] for r in results["rows"]} == {"entry", "exact"}
        assert all(r["missing_after"] == 0 for r in results["rows"])
        assert results["limits"]["L4"]["bytes_per_source"] > 0
