"""ConsulSpawner: DockerSpawner plus a Consul Connect identity that lives exactly as long as
the server.

This module is JupyterHub's Spawner API (start, stop, poll, the post-stop hook, state,
environment, progress) and the order of the steps; each step lives in its own room:
traits in :mod:`.config`, Consul work in :mod:`.mesh` from a :mod:`.plan`, the sidecar
container in :mod:`.sidecar` and :mod:`.sidecarhealth`, upkeep in :mod:`.keeper`, undoing in
:mod:`.teardown`, leftovers in :mod:`.orphans`. See CONTRIBUTING.md ("Where things are") and the README's
lifecycle table.
"""

from __future__ import annotations

import asyncio
import inspect

from dockerspawner import DockerSpawner
from tornado import web

from . import audit, failures, hubwide, metrics, naming
from .config.traits import ConsulSpawnerConfig
from .consul import ConsulClient
from .entries import L7
from .hubwide import _client_closers, _pending_teardowns, _shared_clients  # noqa: F401 (tests, benchmarks)
from .intentions import IntentionWriter
from .keeper import Keeper
from .mesh import ServerMesh
from .orphans import OrphanSweep, sweep_orphans  # noqa: F401 (sweep_orphans: tests)
from .plan import MeshPlan, build_plan
from .preflight import check_hub_token, check_l7_destinations, check_trino_user_free
from .sidecarhealth import SidecarHealth
from .state import MeshState, new_incarnation
from .teardown import Teardown
from .uninterrupted import awaited_to_its_answer


class ConsulSpawner(ConsulSpawnerConfig, Keeper, Teardown, OrphanSweep, SidecarHealth, DockerSpawner):
    """A DockerSpawner whose servers join a Consul Connect service mesh.

    On start: mint a least-privilege ACL token, register the server as a Consul service with a
    Connect sidecar, start the notebook, start the sidecar in the notebook's network namespace
    (its upstreams bind on the notebook's localhost), wait for the sidecar's checks, and grant
    the intentions last. On stop, cull or crash: revoke the intentions first, then remove the
    sidecar and the notebook, deregister, and delete the token.
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.mesh_state = MeshState()
        self.sidecar_container_id = ""
        self._plan: MeshPlan | None = None
        self._progress_events: list[dict] = []
        self._progress_changed = asyncio.Event()
        self._lifecycle_lock: asyncio.Lock | None = None
        self._keeper: asyncio.Task | None = None
        self.keeper_rounds = 0  # rounds the keeper completed, for logs and tests
        self._unfinished_teardown: asyncio.Future | None = None
        # During a start: what the server joins the mesh with once its notebook container
        # exists (the sidecar is created then) and runs (the rest): see start_object. And that
        # creation, which runs while the notebook starts; and the start's step, for its error.
        self._joining: tuple[MeshPlan, ServerMesh, str] | None = None
        self._early_sidecar: asyncio.Future | None = None
        self._start_step = ""
        self._last_probe_output = ""  # what the sidecar's readiness command said last
        # (when, Docker's RestartCount of the sidecar) seen within sidecar_restart_window
        self._restart_marks: list[tuple[float, int]] = []
        # The sidecar still has sidecar_start_cpu_shares (lowered once it is ready); whether a
        # failure to lower it was logged as a warning already.
        self._sidecar_boosted = False
        self._boost_failure_told = False
        # At hub start (JupyterHub builds every spawner then, on its loop): sweep what a hub
        # killed mid-spawn left, without waiting for someone's first spawn. Once per process.
        self._schedule_orphan_sweep()

    def load_state(self, state):
        super().load_state(state)
        self.mesh_state = MeshState.from_dict(state.get("consul"), self.hub_instance)
        self.sidecar_container_id = state.get("sidecar_container_id", "")
        if not self.mesh_state.empty:
            # A server restored by a restarted hub: its keeper reconciles it with Consul at once.
            self._start_keeper(reconcile=True)

    def get_state(self):
        state = super().get_state()
        if not self.mesh_state.empty or self.mesh_state.mesh_failure:
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
        """This hub's shared Consul client and intention writer (:mod:`.hubwide`)."""
        # The token file's path, not its content, identifies the client: the file is read once,
        # when the client is made, never on each call from the hub's event loop.
        key = (
            self.consul_address,
            self.consul_token_file or hash(self.consul_token),
            self.consul_ca_file,
            self.consul_client_cert,
            self.consul_client_key,
            self.consul_datacenter,
            self.hub_instance,
            self.consul_retry_budget,
            self.consul_request_timeout,
        )

        def make_client() -> ConsulClient:
            return ConsulClient(
                self.consul_address,
                self._hub_token or None,
                ca_file=self.consul_ca_file or None,
                client_cert=self.consul_client_cert or None,
                client_key=self.consul_client_key or None,
                datacenter=self.consul_datacenter or None,
                request_timeout=self.consul_request_timeout,
            )

        return hubwide.consul_and_writer(key, make_client, self.hub_instance, self.consul_retry_budget, self.log)

    async def _resolve_trino_user(self) -> str:
        value = self.trino_user
        try:
            if callable(value):
                value = value(self)
                if inspect.isawaitable(value):
                    value = await value
                return value
            return value.format(username=self.user.name)
        except Exception as e:
            raise RuntimeError(
                f"c.ConsulSpawner.trino_user failed for user {self.user.name!r}: {type(e).__name__}: {e}"
            ) from e

    async def _make_plan(self, incarnation: str) -> MeshPlan:
        trino_user = await self._resolve_trino_user()
        try:
            return build_plan(
                self.mesh_settings(),
                self.user.name,
                self.name or "",
                trino_user=trino_user,
                service_port=self.port,
                incarnation=incarnation,
            )
        except (ValueError, TypeError) as e:
            raise RuntimeError(f"ConsulSpawner configuration for user {self.user.name!r}: {e}") from e

    def _service_name(self) -> str:
        """This server's Consul service name: as recorded, as planned, or as the template makes
        it (state empty after a hub killed mid-spawn: what it left is found by this name)."""
        if self.mesh_state.service_name:
            return self.mesh_state.service_name
        if self._plan is not None:
            return self._plan.service_name
        return naming.service_name(self.user.name, self.name or "", self.service_name_template)

    def _running_plan(self) -> MeshPlan:
        """The plan of the running server, rebuilt after a hub restart from state: its service ID,
        incarnation and Trino user as recorded, so the keeper re-grants exactly what was granted
        and evaluates no user callable."""
        if self._plan is None:
            state = self.mesh_state
            self._plan = build_plan(
                self.mesh_settings(),
                self.user.name,
                self.name or "",
                trino_user=state.trino_user or None,
                service_port=self.port,
                service_id=state.service_id or None,
                service_name=state.service_name or None,
                incarnation=state.incarnation,
            )
        return self._plan

    def _mesh(self, plan: MeshPlan | None) -> ServerMesh:
        """Mesh steps for this server; ``plan=None`` for teardown, which needs only state."""
        client, writer = self._client_and_writer()
        return ServerMesh(client, writer, plan, self.mesh_state, retry_budget=self.consul_retry_budget, logger=self.log)

    def _lock(self) -> asyncio.Lock:
        """The per-server lock: start, stop, the keeper's work and background teardown of this
        server never overlap."""
        if self._lifecycle_lock is None:
            self._lifecycle_lock = asyncio.Lock()
        return self._lifecycle_lock

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
                async with asyncio.timeout(1):  # (not wait_for: see consul.py)
                    await self._progress_changed.wait()
            except TimeoutError:
                pass

    def get_env(self):
        env = super().get_env()
        if self._plan is not None:
            env.update(self._plan.notebook_env())
        # Belt and braces: nothing from the hub's Consul identity reaches the notebook.
        for key in ("CONSUL_HTTP_TOKEN", "CONSUL_HTTP_TOKEN_FILE"):
            env.pop(key, None)
        return env

    async def _mesh_address(self) -> str:
        """The notebook's address on its Docker network, as other mesh members reach it (not the
        hub's route to it, which with ``use_internal_ip = False`` is a host port)."""
        info = await self._inspect(self.container_id) or {}
        settings = info.get("NetworkSettings") or {}
        network = (settings.get("Networks") or {}).get(self.network_name) or {}
        address = network.get("IPAddress") or settings.get("IPAddress")
        if not address:
            raise RuntimeError(
                f"notebook container {self.container_name} has no address on network "
                f"{self.network_name!r} (c.DockerSpawner.network_name)"
            )
        return address

    # -- the notebook container ----------------------------------------------------------------

    def docker(self, method, *args, **kwargs):
        # DockerSpawner builds the notebook's host config from the site's settings; the mesh's
        # hardening is added to it here, never replacing what the site configured.
        if method == "create_container" and kwargs.get("name") == self.container_name:
            kwargs["host_config"] = self._harden(dict(kwargs.get("host_config") or {}))
            # Labelled as the sidecar is, so a notebook left behind can be found and proven ours.
            kwargs["labels"] = {**(kwargs.get("labels") or {}), **self.container_labels(self._plan, role="notebook")}
        if method == "stop":
            # Docker's stop waits up to its timeout (10 s) for a notebook that ignores SIGTERM:
            # on the mesh's own Docker threads, not on DockerSpawner's one thread that every
            # other user's spawn and stop queue on.
            return self.sidecar_docker(method, *args, **kwargs)
        return super().docker(method, *args, **kwargs)

    async def create_object(self):
        # Awaited to Docker's answer even when the spawn is cancelled meanwhile (start_timeout,
        # the user's cancel): the create runs on a thread that goes on regardless, and a
        # container it made after the cancelled spawn's teardown looked for it would stay.
        # Recorded here, the teardown removes it.
        create = asyncio.ensure_future(super().create_object())
        return await awaited_to_its_answer(create, self._record_created_notebook)

    async def start_object(self):
        # The sidecar needs the notebook container to exist, not to run: it is created, and
        # gets its token, while the notebook starts. Under many spawns at once, Docker's create
        # and copy were a fifth to a third of the mesh's time after the notebook ran.
        joining = self._joining
        if joining is not None and self._early_sidecar is None:
            plan, _, token_secret = joining
            self._early_sidecar = asyncio.ensure_future(self._create_sidecar(plan, token_secret))
        await super().start_object()
        # The server joins the mesh as soon as its notebook runs, not once DockerSpawner has
        # also asked for its address: that inspection waits on DockerSpawner's one Docker
        # thread behind every other spawn's create and start, and under ten spawns at once it
        # held the mesh back 1 to 3 s, then released nine spawns' mesh steps in the same 40 ms.
        # (DockerSpawner's post_start_cmd, which runs next, so finds the mesh up.)
        if joining is not None and joining is self._joining:
            self._joining = None
            await self._join_mesh(*joining)
            self._start_step = "notebook"  # (DockerSpawner's own steps that follow)

    async def _join_mesh(self, plan: MeshPlan, mesh: ServerMesh, token_secret: str) -> None:
        """Register the running notebook, start its sidecar, wait until it is ready, grant."""
        self._report(45, f"Registering {plan.service_name} in Consul")
        self._start_step = "register"
        with metrics.step("spawn", "register"):
            await mesh.register(await self._mesh_address())
        self._report(55, "Starting the Connect sidecar")
        self._start_step = "sidecar"
        with metrics.step("spawn", "sidecar"):
            await self._sidecar_created(plan, token_secret)
            await self._run_created_sidecar(plan)
        self._report(70, "Waiting for the Connect sidecar to be ready")
        self._start_step = "ready"
        with metrics.step("spawn", "ready"):
            await self._wait_for_sidecar(mesh)
        self._report(85, "Granting access to " + ", ".join(self.intention_destinations))
        self._start_step = "grant"
        with metrics.step("spawn", "grant"):
            await mesh.grant()
        self._report(95, "Connected to the service mesh")

    async def _sidecar_created(self, plan: MeshPlan, token_secret: str) -> None:
        """The sidecar made while the notebook started, or made now (a start that did not go
        through start_object)."""
        early, self._early_sidecar = self._early_sidecar, None
        if early is None:
            await self._create_sidecar(plan, token_secret)
        else:
            await awaited_to_its_answer(early)

    def _record_created_notebook(self, obj) -> None:
        # (Whatever create_container answers: DockerSpawner's own tests hand back their arguments.)
        if isinstance(obj, dict) and obj.get(self.object_id_key):
            self.object_id = obj[self.object_id_key]

    def _harden(self, host_config: dict) -> dict:
        dropped = list(host_config.get("CapDrop") or [])
        host_config["CapDrop"] = dropped + [c for c in self.notebook_cap_drop if c not in dropped]
        if self.notebook_no_new_privileges:
            options = list(host_config.get("SecurityOpt") or [])
            if not any(o.startswith("no-new-privileges") for o in options):
                options.append("no-new-privileges:true")
            host_config["SecurityOpt"] = options
        return host_config

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self):
        problem = self.lifetime_problem()
        if problem:
            raise RuntimeError(f"ConsulSpawner configuration: {problem}")
        self._schedule_orphan_sweep()  # (scheduled at __init__ unless no loop ran then: tools)
        await self._stop_keeper()
        async with self._lock():
            return await self._start_locked()

    async def _start_locked(self):
        self._progress_events = []
        self.mesh_state = MeshState()
        plan = self._plan = await self._make_plan(new_incarnation())
        mesh = self._mesh(plan)
        self._start_step = "token"
        try:
            # Checks before anything is created: the hub token's rights, the destinations'
            # protocol and the Trino user's holder (counted as the identity step).
            await self._check_hub_token()
            if plan.settings.intention_mode == L7:
                client, writer = self._client_and_writer()
                await check_trino_user_free(
                    client,
                    list(self.intention_destinations),
                    trino_user=plan.trino_user,
                    hub_user=self.user.name,
                    retry_budget=self.consul_retry_budget,
                    writer=writer,
                )
                await check_l7_destinations(
                    client,
                    self.intention_destinations,
                    hub_instance=self.hub_instance,
                    manage_service_defaults=self.manage_l7_service_defaults,
                    log=self.log,
                    retry_budget=self.consul_retry_budget,
                )
            self._report(10, f"Getting a Consul token for {plan.service_name} (JWT login)")
            with metrics.step("spawn", "token"):
                token_secret = await self._login(mesh)
            audit.emit_for("token-login", plan.owner, trino_user=plan.trino_user)
            self._report(25, "Starting the notebook container")
            self._start_step = "notebook"
            await self._wait_while_removed(self.container_name)
            await self._settle_early_sidecar()  # (one left by a start whose teardown broke off)
            self._joining = (plan, mesh, token_secret)
            try:
                ip, port = await super().start()
                if self._joining is not None:  # (a start that did not go through start_object)
                    joining, self._joining = self._joining, None
                    await self._join_mesh(*joining)
            finally:
                self._joining = None
        except BaseException as e:
            if isinstance(e, asyncio.CancelledError):
                # (Its text is empty: say what happened, not "failed ()".)
                self.log.warning("Start of %s was cancelled; undoing what was created", self._log_name)
            else:
                self.log.warning(
                    "Start of %s failed (%s); undoing what was created", self._log_name, str(e) or type(e).__name__
                )
            # Shielded: a cancelled spawn (start_timeout, the user's cancel) still undoes everything.
            # Scheduled first: a cancelled spawn still gets its late rounds.
            self._linger(self.mesh_state.copy())
            # A cancelled spawn is not waited for: JupyterHub gives it one second before it
            # stops the server, and refuses that stop while the spawn is still pending. The
            # teardown goes on; whatever touches this server next waits for it (_stop_keeper).
            await self._teardown_to_the_end(wait=not isinstance(e, asyncio.CancelledError))
            # JupyterHub's own answers (DockerSpawner's 400 for an image not allowed, say) reach
            # the user as they are; everything else is told as the mesh step that failed.
            if isinstance(e, Exception) and not isinstance(e, web.HTTPError):
                raise failures.failed(self._start_step, e, self._log_name, self.log) from e
            raise
        self._start_keeper()
        return ip, port

    async def _check_hub_token(self) -> None:
        """Once per hub process: refuse to spawn with a hub token that is too powerful or
        lacks a rule the configuration needs (preflight.check_hub_token)."""
        client = self._client_and_writer()[0]
        key = (client.address, self.hub_instance)
        if key in hubwide._hub_token_ok:
            return
        await client.retrying(
            lambda: check_hub_token(
                client, service_prefix=self.service_prefix, destinations=list(self.intention_destinations)
            ),
            budget=self.consul_retry_budget,
        )
        hubwide._hub_token_ok.add(key)
        if self.intention_mode.upper() != L7:
            self.log.warning(
                "c.ConsulSpawner.intention_mode = 'L4': servers reach %s as whatever Trino user their "
                "client sends (the intention allows the connection, not the user); use L7 to bind each "
                "server to its own Trino user",
                ", ".join(self.intention_destinations),
            )

    async def stop(self, now=False):
        await self._stop_keeper()
        async with self._lock():
            await self._teardown(stop_notebook=True, now=now)

    async def poll(self):
        """A read, as ``Popen.poll``: None while the notebook runs with its mesh membership
        intact. All repair work is the keeper's."""
        if self.mesh_state.mesh_failure and not self._lock().locked():
            # The spawner took this server down (reported once that teardown is over): failed
            # until the hub stops it, even if the notebook's own stop failed and it still runs
            # (the post-stop hook retries that).
            return f"removed from the service mesh: {self.mesh_state.mesh_failure}"
        status = await super().poll()
        if status is not None:
            # Once the spawner has taken a server down, say why, not just the notebook's exit.
            return (
                f"removed from the service mesh: {self.mesh_state.mesh_failure}"
                if self.mesh_state.mesh_failure
                else status
            )
        if not self.mesh_state.empty and not self.sidecar_container_id and not self._lock().locked():
            # (Not while a start, stop or keeper round holds the server: mid-start the token
            # exists before the sidecar does.)
            return "the server has mesh state but no sidecar"
        if not self.mesh_state.empty and (self._keeper is None or self._keeper.done()):
            # Restored without a running loop at load_state (tools): the keeper starts here.
            self._start_keeper(reconcile=True)
        return None

    async def run_post_stop_hook(self):
        # JupyterHub skips stop() when poll() already found the server dead (crash, container
        # killed), but always runs this hook: tear down here too, notebook included, so nothing
        # is left running out of the hub's sight. After a normal stop this finds nothing to do.
        await self._stop_keeper()
        async with self._lock():
            if not self.mesh_state.empty or self.sidecar_container_id or self.mesh_state.mesh_failure:
                # (A server the keeper took down: its notebook's stop may have failed; again.)
                await self._teardown(stop_notebook=True)
        result = super().run_post_stop_hook()
        if inspect.isawaitable(result):
            await result
