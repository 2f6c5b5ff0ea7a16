"""The L7 path: each inbound request checked against the intentions, then relayed to the app."""

from __future__ import annotations

import logging
import socket
import ssl
import urllib.error
import urllib.parse
import urllib.request

from .agent import ProxyError
from .authorization import Request, evaluate
from .http1 import Stream, body_framing, parse_head, wants_close
from .relay import CONNECT_TIMEOUT, IO_TIMEOUT, Inbound, _close

log = logging.getLogger("connectproxy")

RBAC_DENIED = b"RBAC: access denied"


class HTTPPath:
    """Serves one inbound TLS connection of an HTTP-protocol service, request by request."""

    def _serve_http(self, tls: ssl.SSLSocket, conn: Inbound, source: str, peer_hash: str) -> None:
        client = Stream(tls)
        app: socket.socket | None = None
        app_stream: Stream | None = None
        try:
            while not self.stopped.is_set():
                head = client.head()
                if head is None:
                    return
                request_line, headers = parse_head(head)
                parts = request_line.split(" ")
                if len(parts) != 3:
                    raise ValueError(f"bad request line {request_line!r}")
                method, target, version = parts
                path = urllib.parse.urlsplit(target).path or "/"
                framing, length = body_framing(headers)
                with self._lock:
                    intentions, default_allow = self.intentions, self.default_allow
                allowed, reason = evaluate(intentions, source, Request(method, path, headers), default_allow)
                close_after = wants_close(version, headers)
                if not allowed:
                    self.counters["denied_requests"] += 1
                    log.info("request %s %s from %s denied: %s", method, path, conn.source_uri, reason)
                    self._drain_body(client, framing, length)
                    tls.sendall(
                        b"HTTP/1.1 403 Forbidden\r\ncontent-length: %d\r\ncontent-type: text/plain\r\n%s\r\n%s"
                        % (len(RBAC_DENIED), b"connection: close\r\n" if close_after else b"", RBAC_DENIED)
                    )
                    if close_after:
                        return
                    continue
                if app is None:
                    app = socket.create_connection(self._local_app(), timeout=CONNECT_TIMEOUT)
                    app.settimeout(IO_TIMEOUT)
                    conn.socks.append(app)
                    app_stream = Stream(app)
                xfcc = f'By={self.self_uri};Hash={peer_hash};Subject="";URI={conn.source_uri}'
                kept = [(k, v) for k, v in headers if k.lower() != "x-forwarded-client-cert"]
                kept.append(("X-Forwarded-Client-Cert", xfcc))
                out = request_line + "\r\n" + "".join(f"{k}: {v}\r\n" for k, v in kept) + "\r\n"
                app.sendall(out.encode("latin-1"))
                self._copy_body(client, framing, length, app.sendall)
                if self._relay_response(app_stream, tls, method) or close_after:
                    return
        except (OSError, ValueError) as e:
            log.debug("http connection from %s ended: %s", conn.source_uri, e)
        except ProxyError as e:
            log.warning("%s", e)
        finally:
            _close(app)

    @staticmethod
    def _copy_body(stream: Stream, framing: str, length: int, sink) -> None:
        if framing == "chunked":
            stream.chunked(sink)
        elif framing == "length":
            stream.exactly(length, sink)

    def _drain_body(self, stream: Stream, framing: str, length: int) -> None:
        self._copy_body(stream, framing, length, lambda _piece: None)

    def _relay_response(self, app: Stream, client: socket.socket, method: str) -> bool:
        """Copy one response; True if the connection must close afterwards."""
        while True:
            head = app.head()
            if head is None:
                raise ValueError("the app closed the connection without answering")
            status_line, headers = parse_head(head)
            client.sendall(head)
            version, _, rest = status_line.partition(" ")
            status = int(rest.split(" ", 1)[0])
            if 100 <= status < 200 and status != 101:
                continue  # interim answer; the final one follows
            break
        if method == "HEAD" or status in (204, 304) or status == 101:
            return status == 101 or wants_close(version, headers)
        framing, length = body_framing(headers)
        if framing == "none":
            app.until_close(client.sendall)
            return True
        self._copy_body(app, framing, length, client.sendall)
        return wants_close(version, headers)
