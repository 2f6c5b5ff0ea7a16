"""``python -m consulspawner_dev.fakeconsul`` serves until SIGTERM/SIGINT."""

import json
import signal
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request

import pytest

from .conftest import MASTER


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _readline(proc, timeout=20.0) -> str:
    out: list[str] = []
    reader = threading.Thread(target=lambda: out.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    if not out:
        proc.kill()
        raise AssertionError("fake consul did not report listening in time")
    return out[0]


def _request(url, method="GET", data=None, token=None):
    req = urllib.request.Request(url, method=method, data=data)
    if token:
        req.add_header("X-Consul-Token", token)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


@pytest.fixture
def spawn():
    procs = []

    def start(*args):
        port = _free_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", "consulspawner_dev.fakeconsul", "--port", str(port), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        procs.append(proc)
        line = _readline(proc)
        assert f"http://127.0.0.1:{port}" in line
        return proc, f"http://127.0.0.1:{port}"

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_serves_and_stops_cleanly_on_signal(spawn, sig):
    proc, url = spawn()
    assert _request(url + "/v1/status/leader") == (200, '"127.0.0.1:8300"')
    body = json.dumps({"Name": "web", "Port": 80}).encode()
    assert _request(url + "/v1/agent/service/register", "PUT", body)[0] == 200
    assert "web" in json.loads(_request(url + "/v1/agent/services")[1])
    proc.send_signal(sig)
    assert proc.wait(timeout=15) == 0
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url + "/v1/status/leader", timeout=2)


def test_acl_master_token_turns_acls_on(spawn):
    proc, url = spawn("--acl-master-token", MASTER, "--datacenter", "dc9")
    body = json.dumps({"Name": "web"}).encode()
    status, text = _request(url + "/v1/agent/service/register", "PUT", body)
    assert status == 403 and "anonymous token" in text
    assert _request(url + "/v1/agent/service/register", "PUT", body, token=MASTER)[0] == 200
    status, text = _request(url + "/v1/agent/self", token=MASTER)
    assert json.loads(text)["Config"]["Datacenter"] == "dc9"
    proc.terminate()
    assert proc.wait(timeout=15) == 0


def test_master_token_from_a_file(spawn, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(MASTER + "\n")
    proc, url = spawn("--acl-master-token-file", str(token_file))
    assert MASTER not in " ".join(proc.args)
    body = json.dumps({"Name": "web"}).encode()
    assert _request(url + "/v1/agent/service/register", "PUT", body)[0] == 403
    assert _request(url + "/v1/agent/service/register", "PUT", body, token=MASTER)[0] == 200
