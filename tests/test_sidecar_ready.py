"""The sidecar images' readiness commands (``sidecar-ready``): the dev proxy's ready.py and the
Envoy image's script. Both wait inside the sidecar up to ``SIDECAR_READY_WAIT`` seconds, so a
spawn execs them once; without it they answer at once, as a plain probe."""

from __future__ import annotations

import json
import os
import socketserver
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from consulspawner_dev.connectproxy import ready

ROOT = Path(__file__).resolve().parent.parent
ENVOY_READY = ROOT / "docker" / "stack" / "envoy-sidecar" / "sidecar-ready"
READY_PY = ROOT / "dev" / "consulspawner_dev" / "connectproxy" / "ready.py"


class Admin:
    """An admin socket answering /ready 503 until ``live`` is set, and /status with no listeners."""

    def __init__(self, path: str):
        self.live = threading.Event()
        self.asked = 0
        admin = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self):
                line = self.rfile.readline().decode()
                while self.rfile.readline() not in (b"\r\n", b""):
                    pass
                admin.asked += 1
                if "/status" in line:
                    status, body = "200 OK", json.dumps({"listeners": []})
                elif admin.live.is_set():
                    status, body = "200 OK", "LIVE"
                else:
                    status, body = "503 Service Unavailable", "PRE_INITIALIZING"
                self.wfile.write(f"HTTP/1.0 {status}\r\nContent-Length: {len(body)}\r\n\r\n{body}".encode())

        self.server = socketserver.ThreadingUnixStreamServer(path, Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def admin(tmp_path):
    server = Admin(str(tmp_path / "admin.sock"))
    yield server
    server.close()


def test_waits_inside_for_readiness_and_answers_once(admin, tmp_path, capsys):
    threading.Timer(0.5, admin.live.set).start()
    began = time.monotonic()
    assert ready.main(["-admin-socket", str(tmp_path / "admin.sock")], {"SIDECAR_READY_WAIT": "30"}) == 0
    assert time.monotonic() - began < 25  # it ended on readiness, not on its deadline
    assert admin.asked > 2 and capsys.readouterr().out.strip() == "LIVE"


def test_without_a_wait_it_answers_at_once(admin, tmp_path, capsys):
    assert ready.main(["-admin-socket", str(tmp_path / "admin.sock")], {}) == 1
    assert admin.asked == 1 and capsys.readouterr().out.strip() == "PRE_INITIALIZING"


def test_gives_up_at_its_deadline_with_the_reason(tmp_path, capsys):
    began = time.monotonic()
    assert ready.main(["-admin-socket", str(tmp_path / "none.sock")], {"SIDECAR_READY_WAIT": "0.3"}) == 1
    assert 0.3 <= time.monotonic() - began < 20
    assert "No such file" in capsys.readouterr().out


@pytest.mark.parametrize("value", ["", "soon", "-1", "inf", "nan"])
def test_a_wait_that_is_no_positive_number_means_none(value):
    assert ready.wait_from_environment({"SIDECAR_READY_WAIT": value}) == 0.0


def test_runs_as_a_script_with_the_standard_library_only(admin, tmp_path):
    # As the image runs it: a file, no package import (-S: not even site-packages).
    admin.live.set()
    done = subprocess.run(
        [sys.executable, "-S", "-P", str(READY_PY), "-admin-socket", str(tmp_path / "admin.sock")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0 and done.stdout.strip() == "LIVE", done.stderr


# -- the Envoy image's script ---------------------------------------------------------------------


def envoy_ready(tmp_path: Path, answers_before_live: int, wait: str | None) -> tuple[subprocess.CompletedProcess, int]:
    """Run the Envoy image's sidecar-ready with a curl that fails (as curl --fail on a 503)
    ``answers_before_live`` times, then prints LIVE; (the run, how often curl was called)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    curl = bin_dir / "curl"
    curl.write_text(
        "#!/bin/sh\n"
        f'echo x >> "{calls}"\n'
        f'if [ "$(wc -l < "{calls}")" -gt {answers_before_live} ]; then echo LIVE; exit 0; fi\n'
        'echo "curl: (22) The requested URL returned error: 503" >&2; exit 22\n'
    )
    curl.chmod(0o755)
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}"}
    if wait is not None:
        env["SIDECAR_READY_WAIT"] = wait
    done = subprocess.run(["sh", str(ENVOY_READY)], capture_output=True, text=True, env=env, timeout=60)
    return done, len(calls.read_text().splitlines())


def test_envoy_script_waits_for_live(tmp_path):
    done, calls = envoy_ready(tmp_path, answers_before_live=3, wait="30.0")
    assert done.returncode == 0 and done.stdout.strip() == "LIVE"
    assert calls == 4


@pytest.mark.parametrize("wait", [None, "0.0", "soon"])
def test_envoy_script_without_a_wait_asks_once(tmp_path, wait):
    done, calls = envoy_ready(tmp_path, answers_before_live=3, wait=wait)
    assert done.returncode == 1 and "503" in done.stdout
    assert calls == 1
