"""Development stand-in for a Trino coordinator (standard library only). Not Trino.

Just enough of Trino's client protocol for the official ``trino`` Python client
(``trino.dbapi.connect(host, port, user=...)``) to run two statements:

* ``SELECT * FROM tpch.tiny.nation`` (also ``nation`` with catalog ``tpch`` and schema
  ``tiny``): the 25 rows of the TPC-H ``nation`` table, columns ``nationkey bigint``,
  ``name varchar(25)``, ``regionkey bigint``, ``comment varchar(152)`` as Trino's tpch
  connector serves them;
* ``SELECT current_user``: one ``varchar`` column ``_col0``.

Protocol, as Trino's ``/v1/statement`` resource answers (checked against trinodb/trino
``HttpRequestSessionContextFactory``, ``StandardErrorCode`` and the client's ``TrinoRequest``):

* ``GET /v1/info``: ``nodeVersion``, ``environment``, ``coordinator``, ``starting``, ``uptime``.
* ``POST /v1/statement`` with the SQL text as body: ``X-Trino-User`` is required, else ``400``
  with the plain-text body ``User must be set``. The answer is a ``QueryResults`` document
  (``id``, ``infoUri``, ``nextUri``, ``stats``) in state ``QUEUED``.
* ``GET <nextUri>`` (``/v1/statement/queued/...`` then ``/v1/statement/executing/...``):
  ``columns`` and up to ``page_size`` rows of ``data`` per page; the last page has no
  ``nextUri`` and state ``FINISHED``. An unknown query or token answers ``404``.
* ``DELETE <nextUri>``: cancels the query, ``204``.
* Statements it does not know fail the query like Trino does: HTTP 200 with ``error``
  (``message``, ``errorCode``, ``errorName``, ``errorType``, ``failureInfo``) and state
  ``FAILED`` (``TABLE_NOT_FOUND`` 46 for unknown tables, ``NOT_SUPPORTED`` 13 otherwise).

As strict as Trino's HTTP server, not kinder:

* ``X-Forwarded-*``: airlift's ``HttpServerConfig.ProcessForwardedMode`` (``http-server.process-forwarded``:
  ``reject``/``false`` by default, ``accept``/``true``, ``ignore``). Rejecting is
  ``RejectForwardedRequestCustomizer``: any header whose name starts with ``x-forwarded-`` is
  answered ``406``; ignoring is ``IgnoreForwardedRequestCustomizer`` (the headers are dropped);
  accepting uses ``X-Forwarded-Proto``/``-Host`` for the URIs it hands out (Jetty's
  ``ForwardedRequestCustomizer``). Envoy behind Consul adds ``x-forwarded-client-cert`` and
  ``x-forwarded-proto``, so a Trino behind it needs ``ignore`` (``docker/stack/trino``).
* Framing as Jetty's ``HttpParser`` (RFC 9112 compliance): ``Content-Length`` together with
  ``Transfer-Encoding``, more than one ``Content-Length``, or a folded header line (obs-fold) is
  ``400``; a chunked body is read by its chunks.
* Identity as ``HttpRequestSessionContextFactory``/``ProtocolHeaders``: the user is the first
  ``X-Trino-User`` value, the original user the first ``X-Trino-Original-User`` (else the user);
  the legacy ``X-Presto-*`` names count only when ``protocol.v1.alternate-header-name=Presto``
  (``alternate_header_name``), and a request with both protocols' headers is refused.

It records the user and original user of every submitted query (``TrinoStandIn.queries``), so
tests can check who the coordinator saw. There is no authentication: behind a Connect sidecar with L7
intentions on ``X-Trino-User`` that is exactly what the mesh is there to enforce.

    python -m consulspawner_dev.trinostandin --port 8080 [--host 127.0.0.1] [--process-forwarded ignore]
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import secrets
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

log = logging.getLogger("trinostandin")

VERSION = "435-standin"
DEFAULT_PAGE_SIZE = 10
# airlift HttpServerConfig.ProcessForwardedMode.fromString: "true" -> ACCEPT, "false" -> REJECT.
PROCESS_FORWARDED = {"true": "accept", "false": "reject", "accept": "accept", "reject": "reject", "ignore": "ignore"}
X_FORWARDED_PREFIX = "x-forwarded-"

# TPC-H nation table (dbgen data, as Trino's tpch connector returns it: trailing spaces kept).
NATION_ROWS: list[list] = [
    [0, "ALGERIA", 0, " haggle. carefully final deposits detect slyly agai"],
    [1, "ARGENTINA", 1, "al foxes promise slyly according to the regular accounts. bold requests alon"],
    [
        2,
        "BRAZIL",
        1,
        "y alongside of the pending deposits. carefully special packages are about the ironic forges. slyly special ",
    ],
    [
        3,
        "CANADA",
        1,
        "eas hang ironic, silent packages. slyly regular packages are furiously over the tithes. fluffily bold",
    ],
    [
        4,
        "EGYPT",
        4,
        "y above the carefully unusual theodolites. final dugouts are quickly across the furiously regular d",
    ],
    [5, "ETHIOPIA", 0, "ven packages wake quickly. regu"],
    [6, "FRANCE", 3, "refully final requests. regular, ironi"],
    [7, "GERMANY", 3, "l platelets. regular accounts x-ray: unusual, regular acco"],
    [8, "INDIA", 2, "ss excuses cajole slyly across the packages. deposits print aroun"],
    [
        9,
        "INDONESIA",
        2,
        " slyly express asymptotes. regular deposits haggle slyly. carefully ironic hockey players sleep blithely."
        " carefull",
    ],
    [10, "IRAN", 4, "efully alongside of the slyly final dependencies. "],
    [11, "IRAQ", 4, "nic deposits boost atop the quickly final requests? quickly regula"],
    [12, "JAPAN", 2, "ously. final, express gifts cajole a"],
    [13, "JORDAN", 4, "ic deposits are blithely about the carefully regular pa"],
    [
        14,
        "KENYA",
        0,
        " pending excuses haggle furiously deposits. pending, express pinto beans wake fluffily past t",
    ],
    [
        15,
        "MOROCCO",
        0,
        "rns. blithely bold courts among the closely regular packages use furiously bold platelets?",
    ],
    [16, "MOZAMBIQUE", 0, "s. ironic, unusual asymptotes wake blithely r"],
    [
        17,
        "PERU",
        1,
        "platelets. blithely pending dependencies use fluffily across the even pinto beans. carefully silent accoun",
    ],
    [
        18,
        "CHINA",
        2,
        "c dependencies. furiously express notornis sleep slyly regular accounts. ideas sleep. depos",
    ],
    [
        19,
        "ROMANIA",
        3,
        "ular asymptotes are about the furious multipliers. express dependencies nag above the ironically ironic"
        " account",
    ],
    [20, "SAUDI ARABIA", 4, "ts. silent requests haggle. closely express packages sleep across the blithely"],
    [21, "VIETNAM", 2, "hely enticingly express accounts. even, final "],
    [22, "RUSSIA", 3, " requests against the platelets use never according to the quickly regular pint"],
    [23, "UNITED KINGDOM", 3, "eans boost carefully special requests. accounts are. carefull"],
    [
        24,
        "UNITED STATES",
        1,
        "y final packages. slow foxes cajole quickly. quickly silent platelets breach ironic accounts."
        " unusual pinto be",
    ],
]

VARCHAR_UNBOUNDED = 2147483647  # VarcharType.UNBOUNDED_LENGTH


def _bigint(name: str) -> dict:
    return {"name": name, "type": "bigint", "typeSignature": {"rawType": "bigint", "arguments": []}}


def _varchar(name: str, length: int | None = None) -> dict:
    return {
        "name": name,
        "type": "varchar" if length is None else f"varchar({length})",
        "typeSignature": {
            "rawType": "varchar",
            "arguments": [{"kind": "LONG", "value": VARCHAR_UNBOUNDED if length is None else length}],
        },
    }


NATION_COLUMNS = [_bigint("nationkey"), _varchar("name", 25), _bigint("regionkey"), _varchar("comment", 152)]

# (errorCode, errorName) from io.trino.spi.StandardErrorCode; all of these are USER_ERROR.
NOT_SUPPORTED = (13, "NOT_SUPPORTED")
TABLE_NOT_FOUND = (46, "TABLE_NOT_FOUND")
COLUMN_NOT_FOUND = (47, "COLUMN_NOT_FOUND")

_NATION = re.compile(
    r"^\s*select\s+(?P<columns>\*|\w+(?:\s*,\s*\w+)*)\s+from\s+"
    r"(?P<name>(?:\"?tpch\"?\s*\.\s*)?(?:\"?\w+\"?\s*\.\s*)?\"?\w+\"?)"
    r"(?:\s+order\s+by\s+(?P<order>\w+))?\s*;?\s*$",
    re.I,
)
_CURRENT_USER = re.compile(r"^\s*select\s+current_user\s*;?\s*$", re.I)


class QueryFailed(Exception):
    def __init__(self, code: tuple[int, str], message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def plan(sql: str, user: str, catalog: str | None, schema: str | None) -> tuple[list[dict], list[list]]:
    """Columns and rows for the statements this stand-in knows; QueryFailed otherwise."""
    if _CURRENT_USER.match(sql):
        return [_varchar("_col0")], [[user]]
    m = _NATION.match(sql)
    if m:
        parts = [p.strip().strip('"').lower() for p in m.group("name").split(".")]
        if len(parts) == 1:
            parts = [catalog or "", schema or "", parts[0]]
        elif len(parts) == 2:
            parts = [catalog or "", *parts]
        if parts == ["tpch", "tiny", "nation"]:
            names = [c["name"] for c in NATION_COLUMNS]
            wanted = names if m.group("columns") == "*" else [c.strip().lower() for c in m.group("columns").split(",")]
            order = (m.group("order") or "").lower()
            for name in [*wanted, *([order] if order else [])]:
                if name not in names:
                    raise QueryFailed(COLUMN_NOT_FOUND, f"line 1:8: Column '{name}' cannot be resolved")
            rows = sorted(NATION_ROWS, key=lambda r: r[names.index(order)]) if order else NATION_ROWS
            index = [names.index(name) for name in wanted]
            return [dict(NATION_COLUMNS[i]) for i in index], [[r[i] for i in index] for r in rows]
        raise QueryFailed(TABLE_NOT_FOUND, f"line 1:15: Table '{'.'.join(parts)}' does not exist")
    raise QueryFailed(
        NOT_SUPPORTED,
        "This Trino stand-in only runs SELECT <columns or *> FROM tpch.tiny.nation [ORDER BY <column>] "
        "and SELECT current_user",
    )


@dataclass
class Query:
    id: str
    slug: str
    user: str
    sql: str
    columns: list[dict] = field(default_factory=list)
    rows: list[list] = field(default_factory=list)
    error: QueryFailed | None = None
    token: int = 0  # the next token the client may fetch
    state: str = "QUEUED"
    created: float = field(default_factory=time.monotonic)


class TrinoStandIn:
    """The coordinator: an HTTP server in a background thread (``start``/``stop``)."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        page_size: int = DEFAULT_PAGE_SIZE,
        process_forwarded: str = "reject",
        alternate_header_name: str | None = None,
    ):
        mode = PROCESS_FORWARDED.get(str(process_forwarded).lower())
        if mode is None:
            raise ValueError(
                f"http-server.process-forwarded must be true, false, accept, reject or ignore: {process_forwarded!r}"
            )
        self.process_forwarded = mode
        self.alternate_header_name = alternate_header_name
        self.host = host
        self.page_size = max(1, page_size)
        self._lock = threading.Lock()
        self._queries: dict[str, Query] = {}
        self._log: list[dict] = []
        self._server = ThreadingHTTPServer((host, port), _handler_for(self))
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread: threading.Thread | None = None
        self._started = time.monotonic()
        self._counter = 0

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> TrinoStandIn:
        self._thread = threading.Thread(target=self._server.serve_forever, name="trinostandin", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> TrinoStandIn:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def queries(self) -> list[dict]:
        """Every submitted query in order: ``{"id", "user", "original_user", "sql", "state"}``."""
        with self._lock:
            return [dict(q, state=self._queries[q["id"]].state) for q in self._log]

    @property
    def users(self) -> list[str]:
        return [q["user"] for q in self.queries]

    # ------------------------------------------------------------------ protocol
    def _new_id(self) -> str:
        # Trino query IDs look like 20240101_120000_00001_abcde.
        self._counter += 1
        return time.strftime("%Y%m%d_%H%M%S", time.gmtime()) + f"_{self._counter:05d}_{secrets.token_hex(3)[:5]}"

    def submit(
        self, sql: str, user: str, catalog: str | None, schema: str | None, original_user: str | None = None
    ) -> Query:
        with self._lock:
            query = Query(id=self._new_id(), slug="y" + secrets.token_hex(16), user=user, sql=sql)
            try:
                query.columns, query.rows = plan(sql, user, catalog, schema)
            except QueryFailed as failure:
                query.error = failure
            self._queries[query.id] = query
            self._log.append({"id": query.id, "user": user, "original_user": original_user or user, "sql": sql})
        log.info("query %s by %s: %s", query.id, user, sql.strip())
        return query

    def results(self, query: Query, base: str, token: int | None) -> dict:
        """The QueryResults document for ``token`` (None: the answer to the POST)."""
        body = {
            "id": query.id,
            "infoUri": f"{base}/ui/query.html?{query.id}",
            "stats": self._stats(query),
            "warnings": [],
        }
        if token is None:
            body["nextUri"] = f"{base}/v1/statement/queued/{query.id}/{query.slug}/1"
            return body
        if query.error is not None:
            query.state = "FAILED"
            body["stats"] = self._stats(query)
            body["error"] = {
                "message": query.error.message,
                "errorCode": query.error.code[0],
                "errorName": query.error.code[1],
                "errorType": "USER_ERROR",
                "failureInfo": {
                    "type": "io.trino.spi.TrinoException",
                    "message": query.error.message,
                    "suppressed": [],
                    "stack": [],
                },
            }
            return body
        # token 1 is the first data page, token n the (n-1)th page after it.
        start = (token - 1) * self.page_size
        page = query.rows[start : start + self.page_size]
        body["columns"] = query.columns
        if page:
            body["data"] = page
        if start + self.page_size < len(query.rows):
            query.state = "RUNNING"
            body["nextUri"] = f"{base}/v1/statement/executing/{query.id}/{query.slug}/{token + 1}"
        else:
            query.state = "FINISHED"
        body["stats"] = self._stats(query)
        return body

    def _stats(self, query: Query) -> dict:
        elapsed = int((time.monotonic() - query.created) * 1000)
        done = query.state in ("FINISHED", "FAILED")
        return {
            "state": query.state,
            "queued": query.state == "QUEUED",
            "scheduled": query.state != "QUEUED",
            "nodes": 1,
            "totalSplits": 1,
            "queuedSplits": 0,
            "runningSplits": 0 if done else 1,
            "completedSplits": 1 if done else 0,
            "cpuTimeMillis": 0,
            "wallTimeMillis": elapsed,
            "queuedTimeMillis": 0,
            "elapsedTimeMillis": elapsed,
            "processedRows": len(query.rows) if done else 0,
            "processedBytes": 0,
            "physicalInputBytes": 0,
            "peakMemoryBytes": 0,
            "spilledBytes": 0,
        }

    def lookup(self, query_id: str, slug: str) -> Query | None:
        with self._lock:
            query = self._queries.get(query_id)
        if query is None or not secrets.compare_digest(query.slug, slug):
            return None
        return query

    def cancel(self, query: Query) -> None:
        with self._lock:
            if query.state not in ("FINISHED", "FAILED"):
                query.state = "FAILED"  # USER_CANCELED
                query.error = QueryFailed((3, "USER_CANCELED"), "Query was canceled")


_PAGE = re.compile(r"^/v1/statement/(queued|executing)/(?P<id>[^/]+)/(?P<slug>[^/]+)/(?P<token>\d+)$")


def _handler_for(coordinator: TrinoStandIn):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "TrinoStandIn/" + VERSION

        def log_message(self, format, *args):
            log.debug("%s %s", self.address_string(), format % args)

        def _send(self, status: int, body: bytes, content_type: str, extra: dict | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for key, value in (extra or {}).items():
                self.send_header(key, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, status: int, obj) -> None:
            self._send(status, json.dumps(obj).encode(), "application/json")

        def _text(self, status: int, text: str) -> None:
            self._send(status, text.encode(), "text/plain")

        def parse_request(self) -> bool:
            if not super().parse_request():
                return False
            refusal = self._refusal()
            if refusal is not None:
                self.close_connection = True
                self.send_error(*refusal)
                return False
            if coordinator.process_forwarded == "ignore":
                # IgnoreForwardedRequestCustomizer: the headers are removed, the request goes on.
                for name in {k for k in self.headers if k.lower().startswith(X_FORWARDED_PREFIX)}:
                    del self.headers[name]
            return True

        def _refusal(self) -> tuple[int, str] | None:
            """What Jetty's HttpParser and airlift's customizers answer instead of running it."""
            lengths = self.headers.get_all("Content-Length") or []
            if len(lengths) > 1:
                return 400, "Duplicate Content-Length"  # HttpCompliance MULTIPLE_CONTENT_LENGTHS
            if lengths and self.headers.get("Transfer-Encoding") is not None:
                return 400, "Transfer-Encoding and Content-Length"
            te = self.headers.get_all("Transfer-Encoding") or []
            if te and ",".join(te).strip().lower() != "chunked":
                return 400, "Bad Transfer-Encoding"
            if lengths and not lengths[0].strip().isdigit():
                return 400, "Invalid Content-Length Value"
            if any("\n" in v or "\r" in v for v in self.headers.values()):
                return 400, "Header Folding"  # HttpCompliance: RFC 9112 forbids obs-fold
            if coordinator.process_forwarded == "reject":
                for name in self.headers:
                    if name.lower().startswith(X_FORWARDED_PREFIX):
                        return 406, f"Server configuration does not allow processing of the {name} header"
            return None

        def _base(self) -> str:
            host = self.headers.get("Host") or f"{coordinator.host}:{coordinator.port}"
            scheme = "http"
            if coordinator.process_forwarded == "accept":
                scheme = (self.headers.get("X-Forwarded-Proto") or scheme).split(",")[0].strip()
                host = (self.headers.get("X-Forwarded-Host") or host).split(",")[0].strip()
            return f"{scheme}://{host}"

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding") is not None:
                return self._chunked()
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length > 0 else b""

        def _chunked(self) -> bytes:
            body = b""
            while True:
                size = int(self.rfile.readline(1024).split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return body
                body += self.rfile.read(size)
                self.rfile.readline(1024)  # the CRLF after the chunk

        def _protocol(self) -> str | None:
            """ProtocolHeaders.detectProtocol: "Trino", the alternate name, or None if both are used."""
            alternate = coordinator.alternate_header_name
            names = [k.lower() for k in self.headers]
            if alternate and any(n.startswith(f"x-{alternate.lower()}-") for n in names):
                return None if any(n.startswith("x-trino-") for n in names) else alternate
            return "Trino"

        def do_GET(self):
            if self.path == "/v1/info":
                uptime = time.monotonic() - coordinator._started
                self._json(
                    200,
                    {
                        "nodeVersion": {"version": VERSION},
                        "environment": "standin",
                        "coordinator": True,
                        "starting": False,
                        "uptime": f"{uptime:.2f}s",
                    },
                )
                return
            m = _PAGE.match(self.path)
            if not m:
                self._text(404, "Not Found")
                return
            query = coordinator.lookup(m.group("id"), m.group("slug"))
            if query is None:
                self._text(404, "Query not found")
                return
            token = int(m.group("token"))
            self._json(200, coordinator.results(query, self._base(), token))

        def do_POST(self):
            if self.path != "/v1/statement":
                self._body()
                self._text(404, "Not Found")
                return
            sql = self._body().decode("utf-8", "replace")
            protocol = self._protocol()
            if protocol is None:
                self._text(400, f"Protocol headers of both Trino and {coordinator.alternate_header_name} were sent")
                return
            # The first value of each header (MultivaluedMap.getFirst), trimmed, empty as absent.
            user = (self.headers.get(f"X-{protocol}-User") or "").strip()
            original = (self.headers.get(f"X-{protocol}-Original-User") or "").strip() or None
            if not user:
                self._text(400, "User must be set")
                return
            if not sql.strip():
                self._text(400, "SQL statement is empty")
                return
            query = coordinator.submit(
                sql,
                user,
                self.headers.get(f"X-{protocol}-Catalog") or None,
                self.headers.get(f"X-{protocol}-Schema") or None,
                original_user=original,
            )
            self._json(200, coordinator.results(query, self._base(), None))

        def do_DELETE(self):
            m = _PAGE.match(self.path)
            query = coordinator.lookup(m.group("id"), m.group("slug")) if m else None
            if query is None:
                self._text(404, "Query not found")
                return
            coordinator.cancel(query)
            self.send_response(204)
            self.send_header("Content-Length", "0")
            self.end_headers()

    return Handler


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="trinostandin", description="Development stand-in for a Trino coordinator.")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default %(default)s)")
    parser.add_argument("--port", type=int, default=8080, help="port to listen on (default %(default)s)")
    parser.add_argument("--page-size", type=int, default=DEFAULT_PAGE_SIZE, help="rows per result page")
    parser.add_argument(
        "--process-forwarded",
        default="reject",
        choices=sorted(PROCESS_FORWARDED),
        help="http-server.process-forwarded, as airlift reads it (default %(default)s)",
    )
    parser.add_argument("--alternate-header-name", help="protocol.v1.alternate-header-name (e.g. Presto)")
    args = parser.parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s trinostandin %(message)s")
    coordinator = TrinoStandIn(
        args.host, args.port, args.page_size, args.process_forwarded, args.alternate_header_name
    ).start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    log.info("listening on %s:%d", coordinator.host, coordinator.port)
    stop.wait()
    coordinator.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
