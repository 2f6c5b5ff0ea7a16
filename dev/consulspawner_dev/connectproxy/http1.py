"""HTTP/1.x framing for the L7 path: heads, bodies by length or chunks, keep-alive."""

from __future__ import annotations

import logging
import socket

log = logging.getLogger("connectproxy")

MAX_HEAD = 64 * 1024


class Stream:
    """Buffered reads on a socket for HTTP/1.x framing."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buf = b""

    def _fill(self) -> bool:
        chunk = self.sock.recv(65536)
        if not chunk:
            return False
        self.buf += chunk
        return True

    def head(self) -> bytes | None:
        """Bytes up to and including the blank line; None on a clean EOF before any byte."""
        while b"\r\n\r\n" not in self.buf:
            if len(self.buf) > MAX_HEAD:
                raise ValueError("HTTP head too large")
            if not self._fill():
                if self.buf:
                    raise ValueError("connection closed inside an HTTP head")
                return None
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        return head + b"\r\n\r\n"

    def line(self) -> bytes:
        while b"\r\n" not in self.buf:
            if len(self.buf) > MAX_HEAD:
                raise ValueError("HTTP line too long")
            if not self._fill():
                raise ValueError("connection closed inside a chunk")
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line + b"\r\n"

    def exactly(self, n: int, sink) -> None:
        while n > 0:
            if not self.buf and not self._fill():
                raise ValueError("connection closed inside a body")
            piece, self.buf = self.buf[:n], self.buf[n:]
            n -= len(piece)
            sink(piece)

    def chunked(self, sink) -> None:
        while True:
            size_line = self.line()
            sink(size_line)
            size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                while True:  # trailers, then the blank line
                    trailer = self.line()
                    sink(trailer)
                    if trailer == b"\r\n":
                        return
            self.exactly(size + 2, sink)

    def until_close(self, sink) -> None:
        if self.buf:
            sink(self.buf)
            self.buf = b""
        while True:
            chunk = self.sock.recv(65536)
            if not chunk:
                return
            sink(chunk)


def parse_head(head: bytes) -> tuple[str, list[tuple[str, str]]]:
    lines = head.decode("latin-1").split("\r\n")
    headers = []
    for line in lines[1:]:
        if not line:
            continue
        if ":" not in line:
            raise ValueError(f"bad header line {line!r}")
        k, v = line.split(":", 1)
        headers.append((k.strip(), v.strip()))
    return lines[0], headers


def _get(headers: list[tuple[str, str]], name: str) -> str | None:
    for k, v in headers:
        if k.lower() == name:
            return v
    return None


def body_framing(headers: list[tuple[str, str]]) -> tuple[str, int]:
    te = (_get(headers, "transfer-encoding") or "").lower()
    if "chunked" in te:
        return "chunked", 0
    cl = _get(headers, "content-length")
    if cl is not None:
        return "length", int(cl)
    return "none", 0


def wants_close(version: str, headers: list[tuple[str, str]]) -> bool:
    conn = (_get(headers, "connection") or "").lower()
    return "close" in conn or (version == "HTTP/1.0" and "keep-alive" not in conn)


def framing_refusal(head: bytes) -> tuple[int, str] | None:
    """(status, reason) when Envoy's HTTP/1 codec refuses this request head, else None.

    Envoy (source/common/http/http1/codec_impl.cc, balsa_parser.cc):
    * ``Content-Length`` with ``Transfer-Encoding``: 400 ("both 'Content-Length' and
      'Transfer-Encoding' are set"; ``allow_chunked_length`` is off by default, and Consul does
      not set it);
    * a ``Transfer-Encoding`` other than ``chunked``: 501 (unsupported transfer encoding);
    * more than one ``Content-Length``, equal or not: 400 (``disallow_multiple_content_length``);
    * a folded header line (obs-fold, RFC 9112 5.2): the continuation stays in the value and the
      codec's header value check refuses the CR/LF in it: 400.
    """
    lines = head.split(b"\r\n")[1:]
    names = []
    for line in lines:
        if not line:
            continue
        if line[:1] in (b" ", b"\t"):
            return 400, "obs-fold header continuation line"
        names.append(line.split(b":", 1)[0].strip().lower())
    lengths = names.count(b"content-length")
    if lengths > 1:
        return 400, "multiple Content-Length headers"
    if b"transfer-encoding" in names:
        if lengths:
            return 400, "both Content-Length and Transfer-Encoding are set"
        values = [
            ln.split(b":", 1)[1].strip().lower()
            for ln in lines
            if ln.split(b":", 1)[0].strip().lower() == b"transfer-encoding"
        ]
        if b",".join(values) != b"chunked":
            return 501, "unsupported transfer encoding"
    return None
