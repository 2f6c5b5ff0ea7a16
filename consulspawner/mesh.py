"""The Consul side of one server's life: token, registration, readiness, intentions, teardown.

:class:`ServerMesh` knows nothing of containers. A spawner drives it around its own backend:
``mint_token`` -> ``register`` -> (start notebook) -> ``register(address)`` -> (start sidecar)
-> ``wait_until_ready`` -> ``grant``; and on the way out ``revoke`` -> (stop sidecar and
notebook) -> ``deregister`` -> ``delete_token``. Each step records what it created in
:class:`MeshState`, which the spawner persists, so a restarted hub can still undo it; each undo
tolerates "already gone".
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field

from . import ownership
from .consul import ConsulClient, ConsulError
from .intentions import KIND, IntentionWriter
from .plan import MeshPlan

log = logging.getLogger(__name__)


class SidecarNotReady(Exception):
    """The sidecar did not pass its Consul checks in time (or its container died)."""


@dataclass
class MeshState:
    """What exists in Consul for one server. Persisted in the spawner's state; never a secret."""

    service_id: str = ""
    token_accessor: str = ""
    token_expires_at: float = 0.0
    registered: bool = False
    granted: list[list[str]] = field(default_factory=list)  # [destination, source] pairs
    grant_expires_at: float = 0.0

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v}

    @classmethod
    def from_dict(cls, data: dict | None) -> MeshState:
        data = data or {}
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        state = cls(**known)
        state.granted = [list(pair) for pair in state.granted]
        return state

    @property
    def empty(self) -> bool:
        return not (self.registered or self.token_accessor or self.granted)


class ServerMesh:
    """Creates and removes one server's Consul objects, recording each in ``state``."""

    def __init__(
        self,
        consul: ConsulClient,
        writer: IntentionWriter,
        plan: MeshPlan,
        state: MeshState,
        *,
        clock: Callable[[], float] = time.time,
        retry_budget: float = 15.0,
        logger: logging.Logger | logging.LoggerAdapter | None = None,
    ):
        self.log = logger or log
        self.consul = consul
        self.writer = writer
        self.plan = plan
        self.state = state
        self.clock = clock
        self.retry_budget = retry_budget
        self.user = plan.owner.user

    async def _retry(self, call: Callable[[], Awaitable]):
        return await self.consul.retrying(call, budget=self.retry_budget)

    # -- creation -------------------------------------------------------------------------------

    async def mint_token(self) -> str:
        """A token with only this server's service identity; returns the secret (kept in
        memory by the caller, handed to the sidecar, never persisted)."""
        plan = self.plan
        token = await self.consul.create_service_token(
            plan.service_name, plan.token_description(), plan.settings.token_ttl
        )
        self.state.token_accessor = token["AccessorID"]
        self.state.token_expires_at = self.clock() + plan.settings.token_ttl
        self.log.info("Minted Consul token %s for %s (user %r)", token["AccessorID"], plan.service_name, self.user)
        return token["SecretID"]

    async def register(self, address: str | None = None) -> None:
        """Register (or re-register, same ID: idempotent) the service and its sidecar."""
        self.state.service_id = self.plan.service_id
        await self._retry(lambda: self.consul.register_service(self.plan.registration(address)))
        self.state.registered = True
        self.log.info(
            "Registered Consul service %s with sidecar %s (user %r)",
            self.plan.service_id, self.plan.sidecar_id, self.user,
        )

    async def heartbeat(self, note: str = "notebook and sidecar running") -> None:
        await self.consul.pass_ttl(self.plan.check_id, note)

    async def wait_until_ready(
        self, timeout: float, still_running: Callable[[], Awaitable[bool]] | None = None
    ) -> None:
        """Wait until the sidecar instance passes all its checks (its TCP listener and the alias
        of the server's own TTL check), with blocking queries, failing fast if ``still_running``
        says the sidecar died.

        After a sidecar restart its checks may still say "passing" from the previous sidecar
        (Consul keeps a re-run check's status until its next interval), so readiness also
        dials the sidecar's public address and port itself, as the TCP check would."""
        plan = self.plan
        deadline = time.monotonic() + timeout
        index = 0
        failing: list[str] = ["(no instance yet)"]
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise SidecarNotReady(
                    f"sidecar {plan.sidecar_id} not ready after {timeout:g}s; failing checks: {', '.join(failing)}"
                )
            if still_running is not None and not await still_running():
                raise SidecarNotReady(f"sidecar {plan.sidecar_id} stopped before it became ready")
            index, entries = await self.consul.health_service(
                f"{plan.service_name}-sidecar-proxy", index=index, wait=min(remaining, 2.0)
            )
            mine = [e for e in entries if e.get("Service", {}).get("ID") == plan.sidecar_id]
            if mine:
                checks = [c for c in mine[0].get("Checks", []) if c.get("ServiceID") == plan.sidecar_id]
                failing = [f"{c.get('Name')}={c.get('Status')}" for c in checks if c.get("Status") != "passing"]
                service = mine[0].get("Service", {})
                if checks and not failing:
                    if await _listening(service.get("Address"), service.get("Port")):
                        self.log.info("Sidecar %s is ready (user %r)", plan.sidecar_id, self.user)
                        return
                    failing = [f"public listener {service.get('Address')}:{service.get('Port')} not answering"]
                    index = 0  # poll again shortly rather than block on an unchanged index
                    await asyncio.sleep(0.2)

    async def grant(self) -> None:
        """Grant (or extend) this server's intentions until now + intention_ttl."""
        now = self.clock()
        grants = self.plan.grants(now)
        await asyncio.gather(*(self.writer.grant(destination, entry) for destination, entry in grants))
        recorded = {tuple(pair) for pair in self.state.granted}
        for destination, entry in grants:
            if (destination, entry["Name"]) not in recorded:
                self.state.granted.append([destination, entry["Name"]])
        self.state.grant_expires_at = now + self.plan.settings.intention_ttl

    async def keep_alive(self) -> None:
        """Called on every poll while the server runs: refresh the TTL check, and extend the
        intentions once half their lifetime is gone (not on every poll: each is a write)."""
        await self.heartbeat()
        remaining = self.state.grant_expires_at - self.clock()
        if self.state.granted and remaining < self.plan.settings.intention_ttl / 2:
            await self.grant()

    # -- checks for poll and reconciliation -----------------------------------------------------

    async def registered_in_consul(self) -> bool:
        return await self.consul.agent_service(self.plan.service_id) is not None

    async def token_exists(self) -> bool:
        return bool(self.state.token_accessor) and await self.consul.read_token(self.state.token_accessor) is not None

    def token_due(self, margin: float) -> bool:
        """Whether the token expires within ``margin`` seconds (Consul cannot extend a token)."""
        return bool(self.state.token_accessor) and self.state.token_expires_at - self.clock() <= margin

    async def delete_stale_tokens(self) -> None:
        """Delete tokens this hub minted for this server other than the current one (left by a
        rotation whose state the hub had not saved before it restarted)."""
        for token in await self.consul.list_tokens():
            owner = ownership.parse(token.get("Description"))
            if (owner and owner.hub == self.plan.owner.hub and owner.service == self.plan.service_name
                    and token["AccessorID"] != self.state.token_accessor):
                await self.delete_token_by_accessor(token["AccessorID"])

    async def delete_token_by_accessor(self, accessor: str) -> None:
        if await self._retry(lambda: self.consul.delete_token(accessor)):
            self.log.info("Deleted Consul token %s (user %r)", accessor, self.user)
        else:
            self.log.debug("Consul token %s was already gone", accessor)

    # -- teardown -------------------------------------------------------------------------------

    async def revoke(self) -> None:
        """Revoke every intention recorded in state (and those the plan names)."""
        pairs = {tuple(pair) for pair in self.state.granted} | set(self.plan.revocations())
        results = await asyncio.gather(
            *(self.writer.revoke(destination, source) for destination, source in pairs), return_exceptions=True
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise errors[0]
        self.state.granted = []
        self.state.grant_expires_at = 0.0

    async def deregister(self) -> None:
        service_id = self.state.service_id or self.plan.service_id
        if await self._retry(lambda: self.consul.deregister_service(service_id)):
            self.log.info("Deregistered Consul service %s (user %r)", service_id, self.user)
        else:
            self.log.debug("Consul service %s was already gone", service_id)
        self.state.registered = False

    async def delete_token(self) -> None:
        if not self.state.token_accessor:
            return
        await self.delete_token_by_accessor(self.state.token_accessor)
        self.state.token_accessor = ""
        self.state.token_expires_at = 0.0

    async def undo(self, steps: list[str]) -> list[ConsulError | Exception]:
        """Run teardown steps in order, collecting errors so one failure does not stop the rest."""
        errors: list[ConsulError | Exception] = []
        for step in steps:
            try:
                await getattr(self, step)()
            except Exception as e:
                self.log.warning("Could not %s for %s (user %r): %s", step, self.plan.service_id, self.user, e)
                errors.append(e)
        return errors


async def _listening(address: str | None, port: int | None, timeout: float = 1.0) -> bool:
    if not address or not port:
        return False
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(address, port), timeout)
    except (OSError, asyncio.TimeoutError):
        return False
    writer.close()
    try:
        await writer.wait_closed()
    except OSError:
        pass
    return True


async def sweep_orphans(consul: ConsulClient, writer: IntentionWriter, hub_instance: str,
                        keep: Callable[[], set[str]], logger: logging.Logger | None = None) -> list[str]:
    """Revoke everything this hub owns in Consul that belongs to no live server.

    ``keep()`` returns the service names of the hub's running and pending servers; it is asked
    again right before each deletion, so a server spawned meanwhile is left alone. Intentions
    go first.
    Returns what was removed, one line each.
    """
    services = await consul.agent_services()
    entries = await consul.list_config(KIND)
    tokens = await consul.list_tokens()
    removed: list[str] = []

    def orphaned(owner: ownership.Owner | None) -> bool:
        # keep() again before every deletion: a server spawned meanwhile is never touched.
        return owner is not None and owner.hub == hub_instance and owner.service not in keep()

    for entry in entries:
        for source in entry.get("Sources") or []:
            owner = ownership.parse(source.get("Description"))
            if orphaned(owner):
                # Only the source as we read it: a re-grant changes the Description (expiry).
                await writer.revoke(entry["Name"], source["Name"],
                                    only_if=lambda s, seen=source: s.get("Description") == seen.get("Description"))
                removed.append(f"intention {source['Name']} -> {entry['Name']} (user {owner.user!r})")
    for service_id, service in services.items():
        meta = service.get("Meta") or {}
        if (ownership.is_managed_service(service) and service.get("Kind") != "connect-proxy"
                and meta.get(ownership.META_HUB) == hub_instance and service_id not in keep()):
            await consul.deregister_service(service_id)
            removed.append(f"service {service_id} (user {meta.get(ownership.META_USER)!r})")
    for token in tokens:
        owner = ownership.parse(token.get("Description"))
        if orphaned(owner):
            await consul.delete_token(token["AccessorID"])
            removed.append(f"token {token['AccessorID']} (user {owner.user!r})")
    for line in removed:
        (logger or log).info("Removed orphaned %s of hub %s", line, hub_instance)
    return removed
