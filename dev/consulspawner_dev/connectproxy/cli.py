"""The command line: ``connectproxy -sidecar-for <id> ...`` and ``connectproxy ready``."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading

from . import ready
from .agent import Agent, ProxyError, TokenRefused
from .proxy import DEFAULT_DRAIN_TIME, DEFAULT_REAUTHORIZE_INTERVAL, ConnectProxy

log = logging.getLogger("connectproxy")

DEFAULT_HTTP_ADDR = "127.0.0.1:8500"


def read_token(token_file: str | None) -> str | None:
    path = token_file or os.environ.get("CONSUL_HTTP_TOKEN_FILE")
    if path:
        with open(path, encoding="utf-8") as f:
            token = f.read().strip()
        if token:
            return token
    return os.environ.get("CONSUL_HTTP_TOKEN") or None


def _flag(parser: argparse.ArgumentParser, name: str, **kw) -> None:
    parser.add_argument(f"-{name}", f"--{name}", dest=name.replace("-", "_"), **kw)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="connectproxy",
        description="Development stand-in for a Consul Connect sidecar proxy (mTLS, intentions, L7 RBAC).",
        allow_abbrev=False,
    )
    which = parser.add_mutually_exclusive_group(required=True)
    _flag(which, "sidecar-for", metavar="SERVICE_ID", help="ID of the service this proxy is the sidecar of")
    _flag(which, "proxy-id", metavar="PROXY_ID", help="ID of the proxy service itself (<service-id>-sidecar-proxy)")
    _flag(
        parser,
        "http-addr",
        default=os.environ.get("CONSUL_HTTP_ADDR") or DEFAULT_HTTP_ADDR,
        help="Consul agent address (default: $CONSUL_HTTP_ADDR or %(default)s)",
    )
    _flag(parser, "token-file", help="file with the ACL token (default: $CONSUL_HTTP_TOKEN_FILE, $CONSUL_HTTP_TOKEN)")
    _flag(
        parser, "ca-file", default=os.environ.get("CONSUL_CACERT"), help="CA bundle for https (default $CONSUL_CACERT)"
    )
    _flag(
        parser,
        "admin-socket",
        default=ready.DEFAULT_ADMIN_SOCKET,
        help="unix socket of the admin endpoint (%(default)s)",
    )
    _flag(
        parser,
        "reauthorize-interval",
        type=float,
        default=DEFAULT_REAUTHORIZE_INTERVAL,
        help="seconds between re-authorizations of open L4 connections (default %(default)s)",
    )
    _flag(
        parser,
        "drain-time-s",
        type=float,
        default=DEFAULT_DRAIN_TIME,
        help="seconds a connection the intentions no longer allow is drained before it is closed, "
        "as Envoy's --drain-time-s (default %(default)s)",
    )
    _flag(parser, "register-timeout", type=float, default=60.0, help="seconds to wait for the registration")
    args = parser.parse_args(argv)
    if args.sidecar_for is not None:
        args.proxy_id = f"{args.sidecar_for}-sidecar-proxy"
    if args.reauthorize_interval <= 0:
        parser.error("-reauthorize-interval must be positive")
    if args.drain_time_s < 0:
        parser.error("-drain-time-s must not be negative")
    return args


def ready_main(argv: list[str]) -> int:
    """``connectproxy ready``: the image's ``sidecar-ready`` (ready.py), reached through the CLI."""
    return ready.main(argv)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "ready":
        return ready_main(argv[1:])
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO, format="%(asctime)s connectproxy %(levelname)s %(message)s"
    )
    args = parse_args(argv)
    try:
        token = read_token(args.token_file)
    except OSError as e:
        log.error("cannot read the token file: %s", e)
        return 1
    proxy = ConnectProxy(
        Agent(args.http_addr, token, args.ca_file),
        args.proxy_id,
        admin_socket=args.admin_socket,
        reauthorize_interval=args.reauthorize_interval,
        drain_time=args.drain_time_s,
    )

    signalled = threading.Event()

    def on_signal(signum, _frame):
        log.info("received %s, stopping", signal.Signals(signum).name)
        signalled.set()
        threading.Thread(target=proxy.stop, daemon=True).start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log.info("proxy %s starting (agent %s, token %s)", args.proxy_id, proxy.agent.base, "set" if token else "not set")
    try:
        proxy.start(timeout=args.register_timeout)
    except ProxyError as e:
        if signalled.is_set() and not isinstance(e, TokenRefused):
            return 0  # asked to stop before it was ready
        log.error("%s", e)
        return 1
    code = proxy.wait()
    log.info("proxy %s stopped (exit %d)", args.proxy_id, code)
    return code
