"""Certificates: the agent's leaf and roots as TLS contexts, and the peer's SPIFFE identity.

The leaf (``/v1/agent/connect/ca/leaf/<service>``) and the roots (``/v1/agent/connect/ca/roots``,
every root trusted) are turned into one server and one client context per generation; keys are
loaded from ``memfd`` files, never written to disk.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import ssl
import tempfile
from dataclasses import dataclass

from .agent import ProxyError

log = logging.getLogger("connectproxy")

_SPIFFE = re.compile(r"^spiffe://(?P<host>[^/]+)(?:/ap/[^/]+)?/ns/(?P<ns>[^/]+)/dc/(?P<dc>[^/]+)/svc/(?P<svc>[^/]+)$")


def _memfile(data: str) -> str:
    """A path holding ``data`` that never touches a filesystem (memfd), else a private temp file."""
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("connectproxy", 0)
        os.write(fd, data.encode())
        return f"/proc/self/fd/{fd}"
    fd, path = tempfile.mkstemp(prefix="connectproxy-")
    os.write(fd, data.encode())
    os.close(fd)
    return path


def _release(path: str) -> None:
    if path.startswith("/proc/self/fd/"):
        with contextlib.suppress(OSError):
            os.close(int(path.rsplit("/", 1)[1]))
    else:
        with contextlib.suppress(OSError):
            os.unlink(path)


def spiffe_of(peercert: dict) -> str:
    for kind, value in peercert.get("subjectAltName") or ():
        if kind == "URI" and value.startswith("spiffe://"):
            return value
    return ""


def serial_of(peercert: dict) -> str:
    """connect.EncodeSerialNumber: colon-separated lower-case hex of the serial's bytes."""
    n = int(peercert.get("serialNumber") or "0", 16)
    raw = n.to_bytes(max(1, (n.bit_length() + 7) // 8), "big")
    return ":".join(f"{b:02x}" for b in raw)


@dataclass
class Material:
    """One generation of leaf + roots, and the TLS contexts built from them."""

    leaf: dict
    roots: dict
    server: ssl.SSLContext
    client: ssl.SSLContext

    @property
    def trust_domain(self) -> str:
        return self.roots.get("TrustDomain") or ""

    @property
    def active_root_id(self) -> str:
        return self.roots.get("ActiveRootID") or ""


def build_material(leaf: dict, roots: dict) -> Material:
    cadata = "".join(
        (r.get("RootCert") or "") + "".join(r.get("IntermediateCerts") or []) for r in roots.get("Roots") or []
    )
    if not cadata:
        raise ProxyError("the Connect CA has no roots")
    cert_path = _memfile(leaf["CertPEM"])
    key_path = _memfile(leaf["PrivateKeyPEM"])
    try:
        server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        for ctx in (server, client):
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            ctx.load_cert_chain(cert_path, key_path)
            ctx.load_verify_locations(cadata=cadata)
            ctx.verify_mode = ssl.CERT_REQUIRED
        client.check_hostname = False  # identity is the SPIFFE URI SAN, checked after the handshake
    finally:
        _release(cert_path)
        _release(key_path)
    return Material(leaf=leaf, roots=roots, server=server, client=client)
