"""consulspawner-janitor: removes what a dead or confused hub left in Consul, from Consul alone.

It needs neither the hub nor its database: everything consulspawner writes carries an ownership
marker (service ``Meta``, intention ``Description``; see ``ownership``), and every pass
decides from those and from what Consul reports:

- an owned intention source is deleted once its expiry has passed, or once its source service
  has had no registered instance for ``--grace`` seconds;
- ACL tokens are not its business: every server's token is made by login at the hub's JWT
  auth method, is local, and expires after the method's MaxTokenTTL; the janitor holds no
  ``acl`` right at all (docker/consul/janitor-policy.hcl);
- an owned service is deregistered once its check has been seen critical for ``--critical-limit``
  seconds (the agent's own reaper does this through ``DeregisterCriticalServiceAfter``; this is
  for agents where it is off).

"Seen missing/critical for N seconds" is measured across passes of one janitor process, so
``--once`` acts only on hard evidence (expired intentions). It is measured per object: from the
pass that first saw *this* start's intention source (by destination,
source and incarnation) or *this* service instance critical, never from what the janitor saw of
an earlier object with the same service name; an object a pass no longer sees is forgotten.
Nothing without our marker is ever
touched, and a lookup that fails keeps rather than deletes. Run it against the same Consul agent
as the hub: services are registered on that agent.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeGuard

from . import cli, metrics, ownership
from .consul import ConsulClient, ConsulError
from .entries import KIND
from .intentions import IntentionWriter

log = logging.getLogger("consulspawner.janitor")


@dataclass(frozen=True)
class Deletion:
    """One thing a pass removes (or, in a dry run, would remove)."""

    kind: str  # "intention" or "service"
    target: str  # "source -> destination", accessor ID, or service ID
    user: str
    hub: str
    reason: str
    incarnation: str = ""  # the server start that created it: only that one is ever deleted
    service: str = ""  # the service name a token is for (re-checked before it is deleted)

    def line(self) -> str:
        return f"{self.kind} {self.target} (hub {self.hub!r}, user {self.user!r}): {self.reason}"


class Janitor:
    """One pass at a time of expiry and orphan cleanup. ``hub_instance`` limits it to one hub's
    objects (None: every consulspawner hub's)."""

    def __init__(
        self,
        consul: ConsulClient,
        *,
        hub_instance: str | None = None,
        grace: float = 120.0,
        critical_limit: float = 300.0,
        clock: Callable[[], float] = time.time,
    ):
        self.consul = consul
        self.hub_instance = hub_instance
        self.grace = grace
        self.critical_limit = critical_limit
        self.clock = clock
        # Per object, the first pass that saw it without its service instance / critical.
        self._missing_since: dict[tuple[str, ...], float] = {}
        self._critical_since: dict[tuple[str, str], float] = {}
        self._writers: dict[str, IntentionWriter] = {}

    def _mine(self, owner: ownership.Owner | None) -> TypeGuard[ownership.Owner]:
        return owner is not None and (self.hub_instance is None or owner.hub == self.hub_instance)

    def _writer(self, hub: str) -> IntentionWriter:
        if hub not in self._writers:
            self._writers[hub] = IntentionWriter(self.consul, hub)
        return self._writers[hub]

    def _missing_long_enough(
        self, key: tuple[str, ...], service: str, present: set[str], now: float, seen: set[tuple[str, ...]]
    ) -> bool:
        """Whether the object ``key`` has been seen, pass after pass, without an instance of
        ``service`` for the grace; counted from the first pass that saw this object so."""
        if service in present:
            return False
        seen.add(key)
        first = self._missing_since.setdefault(key, now)
        return now - first >= self.grace

    async def survey(self) -> list[Deletion]:
        """What this pass would delete; reads only."""
        now = self.clock()
        services = await self.consul.agent_services()
        checks = await self.consul.agent_checks()
        # A service (by name: IDs are per start) counts as present if any agent in the catalog
        # still has it.
        present = {s.get("Service") or sid for sid, s in services.items()} | set(await self.consul.catalog_services())
        deletions: list[Deletion] = []
        missing_now: set[tuple[str, ...]] = set()

        for entry in await self.consul.list_config(KIND):
            for source in entry.get("Sources") or []:
                owner = ownership.parse(source.get("Description"))
                if not self._mine(owner):
                    continue
                target = f"{source['Name']} -> {entry['Name']}"
                if owner.expires_at is not None and owner.expires_at <= now:
                    deletions.append(Deletion("intention", target, owner.user, owner.hub, "expired", owner.incarnation))
                elif self._missing_long_enough(
                    ("intention", entry["Name"], source["Name"], owner.incarnation),
                    source["Name"],
                    present,
                    now,
                    missing_now,
                ):
                    deletions.append(
                        Deletion(
                            "intention",
                            target,
                            owner.user,
                            owner.hub,
                            f"no instance of {source['Name']} for {self.grace:g}s",
                            owner.incarnation,
                        )
                    )

        critical_now: set[tuple[str, str]] = set()
        for service_id, service in services.items():
            if not ownership.is_managed_service(service) or service.get("Kind") == "connect-proxy":
                continue
            meta = service.get("Meta") or {}
            hub = meta.get(ownership.META_HUB, "")
            if self.hub_instance is not None and hub != self.hub_instance:
                continue
            own_checks = [c for c in checks.values() if c.get("ServiceID") == service_id]
            if own_checks and all(c.get("Status") == "critical" for c in own_checks):
                # Per instance: a re-registration by a newer start has its own clock.
                instance = (service_id, meta.get(ownership.META_INCARNATION, ""))
                critical_now.add(instance)
                first = self._critical_since.setdefault(instance, now)
                if now - first >= self.critical_limit:
                    deletions.append(
                        Deletion(
                            "service",
                            service_id,
                            meta.get(ownership.META_USER, ""),
                            hub,
                            f"critical for {self.critical_limit:g}s",
                            meta.get(ownership.META_INCARNATION, ""),
                        )
                    )
        # Forget what this pass did not see missing or critical: gone, or back. A later object
        # under the same name starts its own clock.
        for key in set(self._missing_since) - missing_now:
            del self._missing_since[key]
        for instance in set(self._critical_since) - critical_now:
            del self._critical_since[instance]
        return deletions

    async def apply(self, deletions: list[Deletion]) -> list[Deletion]:
        """Delete what ``survey`` found; returns what was really deleted. Errors are logged and
        collected so one failure does not stop the rest."""
        done = []
        now = self.clock()
        for deletion in deletions:
            try:
                if deletion.kind == "intention":
                    source, destination = deletion.target.split(" -> ")
                    expired_only = deletion.reason == "expired"

                    def still_due(current, expired_only=expired_only, incarnation=deletion.incarnation):
                        # Read again in the same CAS cycle that deletes: a source a newer server
                        # of the same user wrote meanwhile (another incarnation) is left alone.
                        owner = ownership.parse(current.get("Description"))
                        if owner is None or owner.incarnation != incarnation:
                            return False
                        return not expired_only or (owner.expires_at is not None and owner.expires_at <= now)

                    if not await self._writer(deletion.hub).revoke(destination, source, only_if=still_due):
                        log.info("Kept %s: it changed since the survey", deletion.line())
                        continue
                elif deletion.kind == "service":
                    if not await self._still_critical(deletion):
                        log.info("Kept %s: it changed since the survey", deletion.line())
                        continue
                    await self.consul.deregister_service(deletion.target)
            except Exception as e:
                log.warning("Could not delete %s: %s", deletion.line(), e)
                metrics.janitor_metrics().deletion_failed(deletion.kind)
                continue
            log.info("Deleted %s", deletion.line())
            metrics.janitor_metrics().deleted(deletion.kind)
            done.append(deletion)
        return done

    async def _present(self) -> set[str]:
        services = await self.consul.agent_services()
        return {s.get("Service") or sid for sid, s in services.items()} | set(await self.consul.catalog_services())

    async def _still_critical(self, deletion: Deletion) -> bool:
        """Whether the service the survey found critical is still registered, still the same
        start (incarnation) and still critical: the agent has no conditional deregister."""
        service = await self.consul.agent_service(deletion.target)
        if service is None or (service.get("Meta") or {}).get(ownership.META_INCARNATION, "") != deletion.incarnation:
            return False
        checks = [c for c in (await self.consul.agent_checks()).values() if c.get("ServiceID") == deletion.target]
        return bool(checks) and all(c.get("Status") == "critical" for c in checks)

    async def run_pass(self, dry_run: bool = False) -> list[Deletion]:
        deletions = await self.survey()
        if dry_run:
            for deletion in deletions:
                print(f"would delete {deletion.line()}", flush=True)
            return deletions
        return await self.apply(deletions)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="consulspawner-janitor",
        description="Remove expired and orphaned consulspawner objects (intentions, services) "
        "from Consul. The Consul token comes from $CONSUL_HTTP_TOKEN or --token-file, never the command line.",
    )
    cli.add_consul_arguments(parser, token_help="file holding the janitor's Consul token")
    parser.add_argument("--hub-instance", help="only clean objects of this hub (default: every consulspawner hub)")
    parser.add_argument("--once", action="store_true", help="run one pass and exit")
    parser.add_argument("--interval", type=float, default=30.0, help="seconds between passes (default 30)")
    parser.add_argument(
        "--grace",
        type=float,
        default=120.0,
        help="seconds a service must stay missing before its intentions go (default 120)",
    )
    parser.add_argument(
        "--critical-limit",
        type=float,
        default=300.0,
        help="seconds a service's check may stay critical before it is deregistered (default 300)",
    )
    parser.add_argument("--dry-run", action="store_true", help="print what would be deleted, delete nothing")
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument(
        "--metrics-port",
        type=int,
        help="serve Prometheus metrics (passes, deletions, failures) on this port, all interfaces",
    )
    args = parser.parse_args(argv)
    if args.interval <= 0 or args.grace < 0 or args.critical_limit < 0:
        parser.error("--interval must be positive, --grace and --critical-limit not negative")
    return args


async def run(args: argparse.Namespace, token: str | None) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    if args.metrics_port is not None:
        server, _ = metrics.serve_janitor_metrics(args.metrics_port)
        log.info("Serving metrics on port %d", server.server_port)
    async with ConsulClient(args.consul_address, token, ca_file=args.ca_file) as consul:
        janitor = Janitor(consul, hub_instance=args.hub_instance, grace=args.grace, critical_limit=args.critical_limit)
        while True:
            try:
                deletions = await janitor.run_pass(dry_run=args.dry_run)
                verb = "would delete" if args.dry_run else "deleted"
                log.info(
                    "Pass done: %s %d object(s)%s",
                    verb,
                    len(deletions),
                    "" if not deletions else ": " + ", ".join(sorted({d.kind for d in deletions})),
                )
                metrics.janitor_metrics().pass_done(ok=True)
            except ConsulError as e:
                log.warning("Pass failed, nothing deleted: %s", e)
                metrics.janitor_metrics().pass_done(ok=False)
                if args.once:
                    return 1
            if args.once or stop.is_set():
                return 0
            try:
                async with asyncio.timeout(args.interval):  # (not wait_for: see consul.py)
                    await stop.wait()
                return 0
            except TimeoutError:
                pass


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    sys.exit(asyncio.run(run(args, cli.read_token(args, "consulspawner-janitor"))))


if __name__ == "__main__":
    main()
