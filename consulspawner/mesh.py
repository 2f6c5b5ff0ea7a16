"""The Consul side of one server's life: token, registration, readiness, intentions, teardown.

:class:`ServerMesh` knows nothing of containers. A spawner drives it around its own backend:
``login`` -> (start notebook) -> ``register(address)`` -> (start sidecar) ->
``wait_until_ready`` -> ``grant``; and on the way out ``revoke`` -> (stop sidecar and notebook)
-> ``deregister`` -> ``logout``.

Every start is an *incarnation* with its own ID, written into everything it creates (the login
JWT and the token's Description, service Meta, intention Description) and into :class:`MeshState`. Each step
records what it is about to create *before* asking Consul, so an answer that never arrives
(timeout, cancelled spawn) still leaves enough in state to undo it. Teardown needs nothing but
that state: no plan, no configuration, no user callable. And every deletion of a reusable name
(the service ID, the intention source) only removes what carries this incarnation, so a late or
retried teardown of an old server can never remove the next server of the same user.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable
from datetime import datetime

from . import audit, identity, metrics, ownership
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

    ``plan`` is needed to create (login, register, grant); teardown (``revoke``, ``deregister``,
    ``logout``) uses ``state`` alone.
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
            state.server = plan.owner.server

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

    async def login(self, signer: identity.Signer, auth_method: str, audience: str, prefix: str) -> str:
        """A token with only this server's service identity, by login at the hub's JWT auth
        method; returns the secret (kept in this process's memory and handed to the sidecar,
        never persisted or logged).

        Consul chooses the token's IDs, so a login whose answer is lost leaves a token nobody
        knows: it has no intention (that is granted last, to this state's service), is local,
        and expires after the auth method's MaxTokenTTL. The sidecar starts only once Consul
        answers ``token/self`` for the new token (Nomad's TokenPreflightCheck).
        """
        plan = self.need_plan()
        owner = plan.owner
        claims = identity.server_claims(
            hub_instance=owner.hub,
            audience=audience,
            service_name=plan.service_name,
            prefix=prefix,
            hub_user=owner.user,
            server_name=owner.server,
            incarnation=owner.incarnation,
            now=time.time(),  # checked by Consul's clock, whatever clock this mesh keeps time with
        )
        bearer = signer.sign(claims)
        answer = await self._retry(lambda: self.consul.login(auth_method, bearer, owner.service_meta()))
        accessor, secret = answer["AccessorID"], answer["SecretID"]
        self.consul.remember_secret(secret)
        if self.state.token_accessor:
            self.state.retired_accessors.append(self.state.token_accessor)
        self.state.token_accessor = accessor
        self.state.secrets[accessor] = secret
        created = _go_time(answer.get("CreateTime")) or self.clock()
        expires = _go_time(answer.get("ExpirationTime"))
        self.state.token_expires_at = expires or 0.0
        self.state.token_lifetime = max(0.0, expires - created) if expires else 0.0
        await self._preflight(secret)
        self.log.info("Logged in Consul token %s for %s (user %r)", accessor, plan.service_name, self.user)
        return secret

    async def _preflight(self, secret: str) -> None:
        """Wait until Consul resolves the new token: a login answered by the leader may not
        have reached the server a follower agent asks (Nomad: TokenPreflightCheck)."""
        deadline = time.monotonic() + max(self.retry_budget, 1.0)
        delay = 0.05
        while await self._retry(lambda: self.consul.token_self(secret)) is None:
            if time.monotonic() >= deadline:
                raise ConsulError("GET /v1/acl/token/self", 404, "the token made by login never became known")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

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
        first = not self.state.granted_since
        since = self.state.granted_since = self.state.granted_since or now
        grants = plan.grants(now, since)
        recorded = {tuple(pair) for pair in self.state.granted}
        for destination, entry in grants:
            # Recorded before the write: a grant that lands after a timeout is still revoked.
            if (destination, entry["Name"]) not in recorded:
                self.state.granted.append([destination, entry["Name"]])
        await asyncio.gather(*(self.writer.grant(destination, entry) for destination, entry in grants))
        self.state.grant_expires_at = now + plan.settings.intention_ttl
        (metrics.GRANTS if first else metrics.EXTENSIONS).inc(len(grants))
        for destination, _ in grants:
            audit.emit_for(
                "grant" if first else "extend",
                self.state.owner(),
                trino_user=plan.trino_user,
                destination=destination,
                cause="server started" if first else "keeper extended the grant",
            )

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

    async def token_alive(self, secret: str) -> bool:
        """Whether Consul still knows the token ``secret`` (not expired, not logged out)."""
        return await self._retry(lambda: self.consul.token_self(secret)) is not None

    async def token_of(self, secret: str) -> dict | None:
        """What Consul knows of the token ``secret`` (``token/self``), None when it is gone."""
        return await self._retry(lambda: self.consul.token_self(secret))

    def adopt_token(self, token: dict, secret: str) -> bool:
        """After a hub restart: record the token this server's sidecar holds (``token``, as
        ``token/self`` answered for ``secret``) as its current one; False, recording nothing,
        when it is not this service's identity.

        A hub that died mid-rotation saved the new token before the sidecar had it (the sidecar
        still runs on the old one), or the new sidecar after it was saved: either way the token
        the state named and the sidecar does not hold is retired; its secret died with that hub,
        so it ends at its expiry."""
        state = self.state
        if [i.get("ServiceName") for i in token.get("ServiceIdentities") or []] != [state.service_name]:
            self.log.warning("The sidecar of %s holds a token of another identity; not adopted", state.service_id)
            return False
        accessor = token.get("AccessorID") or ""
        if accessor and accessor != state.token_accessor:
            self.log.warning(
                "The sidecar of %s runs on Consul token %s, not %s as saved (a hub stopped mid-rotation)",
                state.service_id,
                accessor,
                state.token_accessor or "none",
            )
            if state.token_accessor:
                state.retired_accessors.append(state.token_accessor)
            state.retired_accessors = [a for a in state.retired_accessors if a != accessor]
            state.token_accessor = accessor
            created, expires = _go_time(token.get("CreateTime")), _go_time(token.get("ExpirationTime"))
            state.token_expires_at = expires or 0.0
            state.token_lifetime = max(0.0, expires - created) if expires and created else 0.0
        state.secrets[state.token_accessor] = secret
        self.consul.remember_secret(secret)
        return True

    def token_due(self, margin: float) -> bool:
        """Whether the token expires within ``margin`` seconds (Consul cannot extend a token)."""
        return bool(self.state.token_accessor and self.state.token_expires_at) and (
            self.state.token_expires_at - self.clock() <= margin
        )

    def _is_ours(self, service: dict) -> bool:
        # A registration of ours from before incarnations existed has none; an empty state
        # incarnation matches only that.
        return self.state.owns(ownership.service_owner(self.state.service_id, service))

    async def logout_token(self, accessor: str) -> bool:
        """Give back one token of this server (``POST /v1/acl/logout`` with its own secret);
        True when this call logged it out. A token whose secret this process does not know (a
        hub restarted without its sidecar) cannot be logged out: it has no intention and ends at
        its expiry."""
        logged_out = False
        secret = self.state.secrets.get(accessor)
        if secret is None:
            self.log.info(
                "Consul token %s of %s: secret not held by this hub process; it expires at %s",
                accessor,
                self.state.service_id,
                time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.state.token_expires_at))
                if accessor == self.state.token_accessor and self.state.token_expires_at
                else "its MaxTokenTTL",
            )
        else:
            try:
                if await self._retry(lambda: self.consul.logout(secret)):
                    logged_out = True
                    self.log.info("Logged out Consul token %s (user %r)", accessor, self.user)
                else:
                    self.log.debug("Consul token %s was already gone", accessor)
            except ConsulError as e:
                # A token minted by a release before login (its secret read back from the
                # sidecar): Consul refuses to log it out (403 "token wasn't created via login",
                # agent/consul/acl_endpoint.go Logout), and the hub holds no acl right to
                # delete it. It has no grant once revoked, and ends at its ExpirationTTL.
                if e.status != 403 or "created via login" not in e.detail:
                    raise
                self.log.info("Consul token %s predates login; it expires at its ExpirationTTL", accessor)
        self.state.secrets.pop(accessor, None)
        if accessor in self.state.retired_accessors:
            self.state.retired_accessors.remove(accessor)
        return logged_out

    # -- teardown: state alone ------------------------------------------------------------------

    async def revoke(self, cause: str = "server stopped") -> None:
        """Revoke every intention recorded in state, and only while it carries this incarnation
        (a newer server of the same user has replaced the source otherwise)."""
        pairs = sorted({tuple(pair) for pair in self.state.granted})

        found: set[tuple] = set()  # sources this call found and removed (not gone already)

        def this_incarnation(pair: tuple) -> Callable[[dict], bool]:
            def check(source: dict) -> bool:
                ours = self.state.owns(ownership.parse(source.get("Description")))
                if ours:
                    found.add(pair)
                return ours

            return check

        results = await asyncio.gather(
            *(self.writer.revoke(pair[0], pair[1], only_if=this_incarnation(pair)) for pair in pairs),
            return_exceptions=True,
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        owner = self.state.owner()
        for (destination, source), result in zip(pairs, results, strict=True):
            # Counted once, by whoever removed it: not again by a late round that finds it gone,
            # nor when a newer incarnation's source was left alone (False).
            if result is True and (destination, source) in found:
                metrics.REVOKES.inc()
                audit.emit_for("revoke", owner, trino_user=self.state.trino_user, destination=destination, cause=cause)
        if errors:
            raise errors[0]
        self.state.granted = []
        self.state.granted_since = 0.0
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

    async def logout(self) -> None:
        """Log out the current token and any a rotation retired."""
        for accessor in [*self.state.retired_accessors, self.state.token_accessor]:
            if accessor:
                await self.logout_token(accessor)
        self.state.token_accessor = ""
        self.state.token_expires_at = 0.0
        self.state.token_lifetime = 0.0

    async def logout_retired(self) -> int:
        """Log out the tokens a rotation replaced; how many this call logged out."""
        return sum([await self.logout_token(accessor) for accessor in list(self.state.retired_accessors)])


def _go_time(text: str | None) -> float:
    """Unix seconds of a Go RFC 3339 time as Consul writes it (up to nanoseconds, ``Z`` or an
    offset); 0.0 for none."""
    if not text:
        return 0.0
    match = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)", text)
    if not match:
        return 0.0
    base, fraction, zone = match.groups()
    moment = datetime.fromisoformat(base + ("+00:00" if zone == "Z" else zone))
    return moment.timestamp() + float(fraction or 0)


async def _listening(address: str | None, port: int | None, timeout: float = 1.0) -> bool:
    if not address or not port:
        return False
    try:
        async with asyncio.timeout(timeout):  # (not wait_for: see consul.py)
            _, writer = await asyncio.open_connection(address, port)
    except (OSError, TimeoutError):
        return False
    writer.close()
    try:
        await writer.wait_closed()
    except OSError:
        pass
    return True
