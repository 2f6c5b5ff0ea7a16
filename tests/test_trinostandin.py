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


# ------------------------------------------------------------------ as strict as Trino's HTTP server
def raw(c: TrinoStandIn, request: bytes) -> tuple[int, bytes]:
    """One raw HTTP/1.1 exchange (so tests can send what http.client refuses to); (status, body)."""
    import socket

    with socket.create_connection(("127.0.0.1", c.port), timeout=10) as s:
        s.sendall(request)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
            head, sep, rest = data.partition(b"\r\n\r\n")
            if sep and b"content-length:" in head.lower():
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                if len(rest) >= length:
                    break
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def post(sql: bytes, *headers: str, framing: str | None = None) -> bytes:
    lines = ["POST /v1/statement HTTP/1.1", "Host: trino", "Connection: close", *headers]
    if framing is None:
        lines.append(f"Content-Length: {len(sql)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + sql


@pytest.mark.parametrize("header", ["X-Forwarded-Proto: https", "x-forwarded-client-cert: By=spiffe://x"])
def test_forwarded_headers_are_406_by_default(coordinator, header):
    # airlift RejectForwardedRequestCustomizer: any "x-forwarded-" header, 406, unless
    # http-server.process-forwarded says otherwise.
    status, body = raw(coordinator, post(b"SELECT current_user", "X-Trino-User: alice", header))
    assert status == 406
    assert b"does not allow processing of the" in body
    assert coordinator.queries == []


def test_process_forwarded_ignore_drops_them_and_accept_uses_them():
    with TrinoStandIn(process_forwarded="ignore") as c:
        status, body = raw(c, post(b"SELECT current_user", "X-Trino-User: alice", "X-Forwarded-Proto: https"))
        assert status == 200 and json.loads(body)["nextUri"].startswith("http://trino/")
    with TrinoStandIn(process_forwarded="true") as c:
        status, body = raw(c, post(b"SELECT current_user", "X-Trino-User: alice", "X-Forwarded-Proto: https"))
        assert status == 200 and json.loads(body)["nextUri"].startswith("https://trino/")
    with pytest.raises(ValueError):
        TrinoStandIn(process_forwarded="maybe")


def test_content_length_with_transfer_encoding_is_400(coordinator):
    # The smuggling shape: a chunked body that, framed by Content-Length, hides a second request.
    hidden = b"POST /v1/statement HTTP/1.1\r\nHost: t\r\nX-Trino-User: alice\r\nContent-Length: 19\r\n\r\n"
    hidden += b"SELECT current_user"
    body = b"0\r\n\r\n" + hidden
    request = post(body, "X-Trino-User: bob", "Transfer-Encoding: chunked", f"Content-Length: {len(body)}", framing="")
    status, _ = raw(coordinator, request)
    assert status == 400
    assert coordinator.queries == []


def test_duplicate_content_length_is_400(coordinator):
    request = post(b"SELECT current_user", "X-Trino-User: bob", "Content-Length: 19", "Content-Length: 5", framing="")
    assert raw(coordinator, request)[0] == 400
    assert coordinator.queries == []


def test_a_chunked_body_is_framed_by_its_chunks(coordinator):
    sql = b"SELECT current_user"
    body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(sql), sql)
    status, answer = raw(coordinator, post(body, "X-Trino-User: bob", "Transfer-Encoding: chunked", framing=""))
    assert status == 200, answer
    assert coordinator.queries[0]["sql"] == "SELECT current_user"


def test_user_is_the_first_header_value_and_the_original_user_is_kept(coordinator):
    # HttpRequestSessionContextFactory: headers.getFirst(protocolHeaders.requestUser()); the
    # original identity comes from X-Trino-Original-User when present.
    status, _ = raw(
        coordinator,
        post(b"SELECT current_user", "X-Trino-User: alice", "X-Trino-User: x", "X-Trino-Original-User: mallory"),
    )
    assert status == 200
    assert coordinator.queries[0]["user"] == "alice"
    assert coordinator.queries[0]["original_user"] == "mallory"


def test_presto_headers_count_only_with_the_alternate_header_name(coordinator):
    # ProtocolHeaders.detectProtocol: X-Presto-* only when protocol.v1.alternate-header-name=Presto.
    status, body = raw(coordinator, post(b"SELECT current_user", "X-Presto-User: alice"))
    assert (status, body) == (400, b"User must be set")
    with TrinoStandIn(alternate_header_name="Presto") as c:
        status, _ = raw(c, post(b"SELECT current_user", "X-Presto-User: alice"))
        assert status == 200 and c.users == ["alice"]
        # Both protocols at once is refused.
        status, _ = raw(c, post(b"SELECT current_user", "X-Presto-User: alice", "X-Trino-User: bob"))
        assert status == 400


@pytest.mark.parametrize("node", ["coordinator", "worker"])
def test_the_stacks_trino_config_runs_a_query_behind_envoy(node):
    """docker/stack/trino's http-server.process-forwarded, applied to the stand-in, lets a request
    carrying what Consul's Envoy adds (XFCC, x-forwarded-proto https) run, with plain-http nextUris."""
    from pathlib import Path

    config = Path(__file__).resolve().parents[1] / "docker" / "stack" / "trino" / node / "config.properties"
    props = dict(
        line.split("=", 1) for line in config.read_text().splitlines() if "=" in line and not line.startswith("#")
    )
    with TrinoStandIn(process_forwarded=props.get("http-server.process-forwarded", "false")) as c:
        status, body = raw(
            c,
            post(
                b"SELECT current_user",
                "X-Trino-User: alice",
                'x-forwarded-client-cert: By=spiffe://t/ns/default/dc/dc1/svc/trino;Hash=ab;Subject=""',
                "x-forwarded-proto: https",
            ),
        )
    assert status == 200, body
    assert json.loads(body)["nextUri"].startswith("http://")


def test_a_folded_header_line_is_400(coordinator):
    # Jetty's HttpParser (RFC 9112 compliance, no MULTILINE_FIELD_VALUE violation allowed): obs-fold is 400.
    status, _ = raw(coordinator, post(b"SELECT current_user", "X-Trino-User: bob", " alice"))
    assert status == 400
    assert coordinator.queries == []
