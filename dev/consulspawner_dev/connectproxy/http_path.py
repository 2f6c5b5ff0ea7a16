"""The L7 path: each inbound request checked against the intentions, then relayed to the app."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import socket
import ssl
import urllib.error
import urllib.parse
import urllib.request

from .agent import ProxyError
from .authorization import Request, evaluate
from .http1 import Stream, body_framing, framing_refusal, parse_head, wants_close
from .relay import CONNECT_TIMEOUT, IO_TIMEOUT, Inbound, _close

log = logging.getLogger("connectproxy")

RBAC_DENIED = b"RBAC: access denied"
_REASONS = {400: b"Bad Request", 501: b"Not Implemented"}
# Envoy's url encoding of a PEM in XFCC (ssl connection_info: urlEncodedPemEncodedPeerCertificate).
_PEM_ESCAPES = {"\n": "%0A", " ": "%20", "+": "%2B", "/": "%2F", "=": "%3D"}
_RDN_NAMES = {
    "commonName": "CN",
    "countryName": "C",
    "localityName": "L",
    "stateOrProvinceName": "ST",
    "organizationName": "O",
    "organizationalUnitName": "OU",
    "streetAddress": "STREET",
    "domainComponent": "DC",
    "userId": "UID",
}


def _url_pem(der_certs: list[bytes]) -> str:
    pem = "".join(ssl.DER_cert_to_PEM_cert(der) for der in der_certs)
    return "".join(_PEM_ESCAPES.get(c, c) for c in pem)


def _rfc2253(subject) -> str:
    """The subject as Envoy prints it (X509_NAME_print_ex with XN_FLAG_RFC2253): last RDN first."""

    def escape(value: str) -> str:
        out = "".join("\\" + c if c in ',+"\\<>;' else c for c in value)
        if out.startswith((" ", "#")):
            out = "\\" + out
        return out[:-1] + "\\ " if out.endswith(" ") else out

    return ",".join("+".join(f"{_RDN_NAMES.get(k, k)}={escape(v)}" for k, v in rdn) for rdn in reversed(subject or ()))


def client_cert_details(local_uri: str, tls: ssl.SSLSocket) -> str:
    """This hop's XFCC element as Consul configures Envoy's inbound HTTP connection manager.

    agent/xds/listeners.go makeInboundListener: unless the mesh config entry sets
    ``HTTP.SanitizeXForwardedClientCert``, ``forward_client_cert_details: APPEND_FORWARD`` and
    ``set_current_client_cert_details`` Subject, Cert, Chain, DNS, URI. Envoy writes them
    (connection_manager_utility.cc mutateXfccRequestHeader) as By, Hash, then in the order of
    http_connection_manager/config.cc: Cert, Chain, Subject, URI, DNS (one DNS= per DNS SAN).
    """
    der = tls.getpeercert(True) or b""
    peer = tls.getpeercert() or {}
    chain = [der]
    with contextlib.suppress(AttributeError, ssl.SSLError, ValueError):
        unverified = tls._sslobj.get_unverified_chain()  # type: ignore[union-attr]
        if unverified:
            chain = [c.public_bytes(ssl._ssl.ENCODING_DER) for c in unverified]  # type: ignore[attr-defined]
    sans = peer.get("subjectAltName") or ()
    parts = [f"By={local_uri}", f"Hash={hashlib.sha256(der).hexdigest()}"]
    parts.append(f'Cert="{_url_pem([der])}"')
    parts.append(f'Chain="{_url_pem(chain)}"')
    parts.append(f'Subject="{_rfc2253(peer.get("subject"))}"')
    parts.append("URI=" + next((v for k, v in sans if k == "URI"), ""))
    parts.extend(f"DNS={v}" for k, v in sans if k == "DNS")
    return ";".join(parts)


def forwarded_headers(headers: list[tuple[str, str]], details: str) -> list[tuple[str, str]]:
    """Headers as the app receives them: XFCC appended to (APPEND_FORWARD), x-forwarded-proto set.

    Envoy (ConnectionManagerUtility::mutateRequestHeaders): x-forwarded-proto is kept when the
    request has one (Consul's inbound listener is not an edge: no use_remote_address), else set
    from the downstream connection, here TLS: https.
    """
    earlier = [v for k, v in headers if k.lower() == "x-forwarded-client-cert"]
    kept = [(k, v) for k, v in headers if k.lower() != "x-forwarded-client-cert"]
    kept.append(("x-forwarded-client-cert", ",".join([*earlier, details]) if earlier else details))
    if not any(k.lower() == "x-forwarded-proto" for k, _ in kept):
        kept.append(("x-forwarded-proto", "https"))
    return kept


class HTTPPath:
    """Serves one inbound TLS connection of an HTTP-protocol service, request by request."""

    def _serve_http(self, tls: ssl.SSLSocket, conn: Inbound, source: str, peer_hash: str) -> None:
        client = Stream(tls)
        details = client_cert_details(self.self_uri, tls)
        app: socket.socket | None = None
        app_stream: Stream | None = None
        try:
            while not self.stopped.is_set():
                head = client.head()
                if head is None:
                    return
                refusal = framing_refusal(head)
                if refusal is not None:
                    status, why = refusal
                    self.counters["refused_framing"] = self.counters.get("refused_framing", 0) + 1
                    log.info("request from %s refused (%d): %s", conn.source_uri, status, why)
                    text = _REASONS[status]
                    tls.sendall(
                        b"HTTP/1.1 %d %s\r\ncontent-length: %d\r\ncontent-type: text/plain\r\n"
                        % (status, text, len(text))
                        + b"connection: close\r\n\r\n"
                        + text
                    )
                    return  # Envoy closes the connection after a codec error
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
                kept = forwarded_headers(headers, details)
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
