"""``python -m consulspawner_dev.fakeconsul``: serve a fake Consul agent until killed."""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from .server import FakeConsul


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m consulspawner_dev.fakeconsul", description=__doc__)
    parser.add_argument("--port", type=int, required=True, help="port to listen on (0: any free port)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument(
        "--acl-master-token", default=None, help="turn ACLs on (default deny) with this management token"
    )
    parser.add_argument(
        "--acl-master-token-file",
        default=None,
        help="as --acl-master-token, read from a file (keeps the token out of the process list)",
    )
    parser.add_argument("--datacenter", default="dc1")
    parser.add_argument("--reap-interval", type=float, default=0.5)
    args = parser.parse_args(argv)
    if args.acl_master_token_file:
        with open(args.acl_master_token_file) as f:
            args.acl_master_token = f.read().strip() or None

    done = threading.Event()

    def _stop(_signum, _frame):
        done.set()

    # Handlers go in before serving so a signal right after the "listening" line is clean too.
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    fake = FakeConsul(
        acl_master_token=args.acl_master_token,
        datacenter=args.datacenter,
        host=args.host,
        port=args.port,
        reap_interval=args.reap_interval,
    ).start()
    print(f"fakeconsul listening on {fake.url}", flush=True)
    try:
        while not done.wait(0.5):
            pass
    finally:
        fake.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
