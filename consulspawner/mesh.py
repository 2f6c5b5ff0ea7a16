"""The Consul side of one server's life: token, registration, readiness, intentions, teardown.

:class:`ServerMesh` knows nothing of containers. A spawner drives it around its own backend:
``mint_token`` -> (start notebook) -> ``register(address)`` -> (start sidecar) ->
``wait_until_ready`` -> ``grant``; and on the way out ``revoke`` -> (stop sidecar and notebook)
-> ``deregister`` -> ``delete_tokens``.

Every start is an *incarnation* with its own ID, written into everything it creates (token
Description, service Meta, intention Description) and into :class:`MeshState`. Each step
records what it is about to create *before* asking Consul, so an answer that never arrives
(timeout, cancelled spawn) still leaves enough in state to undo it. Teardown needs nothing but
that state: no plan, no configuration, no user callable. And every deletion of a reusable name
(the service ID, the intention source) only removes what carries this incarnation, so a late or
retried teardown of an old server can never remove the next server of the same user.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable

from . import ownership
from .consul import ConsulClient, ConsulError
from .intentions import IntentionWriter
from .plan import MeshPlan
from .state import MeshState, new_incarnation

__all__ = ["MeshState", "ServerMesh", "SidecarNotReady", "new_incarnation"]

log = logging.getLogger(__name__)


class SidecarNotReady(Exception):
    """The sidecar did not pass its Consul checks in time (or its container died)."""


class ServerMesh:
    """Creates and removes one server's Consul objects, recording each in ``state``.

    ``plan`` is needed to create (mint, register, grant); teardown (``revoke``, ``deregister``,
    ``delete_tokens``) uses ``state`` alone.
    """

    def __init__(
        self,
        consul: ConsulClient,
        writer: IntentionWriter,
        plan: MeshPlan | None,
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
        if plan is not None:
            state.incarnation = state.incarnation or plan.owner.incarnation
            state.hub_instance = plan.owner.hub
            state.service_id = plan.service_id
            state.service_name = plan.service_name
            state.user = plan.owner.user
            state.trino_user = plan.trino_user

    @property
    def user(self) -> str:
        return self.state.user

    def need_plan(self) -> MeshPlan:
        if self.plan is None:
            raise RuntimeError("creating Consul objects needs a mesh plan")
        return self.plan

    async def _retry(self, call: Callable[[], Awaitable]):
        return await self.consul.retrying(call, budget=self.retry_budget)

    # -- creation -------------------------------------------------------------------------------

    async def mint_token(self) -> str:
        """A token with only this server's service identity; returns the secret (kept in
        memory by the caller, handed to the sidecar, never persisted).

        Idempotent: both IDs are chosen here and the accessor is recorded before the request, so
        a token Consul committed without our seeing the answer is still known and undone; a
        retry that finds its own accessor already in use checks the secret and moves on.
        """
        plan = self.need_plan()
        accessor, secret = str(uuid.uuid4()), str(uuid.uuid4())
        if self.state.token_accessor:
            self.state.retired_accessors.append(self.state.token_accessor)
        self.state.token_accessor = accessor
        self.state.token_expires_at = self.clock() + plan.settings.token_ttl

        async def create():
            try:
                await self.consul.create_service_token(
                    plan.service_name,
                    plan.token_description(),
                    plan.settings.token_ttl,
                    accessor_id=accessor,
                    secret_id=secret,
                )
            except ConsulError as e:
                if e.status is not None and "already in use" in e.detail:
                    # An earlier attempt landed; its answer was lost. Ours only if the secret is.
                    existing = await self.consul.read_token(accessor)
                    if existing is not None and existing.get("SecretID") == secret:
                        return
                raise

        self.consul.remember_secret(secret)
        await self._retry(create)
        self.log.info("Minted Consul token %s for %s (user %r)", accessor, plan.service_name, self.user)
        return secret

    async def register(self, address: str) -> None:
        """Register (or re-register, same ID: idempotent) the service and its sidecar, with the
        server's TTL check already passing."""
        plan = self.need_plan()
        self.state.registered = True  # before the call: a registration whose answer was lost is undone too
        await self._retry(lambda: self.consul.register_service(plan.registration(address)))
        self.log.info(
            "Registered Consul service %s with sidecar %s at %s (user %r)",
            plan.service_id,
            plan.sidecar_id,
            address,
            self.user,
        )

    async def heartbeat(self, note: str = "notebook and sidecar running") -> None:
        await self.consul.pass_ttl(self.need_plan().check_id, note)

    async def wait_until_ready(
        self, timeout: float, still_running: Callable[[], Awaitable[bool]] | None = None
    ) -> None:
        """Wait until the sidecar instance passes all its checks (its TCP listener and the alias
        of the server's own TTL check), with blocking queries, failing fast if ``still_running``
        says the sidecar died.

        After a sidecar restart its checks may still say "passing" from the previous sidecar
        (Consul keeps a re-run check's status until its next interval), so readiness also
        dials the sidecar's public address and port itself, as the TCP check would."""
        plan = self.need_plan()
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
        plan = self.need_plan()
        now = self.clock()
        grants = plan.grants(now)
        recorded = {tuple(pair) for pair in self.state.granted}
        for destination, entry in grants:
            # Recorded before the write: a grant that lands after a timeout is still revoked.
            if (destination, entry["Name"]) not in recorded:
                self.state.granted.append([destination, entry["Name"]])
        await asyncio.gather(*(self.writer.grant(destination, entry) for destination, entry in grants))
        self.state.grant_expires_at = now + plan.settings.intention_ttl

    def grant_due(self) -> bool:
        """Whether half the intentions' lifetime is gone (extending costs a config write, so not
        on every heartbeat)."""
        plan = self.need_plan()
        remaining = self.state.grant_expires_at - self.clock()
        return bool(self.state.granted) and remaining < plan.settings.intention_ttl / 2

    # -- reads for the keeper -------------------------------------------------------------------

    async def registered_in_consul(self) -> bool:
        """Whether the agent still has this incarnation's service."""
        service = await self.consul.agent_service(self.state.service_id)
        return service is not None and self._is_ours(service)

    async def token_exists(self) -> bool:
        return bool(self.state.token_accessor) and await self.consul.read_token(self.state.token_accessor) is not None

    def token_due(self, margin: float) -> bool:
        """Whether the token expires within ``margin`` seconds (Consul cannot extend a token)."""
        return bool(self.state.token_accessor) and self.state.token_expires_at - self.clock() <= margin

    def _is_ours(self, service: dict) -> bool:
        # A registration of ours from before incarnations existed has none; an empty state
        # incarnation matches only that.
        return self.state.owns(ownership.service_owner(self.state.service_id, service))

    async def delete_stale_tokens(self) -> None:
        """Delete this hub's tokens for this service other than the current one (left by a
        rotation whose state the hub had not saved, or by an earlier incarnation). The list is
        filtered by Consul (``servicename``), not fetched whole."""
        for token in await self.consul.list_tokens(service_name=self.state.service_name):
            owner = ownership.parse(token.get("Description"))
            if (
                owner
                and owner.hub == self.state.hub_instance
                and owner.service == self.state.service_name
                and token["AccessorID"] != self.state.token_accessor
            ):
                await self.delete_token_by_accessor(token["AccessorID"])

    async def delete_token_by_accessor(self, accessor: str) -> None:
        if await self._retry(lambda: self.consul.delete_token(accessor)):
            self.log.info("Deleted Consul token %s (user %r)", accessor, self.user)
        else:
            self.log.debug("Consul token %s was already gone", accessor)

    # -- teardown: state alone ------------------------------------------------------------------

    async def revoke(self) -> None:
        """Revoke every intention recorded in state, and only while it carries this incarnation
        (a newer server of the same user has replaced the source otherwise)."""
        pairs = {tuple(pair) for pair in self.state.granted}

        def this_incarnation(source: dict) -> bool:
            return self.state.owns(ownership.parse(source.get("Description")))

        results = await asyncio.gather(
            *(self.writer.revoke(destination, source, only_if=this_incarnation) for destination, source in pairs),
            return_exceptions=True,
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise errors[0]
        self.state.granted = []
        self.state.grant_expires_at = 0.0

    async def deregister(self, *, verify: bool = True) -> None:
        """Deregister the service (its sidecar goes with it), only if the agent's registration
        is this incarnation's.

        ``verify=False`` skips reading the registration first (one Consul call less per stop):
        for a caller that holds the server's lifecycle lock, under which no newer incarnation of
        this server can have registered."""
        service_id = self.state.service_id
        if not self.state.registered or not service_id:
            self.state.registered = False
            return
        service = await self._retry(lambda: self.consul.agent_service(service_id)) if verify else {}
        if service is None:
            self.log.debug("Consul service %s was already gone", service_id)
        elif verify and not self._is_ours(service):
            self.log.info("Consul service %s now belongs to a newer server; left alone", service_id)
        elif await self._retry(lambda: self.consul.deregister_service(service_id)):
            self.log.info("Deregistered Consul service %s (user %r)", service_id, self.user)
        self.state.registered = False

    async def delete_tokens(self) -> None:
        """Delete the current token and any a rotation retired (accessors are never reused)."""
        for accessor in [*self.state.retired_accessors, self.state.token_accessor]:
            if accessor:
                await self.delete_token_by_accessor(accessor)
                if accessor in self.state.retired_accessors:
                    self.state.retired_accessors.remove(accessor)
        self.state.token_accessor = ""
        self.state.token_expires_at = 0.0

    async def delete_retired_tokens(self) -> None:
        for accessor in list(self.state.retired_accessors):
            await self.delete_token_by_accessor(accessor)
            self.state.retired_accessors.remove(accessor)


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
