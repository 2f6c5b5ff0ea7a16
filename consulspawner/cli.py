"""What the command-line tools (consulspawner-janitor, consulspawner-reach) share: how they are
told where Consul is and which token to use.

The token comes from a file or ``$CONSUL_HTTP_TOKEN`` (the consul CLI's variable), never from the
command line, where every user of the machine could read it in the process list.
"""

from __future__ import annotations

import argparse
import os
import sys


def add_consul_arguments(parser: argparse.ArgumentParser, *, token_help: str) -> None:
    """``--consul-address``, ``--token-file`` and ``--ca-file``, with the consul CLI's
    environment variables as defaults."""
    parser.add_argument(
        "--consul-address",
        default=os.environ.get("CONSUL_HTTP_ADDR", "http://127.0.0.1:8500"),
        help="Consul agent address (default: $CONSUL_HTTP_ADDR or http://127.0.0.1:8500)",
    )
    parser.add_argument("--token-file", help=token_help)
    parser.add_argument("--ca-file", default=os.environ.get("CONSUL_CACERT"), help="CA bundle for HTTPS")


def read_token(args: argparse.Namespace, prog: str) -> str | None:
    """The token of ``--token-file`` (stripped), else ``$CONSUL_HTTP_TOKEN``; None for none. An
    unreadable file ends the program with a message naming the option, never the token."""
    if not args.token_file:
        return os.environ.get("CONSUL_HTTP_TOKEN") or None
    try:
        with open(args.token_file) as f:
            return f.read().strip() or None
    except OSError as e:
        sys.exit(f"{prog}: cannot read --token-file {args.token_file}: {e.strerror}")
