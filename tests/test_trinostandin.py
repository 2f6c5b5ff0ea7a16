"""The Trino coordinator stand-in, driven by the official trino client and by plain HTTP."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from consulspawner_dev.trinostandin import NATION_ROWS, TrinoStandIn

trino = pytest.importorskip("trino")


@pytest.fixture
def coordinator():
    with TrinoStandIn(page_size=10) as c:
        yield c


def cursor(c: TrinoStandIn, user: str, **kw):
    return trino.dbapi.connect(host="127.0.0.1", port=c.port, user=user, max_attempts=1, **kw).cursor()


def test_nation_table_pages_through_next_uri(coordinator):
    cur = cursor(coordinator, "alice")
    cur.execute("SELECT * FROM tpch.tiny.nation")
    rows = cur.fetchall()
    assert len(rows) == 25 == len(NATION_ROWS)
    assert rows[0] == [0, "ALGERIA", 0, " haggle. carefully final deposits detect slyly agai"]
    assert rows[24][1] == "UNITED STATES"
    assert [d.name for d in cur.description] == ["nationkey", "name", "regionkey", "comment"]
    assert [d.type_code for d in cur.description] == ["bigint", "varchar(25)", "bigint", "varchar(152)"]
    assert coordinator.users == ["alice"]
    assert coordinator.queries[0]["state"] == "FINISHED"


def test_current_user_and_default_catalog(coordinator):
    cur = cursor(coordinator, "bob", catalog="tpch", schema="tiny")
    cur.execute("SELECT current_user")
    assert cur.fetchall() == [["bob"]]
    cur.execute("SELECT * FROM nation")
    assert len(cur.fetchall()) == 25
    assert coordinator.users == ["bob", "bob"]


def test_unknown_table_is_a_trino_user_error(coordinator):
    cur = cursor(coordinator, "alice")
    with pytest.raises(trino.exceptions.TrinoUserError) as err:
        cur.execute("SELECT * FROM tpch.tiny.nope")
        cur.fetchall()
    assert err.value.error_name == "TABLE_NOT_FOUND"
    assert err.value.error_code == 46


def test_cancel_deletes_the_query(coordinator):
    cur = cursor(coordinator, "alice")
    cur.execute("SELECT * FROM tpch.tiny.nation")
    cur.fetchone()
    cur.cancel()
    assert coordinator.queries[0]["state"] == "FAILED"


def test_user_header_is_required_and_info_answers(coordinator):
    request = urllib.request.Request(coordinator.url + "/v1/statement", data=b"SELECT current_user", method="POST")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(request, timeout=10)
    assert err.value.code == 400
    assert err.value.read() == b"User must be set"
    assert coordinator.queries == []
    with urllib.request.urlopen(coordinator.url + "/v1/info", timeout=10) as response:
        info = json.load(response)
    assert info["coordinator"] is True and info["starting"] is False


def test_cli_serves_until_sigterm(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "consulspawner_dev.trinostandin", "--port", str(port)],
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/info", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.05)
        cur = trino.dbapi.connect(host="127.0.0.1", port=port, user="carol").cursor()
        cur.execute("SELECT current_user")
        assert cur.fetchall() == [["carol"]]
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) == 0
        proc.stderr.close()
