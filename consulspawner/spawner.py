"""ConsulSpawner: DockerSpawner plus a Consul Connect identity that lives exactly as long as
the server.

The spawner only sequences: Consul work is done by :mod:`consulspawner.mesh` (what to do) from
a :mod:`consulspawner.plan` (what to create), and containers by DockerSpawner. See the README
for the lifecycle table.
"""

from __future__ import annotations

import asyncio
import inspect
import io
import os
import random
import tarfile
import time
from typing import Any

from docker.errors import APIError, NotFound
from dockerspawner import DockerSpawner
from traitlets import (
    Callable,
    CaselessStrEnum,
    Dict,
    Float,
    Int,
    List,
    TraitError,
    Unicode,
    Union,
    default,
    validate,
)

from . import naming
from .consul import ConsulClient, ConsulError, parse_address
from .intentions import L4, L7, IntentionWriter
from .mesh import MeshState, ServerMesh, SidecarNotReady, sweep_orphans
from .plan import TRINO_DESTINATION, MeshPlan, MeshSettings, Upstream, build_plan

SIDECAR_TOKEN_DIR = "consul"
SIDECAR_TOKEN_FILE = "/consul/token"
LABEL_PREFIX = "org.jupyter.consulspawner"

# One Consul client and one intention writer per hub process and Consul identity, so every
# spawner's intention changes are coalesced together (keyed by loop: aiohttp sessions are
# bound to the loop that made them).
_shared_clients: dict[tuple, tuple[ConsulClient, IntentionWriter]] = {}
# Background revocations still retrying; kept referenced so they are not garbage collected.
_pending_teardowns: set[asyncio.Task] = set()
# One orphan sweep per hub process and hub instance (keyed with the loop, as the clients).
_orphan_sweeps: dict[tuple, asyncio.Task] = {}


class ConsulSpawner(DockerSpawner):
    """A DockerSpawner whose servers join a Consul Connect service mesh.

    On start: mint a least-privilege ACL token, register the server as a Consul service with a
    Connect sidecar, start the notebook, start the sidecar in the notebook's network namespace
    (its upstreams bind on the notebook's localhost), wait for the sidecar's checks, and grant
    the intentions last. On stop, cull or crash: revoke the intentions first, then remove the
    sidecar and the notebook, deregister, and delete the token.
    """

    # -- Consul connection --------------------------------------------------------------------

    consul_address = Unicode(
        help="""Consul HTTP API address used by the hub.

        ``http(s)://host:port`` or ``host:port``; defaults to $CONSUL_HTTP_ADDR, else
        http://127.0.0.1:8500.

            c.ConsulSpawner.consul_address = "https://consul.internal:8501"
        """,
    ).tag(config=True)

    @default("consul_address")
    def _consul_address_default(self):
        return os.environ.get("CONSUL_HTTP_ADDR", "http://127.0.0.1:8500")

    @validate("consul_address", "sidecar_consul_address")
    def _valid_address(self, proposal):
        if proposal.value:
            try:
                parse_address(proposal.value)
            except ValueError as e:
                raise TraitError(str(e)) from e
        return proposal.value

    consul_token = Unicode(
        help="""The hub's own Consul ACL token (secret).

        Needs acl:write (to mint per-server tokens), service:write on the managed services and
        intentions:write on the intention destinations. Defaults to $CONSUL_HTTP_TOKEN. It is
        only ever sent in the X-Consul-Token header and never logged.

            c.ConsulSpawner.consul_token = open("/run/secrets/hub-consul-token").read().strip()
        """,
    ).tag(config=True)

    @default("consul_token")
    def _consul_token_default(self):
        return os.environ.get("CONSUL_HTTP_TOKEN", "")

    consul_ca_file = Unicode(
        "", help="""CA bundle to verify Consul's HTTPS certificate.

        c.ConsulSpawner.consul_ca_file = "/etc/consul/ca.pem"
        """,
    ).tag(config=True)
    consul_client_cert = Unicode(
        "", help="""Client certificate (PEM) for Consul's HTTPS API, when it verifies clients.

        c.ConsulSpawner.consul_client_cert = "/etc/consul/hub.pem"
        """,
    ).tag(config=True)
    consul_client_key = Unicode(
        "", help="""Private key (PEM) of ``consul_client_cert``.

        c.ConsulSpawner.consul_client_key = "/etc/consul/hub-key.pem"
        """,
    ).tag(config=True)
    consul_datacenter = Unicode(
        "", help="""Consul datacenter for catalog, health, config and ACL calls (default: the agent's).

        c.ConsulSpawner.consul_datacenter = "dc1"
        """,
    ).tag(config=True)
    consul_request_timeout = Float(
        10.0, help="""Seconds one Consul call may take before it counts as failed.

        c.ConsulSpawner.consul_request_timeout = 5
        """,
    ).tag(config=True)
    consul_retry_budget = Float(
        15.0, help="""Seconds a Consul step may spend retrying transport errors and 5xx answers.

        A spawn fails, naming the Consul call, once a step exhausts it.

            c.ConsulSpawner.consul_retry_budget = 30
        """,
    ).tag(config=True)

    # -- names and ownership ------------------------------------------------------------------

    hub_instance = Unicode(
        "jupyterhub",
        help="""Name of this hub, written into everything it creates in Consul.

        Cleanup only touches objects marked with this name; give each hub sharing a Consul
        cluster its own.

            c.ConsulSpawner.hub_instance = "analytics-hub"
        """,
    ).tag(config=True)

    service_name_template = Unicode(
        naming.DEFAULT_TEMPLATE,
        help="""Consul service name template; ``{slug}`` is the user's (and server's) safe name.

        The result is a DNS label unique per (user, server).

            c.ConsulSpawner.service_name_template = "hub2-{slug}"
        """,
    ).tag(config=True)

    @validate("service_name_template")
    def _valid_template(self, proposal):
        try:
            naming.check_template(proposal.value)
        except naming.NameTemplateError as e:
            raise TraitError(str(e)) from e
        return proposal.value

    # -- mesh ---------------------------------------------------------------------------------

    upstreams = List(
        Dict(),
        default_value=[{"destination_name": TRINO_DESTINATION, "local_bind_port": 28080}],
        help="""Connect upstreams the sidecar binds on the notebook's 127.0.0.1.

        Each item: ``destination_name``, ``local_bind_port`` and optionally
        ``local_bind_address``.

            c.ConsulSpawner.upstreams = [{"destination_name": "trino-coordinator", "local_bind_port": 28080}]
        """,
    ).tag(config=True)

    @validate("upstreams")
    def _valid_upstreams(self, proposal):
        try:
            self._upstreams_from(proposal.value)
        except (TypeError, ValueError) as e:
            raise TraitError(f"c.ConsulSpawner.upstreams: {e}") from e
        return proposal.value

    @staticmethod
    def _upstreams_from(items: list[dict]) -> tuple[Upstream, ...]:
        upstreams = []
        for item in items:
            unknown = set(item) - {"destination_name", "local_bind_port", "local_bind_address"}
            if unknown:
                raise ValueError(f"unknown upstream keys {sorted(unknown)}")
            upstreams.append(Upstream(
                destination=item["destination_name"],
                local_bind_port=int(item["local_bind_port"]),
                local_bind_address=item.get("local_bind_address", "127.0.0.1"),
            ))
        return tuple(upstreams)

    intention_destinations = List(
        Unicode(),
        help="""Services this server gets an intention to; default: every upstream's destination.

            c.ConsulSpawner.intention_destinations = ["trino-coordinator"]
        """,
    ).tag(config=True)

    @default("intention_destinations")
    def _intention_destinations_default(self):
        return [u["destination_name"] for u in self.upstreams]

    intention_mode = CaselessStrEnum(
        [L4, L7],
        default_value=L4,
        help="""How intentions bind the server: L4 allows the connection; L7 allows only HTTP
        requests whose X-Trino-User header is this user's Trino user (the destination's protocol
        must be http in a service-defaults entry).

            c.ConsulSpawner.intention_mode = "L7"
        """,
    ).tag(config=True)

    trino_user = Union(
        [Unicode(), Callable()],
        default_value="{username}",
        help="""The Trino user of a hub user: a template with ``{username}`` or a callable
        ``f(spawner) -> str`` (may be async), evaluated at spawn time.

            c.ConsulSpawner.trino_user = lambda spawner: spawner.user.name.split("@")[0]
        """,
    ).tag(config=True)

    trino_destination = Unicode(
        TRINO_DESTINATION,
        help="""The upstream whose bind address and port become TRINO_HOST/TRINO_PORT in the notebook.

            c.ConsulSpawner.trino_destination = "trino-coordinator"
        """,
    ).tag(config=True)

    # -- sidecar ------------------------------------------------------------------------------

    sidecar_image = Unicode(
        "consulspawner/connect-sidecar:latest",
        help="""Image of the Connect sidecar container (Consul + Envoy).

            c.ConsulSpawner.sidecar_image = "registry.internal/consul-envoy:1.17"
        """,
    ).tag(config=True)

    sidecar_command = List(
        Unicode(),
        default_value=["consul", "connect", "envoy", "-sidecar-for", "{service_id}", "-token-file", "{token_file}"],
        help="""Sidecar command. Placeholders: {service_id}, {sidecar_id}, {service_name}, {token_file}.

        The token reaches the sidecar only as the file {token_file}, copied into the sidecar
        container before it starts; the notebook container never sees it.

            c.ConsulSpawner.sidecar_command = [
                "devsidecar", "-sidecar-for", "{service_id}", "-token-file", "{token_file}"]
        """,
    ).tag(config=True)

    sidecar_env = Dict(
        help="""Extra environment of the sidecar container (never of the notebook).

        CONSUL_HTTP_ADDR is set from sidecar_consul_address.

            c.ConsulSpawner.sidecar_env = {"CONSUL_CACERT": "/consul/ca.pem"}
        """,
    ).tag(config=True)

    sidecar_consul_address = Unicode(
        help="""Consul HTTP address as seen from inside the sidecar container.

        Defaults to consul_address; set it when the hub and containers reach Consul differently.

            c.ConsulSpawner.sidecar_consul_address = "http://172.17.0.1:8500"
        """,
    ).tag(config=True)

    @default("sidecar_consul_address")
    def _sidecar_consul_address_default(self):
        return self.consul_address

    sidecar_ready_timeout = Float(
        60.0,
        help="""Seconds to wait for the sidecar's Consul checks to pass before the spawn fails.

            c.ConsulSpawner.sidecar_ready_timeout = 120
        """,
    ).tag(config=True)

    # -- lifetimes ----------------------------------------------------------------------------

    check_ttl = Int(
        60,
        help="""TTL (s) of the server's Consul check; the hub refreshes it on every poll.

        Keep it above JupyterHub's poll_interval (30 s by default).

            c.ConsulSpawner.check_ttl = 90
        """,
    ).tag(config=True)

    deregister_critical_after = Int(
        180,
        help="""Seconds a critical check may last before the Consul agent deregisters the service
        (Consul's minimum: 60). Bounds how long a dead hub's services outlive it.

            c.ConsulSpawner.deregister_critical_after = 300
        """,
    ).tag(config=True)

    token_ttl = Int(
        3600,
        help="""Lifetime (s) of each server's Consul token (Consul allows 60 s to 24 h).

            c.ConsulSpawner.token_ttl = 8 * 3600
        """,
    ).tag(config=True)

    token_rotation_margin = Int(
        0,
        help="""Replace a server's token (and restart its sidecar) this many seconds before it
        expires. 0 (default): a quarter of token_ttl, at least 120 s.

            c.ConsulSpawner.token_rotation_margin = 600
        """,
    ).tag(config=True)

    @property
    def _rotation_margin(self) -> float:
        return self.token_rotation_margin or max(120, self.token_ttl // 4)

    intention_ttl = Int(
        600,
        help="""Lifetime (s) written into each intention; extended by polls while the server runs.

        Intentions have no expiry in Consul: the janitor removes ours once this has passed.

            c.ConsulSpawner.intention_ttl = 900
        """,
    ).tag(config=True)

    orphan_sweep_delay = Float(
        60.0,
        help="""Seconds after hub start before it revokes what it owns in Consul but no server
        of its own holds (left by a hub killed mid-spawn, say), and removes such sidecar
        containers. The delay lets the hub restore its running servers first. 0 disables it;
        the janitor still cleans these after its grace period.

            c.ConsulSpawner.orphan_sweep_delay = 120
        """,
    ).tag(config=True)

    # -- state --------------------------------------------------------------------------------

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.mesh_state = MeshState()
        self.sidecar_container_id = ""
        self._plan: MeshPlan | None = None
        self._progress_events: list[dict] = []
        self._progress_changed = asyncio.Event()
        # Set by load_state: the first poll of a restored server re-arms its mesh membership.
        self._needs_reconcile = False

    def load_state(self, state):
        super().load_state(state)
        self.mesh_state = MeshState.from_dict(state.get("consul"))
        self.sidecar_container_id = state.get("sidecar_container_id", "")
        self._needs_reconcile = not self.mesh_state.empty

    def get_state(self):
        state = super().get_state()
        if not self.mesh_state.empty:
            state["consul"] = self.mesh_state.to_dict()
        if self.sidecar_container_id:
            state["sidecar_container_id"] = self.sidecar_container_id
        return state

    def clear_state(self):
        super().clear_state()
        self.mesh_state = MeshState()
        self.sidecar_container_id = ""

    # -- building blocks ----------------------------------------------------------------------

    def _client_and_writer(self) -> tuple[ConsulClient, IntentionWriter]:
        loop = asyncio.get_running_loop()
        key = (
            self.consul_address, hash(self.consul_token), self.consul_ca_file, self.consul_client_cert,
            self.consul_client_key, self.consul_datacenter, self.hub_instance, self.consul_retry_budget,
            self.consul_request_timeout, id(loop),
        )
        if key not in _shared_clients:
            client = ConsulClient(
                self.consul_address, self.consul_token or None,
                ca_file=self.consul_ca_file or None, client_cert=self.consul_client_cert or None,
                client_key=self.consul_client_key or None, datacenter=self.consul_datacenter or None,
                request_timeout=self.consul_request_timeout,
            )
            writer = IntentionWriter(client, self.hub_instance, retry_budget=self.consul_retry_budget, logger=self.log)
            _shared_clients[key] = (client, writer)
        return _shared_clients[key]

    def mesh_settings(self) -> MeshSettings:
        return MeshSettings(
            hub_instance=self.hub_instance,
            name_template=self.service_name_template,
            upstreams=self._upstreams_from(self.upstreams),
            intention_destinations=tuple(self.intention_destinations),
            intention_mode=self.intention_mode.upper(),
            trino_destination=self.trino_destination,
            check_ttl=self.check_ttl,
            deregister_critical_after=self.deregister_critical_after,
            token_ttl=self.token_ttl,
            intention_ttl=self.intention_ttl,
        )

    async def _resolve_trino_user(self) -> str:
        value = self.trino_user
        if callable(value):
            value = value(self)
            if inspect.isawaitable(value):
                value = await value
            return value
        return value.format(username=self.user.name)

    async def _make_plan(self) -> MeshPlan:
        try:
            return build_plan(
                self.mesh_settings(), self.user.name, self.name or "",
                trino_user=await self._resolve_trino_user(), service_port=self.port,
                service_id=self.mesh_state.service_id or None,
            )
        except (ValueError, TypeError) as e:
            raise RuntimeError(f"ConsulSpawner configuration for user {self.user.name!r}: {e}") from e

    async def _running_plan(self) -> MeshPlan:
        """The plan of the running server (after a hub restart: rebuilt, its service ID pinned
        by state), with the real Trino user, for anything that grants."""
        if self._plan is None:
            self._plan = await self._make_plan()
        return self._plan

    def _teardown_plan(self) -> MeshPlan:
        """The plan for teardown: names come from state, and nothing user-specific is evaluated
        (a failing trino_user callable must never stop a revocation)."""
        if self._plan is not None:
            return self._plan
        return build_plan(
            self.mesh_settings(), self.user.name, self.name or "", trino_user="unused-for-teardown",
            service_port=self.port, service_id=self.mesh_state.service_id or None,
        )

    def _mesh(self, plan: MeshPlan) -> ServerMesh:
        client, writer = self._client_and_writer()
        return ServerMesh(client, writer, plan, self.mesh_state, retry_budget=self.consul_retry_budget,
                          logger=self.log)

    def _report(self, progress: int, message: str) -> None:
        self.log.info("%s: %s", self._log_name, message)
        self._progress_events.append({"progress": progress, "message": message})
        self._progress_changed.set()

    async def progress(self):
        """Each mesh step as a progress event (JupyterHub stops reading when the spawn ends)."""
        sent = 0
        while True:
            while sent < len(self._progress_events):
                yield self._progress_events[sent]
                sent += 1
            self._progress_changed.clear()
            try:
                await asyncio.wait_for(self._progress_changed.wait(), timeout=1)
            except asyncio.TimeoutError:
                pass

    def get_env(self):
        env = super().get_env()
        if self._plan is not None:
            env.update(self._plan.notebook_env())
        # Belt and braces: nothing from the hub's Consul identity reaches the notebook.
        for key in ("CONSUL_HTTP_TOKEN", "CONSUL_HTTP_TOKEN_FILE"):
            env.pop(key, None)
        return env

    # -- sidecar container ----------------------------------------------------------------------

    @property
    def sidecar_container_name(self) -> str:
        return f"{self.container_name}-sidecar"

    async def _start_sidecar(self, plan: MeshPlan, token_secret: str) -> None:
        await self._remove_sidecar(by_name=True)
        host_config = self.client.create_host_config(
            network_mode=f"container:{self.container_id}", auto_remove=False,
        )
        environment = {**self.sidecar_env, "CONSUL_HTTP_ADDR": self.sidecar_consul_address}
        container = await self.docker(
            "create_container",
            image=self.sidecar_image,
            command=plan.sidecar_args(self.sidecar_command, token_file=SIDECAR_TOKEN_FILE),
            name=self.sidecar_container_name,
            environment=environment,
            labels={
                f"{LABEL_PREFIX}.service-id": plan.service_id,
                f"{LABEL_PREFIX}.hub-instance": self.hub_instance,
                f"{LABEL_PREFIX}.role": "sidecar",
            },
            host_config=host_config,
        )
        self.sidecar_container_id = container["Id"]
        # The token goes in as a file copied into this container alone, so it is in no
        # container config (docker inspect), no environment and no mount of the notebook's.
        await self.docker("put_archive", self.sidecar_container_id, "/", _token_archive(token_secret))
        await self.docker("start", self.sidecar_container_id)
        self.log.info("Started sidecar %s for %s", self.sidecar_container_name, plan.service_id)

    async def _container_running(self, container: str) -> bool:
        try:
            info = await self.docker("inspect_container", container)
        except NotFound:
            return False
        return bool(info["State"]["Running"])

    async def _sidecar_and_notebook_running(self) -> bool:
        return (
            bool(self.sidecar_container_id)
            and await self._container_running(self.sidecar_container_id)
            and await self._container_running(self.container_id)
        )

    async def _remove_sidecar(self, by_name: bool = False) -> None:
        target = self.sidecar_container_name if by_name else self.sidecar_container_id
        if not target:
            return
        try:
            await self.docker("remove_container", target, force=True, v=True)
            self.log.info("Removed sidecar %s", target[:12])
        except APIError as e:
            if e.status_code not in (404, 409):
                raise
            self.log.debug("Sidecar %s already gone", target[:12])
        if not by_name:
            self.sidecar_container_id = ""

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self):
        self._schedule_orphan_sweep()
        self._progress_events = []
        self.mesh_state = MeshState()
        plan = self._plan = await self._make_plan()
        mesh = self._mesh(plan)
        try:
            self._report(10, f"Creating a Consul token for {plan.service_name}")
            token_secret = await mesh.mint_token()
            self._report(20, f"Registering {plan.service_name} in Consul")
            await mesh.register()
            self._report(35, "Starting the notebook container")
            ip, port = await super().start()
            await mesh.register(address=ip)
            await mesh.heartbeat("notebook container started")
            self._report(55, "Starting the Connect sidecar")
            await self._start_sidecar(plan, token_secret)
            self._report(70, "Waiting for the sidecar to pass its Consul checks")
            await mesh.wait_until_ready(self.sidecar_ready_timeout, self._sidecar_and_notebook_running)
            self._report(85, "Granting access to " + ", ".join(self.intention_destinations))
            await mesh.grant()
            self._report(95, "Connected to the service mesh")
            return ip, port
        except BaseException as e:
            self.log.warning("Start of %s failed (%s); undoing what was created", self._log_name, e)
            await self._teardown(mesh, stop_notebook=True)
            if isinstance(e, SidecarNotReady | ConsulError):
                raise RuntimeError(f"Could not connect your server to the service mesh: {e}") from e
            raise

    async def stop(self, now=False):
        mesh = self._mesh(self._teardown_plan())
        await self._teardown(mesh, stop_notebook=True, now=now)

    async def poll(self):
        status = await super().poll()
        if status is not None:
            return status
        if self.mesh_state.empty:
            return None
        self._schedule_orphan_sweep()
        try:
            mesh = self._mesh(await self._running_plan())
        except RuntimeError as e:
            self.log.warning("Cannot refresh %s in Consul: %s", self._log_name, e)
            return None
        if self._needs_reconcile:
            try:
                await self._reconcile(mesh)
            except (ConsulError, SidecarNotReady, APIError) as e:
                self.log.warning("Could not reconcile %s in Consul yet: %s", self._log_name, e)
        if self.sidecar_container_id and not await self._container_running(self.sidecar_container_id):
            return f"sidecar {self.sidecar_container_name} is not running"
        try:
            await mesh.keep_alive()
            if mesh.token_due(self._rotation_margin):
                await self._rotate_token(mesh)
        except (ConsulError, SidecarNotReady) as e:
            # Consul trouble is not the server's death: the check TTL and intention expiry
            # leave room for the next poll to succeed.
            self.log.warning("Could not refresh %s in Consul: %s", self._log_name, e)
        return None

    def _schedule_orphan_sweep(self) -> None:
        """Start, once per hub process, the sweep of objects this hub owns but no server holds."""
        users = getattr(self.user, "settings", {}).get("users") if self.orphan_sweep_delay > 0 else None
        if users is None:
            return  # not inside a hub (tests, tools), or disabled
        client, writer = self._client_and_writer()
        key = (self.hub_instance, id(asyncio.get_running_loop()))
        if key in _orphan_sweeps:
            return

        def live_services() -> set[str]:
            alive = set()
            for user in list(users.values()):
                for spawner in list(user.spawners.values()):
                    if not isinstance(spawner, ConsulSpawner):
                        continue
                    if spawner.mesh_state.service_id:
                        alive.add(spawner.mesh_state.service_id)
                    if spawner.pending or spawner.active:
                        alive.add(naming.service_name(user.name, spawner.name or "", spawner.service_name_template))
            return alive

        async def sweep():
            await asyncio.sleep(self.orphan_sweep_delay)
            try:
                await sweep_orphans(client, writer, self.hub_instance, live_services, self.log)
                await self._remove_orphan_sidecars(live_services())
            except Exception as e:
                self.log.warning("Orphan sweep of hub %s failed; the janitor remains: %s", self.hub_instance, e)

        _orphan_sweeps[key] = asyncio.get_running_loop().create_task(sweep())

    async def _remove_orphan_sidecars(self, alive: set[str]) -> None:
        containers = await self.docker(
            "containers", all=True,
            filters={"label": [f"{LABEL_PREFIX}.role=sidecar", f"{LABEL_PREFIX}.hub-instance={self.hub_instance}"]},
        )
        for container in containers:
            service_id = (container.get("Labels") or {}).get(f"{LABEL_PREFIX}.service-id")
            if service_id and service_id not in alive:
                await self.docker("remove_container", container["Id"], force=True, v=True)
                self.log.info("Removed orphaned sidecar container %s of %s", container["Id"][:12], service_id)

    async def _reconcile(self, mesh: ServerMesh) -> None:
        """After a hub restart: re-register if Consul lost the service, replace a token that is
        gone or a sidecar that died meanwhile (a sidecar whose token vanished exits, as Envoy
        would), and re-grant. Idempotent: registering or granting the same ID replaces it."""
        plan = mesh.plan
        if not await mesh.registered_in_consul():
            ip, _ = await self.get_ip_and_port()
            self.log.warning("Consul lost %s; registering it again", plan.service_id)
            await mesh.register(address=ip)
            await mesh.heartbeat("re-registered after hub restart")
        sidecar_alive = bool(self.sidecar_container_id) and await self._container_running(self.sidecar_container_id)
        if not sidecar_alive or not await mesh.token_exists():
            self.log.warning("Token or sidecar of %s is gone; minting a new token, restarting the sidecar",
                             plan.service_id)
            await self._rotate_token(mesh)
        await mesh.grant()
        await mesh.delete_stale_tokens()
        self._needs_reconcile = False
        self._save_state()
        self.log.info("Reconciled %s in Consul after hub start", plan.service_id)

    def _save_state(self) -> None:
        """Write state to the hub database now: JupyterHub itself saves it only at start and
        stop, and a rotated token must not be forgotten if the hub restarts before then."""
        if self.orm_spawner is not None and self.db is not None:
            self.orm_spawner.state = self.get_state()
            self.db.commit()

    async def _rotate_token(self, mesh: ServerMesh) -> None:
        """Mint a new token, restart the sidecar with it, wait until it is ready, then delete
        the old token (Consul tokens cannot be extended)."""
        old_accessor = mesh.state.token_accessor
        secret = await mesh.mint_token()
        try:
            await self._remove_sidecar()
            await self._start_sidecar(mesh.plan, secret)
            await mesh.wait_until_ready(self.sidecar_ready_timeout, self._sidecar_and_notebook_running)
        finally:
            # Delete the old one whatever happened: it is about to expire anyway, and if the
            # new sidecar failed the next poll reports the server dead.
            if old_accessor and old_accessor != mesh.state.token_accessor:
                await mesh.delete_token_by_accessor(old_accessor)
            self._save_state()
        self.log.info("Rotated the Consul token of %s", mesh.plan.service_id)

    async def run_post_stop_hook(self):
        # JupyterHub skips stop() when poll() already found the server dead (crash, container
        # killed), but always runs this hook: revoke and remove here too. After a normal stop
        # the state is already clear and this does nothing.
        if not self.mesh_state.empty or self.sidecar_container_id:
            await self._teardown(self._mesh(self._teardown_plan()), stop_notebook=False)
        result = super().run_post_stop_hook()
        if inspect.isawaitable(result):
            await result

    async def _teardown(self, mesh: ServerMesh, *, stop_notebook: bool, now: bool = False) -> None:
        """Intention first (access ends before anything else), then sidecar, notebook,
        service and token. Consul failures do not stop the rest; they are retried in the
        background."""
        failed = await mesh.undo(["revoke"])
        try:
            if self.sidecar_container_id:
                await self._remove_sidecar()
            else:
                await self._remove_sidecar(by_name=True)
        except Exception as e:
            self.log.warning("Could not remove sidecar of %s: %s", self._log_name, e)
        if stop_notebook and self.object_id:
            state_before = self.mesh_state
            await DockerSpawner.stop(self, now=now)
            # DockerSpawner.stop clears state; the mesh still holds what is left to undo.
            self.mesh_state = state_before
        failed_steps = ["revoke"] if failed else []
        for step in ("deregister", "delete_token"):
            if await mesh.undo([step]):
                failed_steps.append(step)
        self._plan = None
        if failed_steps:
            _retry_in_background(mesh, failed_steps, self.intention_ttl, self.log)
        self.mesh_state = MeshState()


def _token_archive(secret: str) -> bytes:
    data = secret.encode()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        directory = tarfile.TarInfo(SIDECAR_TOKEN_DIR)
        directory.type = tarfile.DIRTYPE
        directory.mode = 0o700
        tar.addfile(directory)
        info = tarfile.TarInfo(SIDECAR_TOKEN_FILE.lstrip("/"))
        info.size = len(data)
        info.mode = 0o400
        info.mtime = int(time.time())
        tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _retry_in_background(mesh: ServerMesh, steps: list[str], limit: float, log: Any) -> None:
    """Keep retrying teardown steps Consul refused at stop, with backoff, for ``limit`` seconds;
    after that the intention's expiry and the janitor take over. Never dropped silently."""

    async def retry():
        deadline = time.monotonic() + limit
        delay = 1.0
        remaining = list(steps)
        while remaining:
            await asyncio.sleep(random.uniform(delay / 2, delay))
            remaining = [step for step in remaining if await mesh.undo([step])]
            if remaining and time.monotonic() > deadline:
                log.error(
                    "Gave up retrying %s for %s; the janitor will remove them after expiry",
                    remaining, mesh.plan.service_id,
                )
                return
            delay = min(delay * 2, 30.0)
        log.info("Background teardown of %s completed", mesh.plan.service_id)

    task = asyncio.get_running_loop().create_task(retry())
    _pending_teardowns.add(task)
    task.add_done_callback(_pending_teardowns.discard)
