"""consulspawner-reach: who can reach which destination now, since when and until when, from
Consul alone (no hub, no hub database).

Consul decides who reaches a destination through its ``service-intentions`` config entry; every
source the hub grants carries an ownership marker (``ownership``: hub instance, hub user,
server, incarnation, ``since`` and ``expires_at``). This command reads those entries and the
catalog (is the source service still registered?) and prints one row per allowed source.

What a row's ``state`` means, given that Consul enforces an intention whatever its marker says
(intentions have no expiry in Consul; the hub and the janitor remove them):

- ``active``: ours, not expired, its service registered;
- ``expired``: ours, past its expiry: still allowed by Consul until the hub or janitor removes it;
- ``service-gone``: ours, not expired, but no instance of the source service is registered
  (a server stopped without its teardown, or between registration and grant);
- ``foreign``: an allow written by someone else (an operator, another tool): no owner known.

It needs only read privileges: ``intentions = "read"`` on the destinations and ``policy =
"read"`` on services (a ``service_prefix "" { policy = "read" }`` rule gives both: a service
rule implies intentions read, acl/policy_authorizer.go; the service list is filtered by
service read alone, agent/structs/aclfilter/filter.go ``filterServices``). With less,
Consul leaves out what the token may not read and says so in a header; the command warns.
The token comes from ``--token-file`` or ``$CONSUL_HTTP_TOKEN`` and is never printed.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import sys
import time
from dataclasses import asdict, dataclass

from . import cli, ownership
from .consul import ConsulClient, ConsulError
from .entries import KIND, TRINO_USER_HEADER

# Set by Consul's HTTP layer when a list left out entries the token may not read
# (agent/consul/config_endpoint.go List: reply.QueryMeta.ResultsFilteredByACLs; parsed by
# api/api.go), and only for an authenticated (non-anonymous) token.
FILTERED_HEADER = "X-Consul-Results-Filtered-By-ACLs"
COLUMNS = ("destination", "source", "hub_user", "server_name", "trino_user", "since", "until", "state")


@dataclass(frozen=True)
class Reach:
    """One source allowed to reach one destination."""

    destination: str
    source: str
    mode: str  # "L4": the whole connection; "L7": HTTP requests as ``trino_user`` only
    state: str
    registered: bool
    managed: bool
    hub_instance: str = ""
    hub_user: str = ""
    server_name: str = ""
    incarnation: str = ""
    trino_user: str | None = None
    since: int | None = None  # Unix seconds
    until: int | None = None


@dataclass(frozen=True)
class Answer:
    rows: list[Reach]
    at: float
    filtered: bool  # Consul left out entries this token may not read


def _trino_user(source: dict) -> str | None:
    """The Trino user an L7 source may act as: the header value its first allow matches."""
    for permission in source.get("Permissions") or []:
        if permission.get("Action") != "allow":
            continue
        for header in (permission.get("HTTP") or {}).get("Header") or []:
            if str(header.get("Name", "")).lower() == TRINO_USER_HEADER.lower() and header.get("Exact"):
                return header["Exact"]
    return None


def _allows(source: dict) -> bool:
    if source.get("Permissions"):
        return any(p.get("Action") == "allow" for p in source["Permissions"])
    return source.get("Action") == "allow"


def rows_from(entries: list[dict], registered: set[str], now: float, hub_instance: str | None = None) -> list[Reach]:
    """The rows for ``entries`` (as ``GET /v1/config/service-intentions`` returns them). Pure."""
    rows = []
    for entry in entries:
        destination = entry.get("Name", "")
        for source in entry.get("Sources") or []:
            if not _allows(source):
                continue
            name = source.get("Name", "")
            mode = "L7" if source.get("Permissions") else "L4"
            owner = ownership.parse(source.get("Description"))
            is_registered = name == "*" or name in registered
            if owner is None:
                if hub_instance is None:
                    rows.append(
                        Reach(destination, name, mode, "foreign", is_registered, False, trino_user=_trino_user(source))
                    )
                continue
            if hub_instance is not None and owner.hub != hub_instance:
                continue
            if owner.expires_at is not None and owner.expires_at <= now:
                state = "expired"
            elif not is_registered:
                state = "service-gone"
            else:
                state = "active"
            rows.append(
                Reach(
                    destination,
                    name,
                    mode,
                    state,
                    is_registered,
                    True,
                    hub_instance=owner.hub,
                    hub_user=owner.user,
                    server_name=owner.server,
                    incarnation=owner.incarnation,
                    trino_user=_trino_user(source),
                    since=owner.since,
                    until=owner.expires_at,
                )
            )
    return sorted(rows, key=lambda r: (r.destination, r.hub_user, r.source))


async def survey(consul: ConsulClient, *, hub_instance: str | None = None, clock=time.time) -> Answer:
    """Read the intentions and the catalog (two GETs) and answer."""
    intentions = await consul.request("GET", f"/v1/config/{KIND}")
    catalog = await consul.request("GET", "/v1/catalog/services")
    filtered = any(response.headers.get(FILTERED_HEADER, "").lower() == "true" for response in (intentions, catalog))
    rows = rows_from(intentions.body or [], set(catalog.body or {}), clock(), hub_instance)
    return Answer(rows, clock(), filtered)


def _iso(unix: int | float | None) -> str | None:
    if unix is None:
        return None
    stamp = datetime.datetime.fromtimestamp(unix, datetime.UTC)
    return stamp.isoformat(timespec="seconds").replace("+00:00", "Z")


def as_json(answer: Answer) -> str:
    """The answer as one JSON document: ``at``, ``filtered_by_acls`` and ``rows`` (times ISO 8601 UTC)."""
    rows = []
    for row in answer.rows:
        data = asdict(row)
        data["since"], data["until"] = _iso(row.since), _iso(row.until)
        rows.append(data)
    return json.dumps(
        {"at": _iso(answer.at), "filtered_by_acls": answer.filtered, "rows": rows}, ensure_ascii=False, indent=2
    )


def as_table(answer: Answer) -> str:
    """A plain-text table, one row per allowed source; ``-`` where nothing is known."""

    def cell(row: Reach, column: str) -> str:
        if column in ("since", "until"):
            return _iso(getattr(row, column)) or "-"
        if column == "trino_user":
            return row.trino_user or ("any" if row.mode == "L4" else "-")
        return str(getattr(row, column)) or "-"

    cells = [list(COLUMNS)] + [[cell(row, c) for c in COLUMNS] for row in answer.rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(COLUMNS))]
    lines = ["  ".join(value.ljust(widths[i]) for i, value in enumerate(r)).rstrip() for r in cells]
    lines.append(f"{len(answer.rows)} source(s) allowed at {_iso(answer.at)}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="consulspawner-reach",
        description="Who can reach which destination now, since when and until when, from Consul alone. "
        "Needs intentions:read and service:read. The token comes from --token-file or $CONSUL_HTTP_TOKEN.",
    )
    cli.add_consul_arguments(parser, token_help="file holding a Consul token with read privileges")
    parser.add_argument("--hub-instance", help="only this hub's grants (default: every source, foreign ones too)")
    parser.add_argument("--destination", help="only this destination")
    parser.add_argument("--user", help="only this hub user")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return parser.parse_args(argv)


async def run(args: argparse.Namespace, token: str | None) -> int:
    async with ConsulClient(args.consul_address, token, ca_file=args.ca_file) as consul:
        try:
            answer = await survey(consul, hub_instance=args.hub_instance)
        except ConsulError as e:  # its text names the call and has secrets removed
            print(f"consulspawner-reach: {e}", file=sys.stderr)
            return 1
    rows = [
        row
        for row in answer.rows
        if (args.destination is None or row.destination == args.destination)
        and (args.user is None or row.hub_user == args.user)
    ]
    answer = Answer(rows, answer.at, answer.filtered)
    print(as_json(answer) if args.json else as_table(answer))
    if answer.filtered:
        print(
            "consulspawner-reach: Consul left out entries this token may not read; the answer is incomplete",
            file=sys.stderr,
        )
    return 0


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    sys.exit(asyncio.run(run(args, cli.read_token(args, "consulspawner-reach"))))


if __name__ == "__main__":
    main()
