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
import random
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import docker
from docker.errors import APIError, NotFound
from docker.utils import kwargs_from_env
from dockerspawner import DockerSpawner
from jupyterhub.utils import exponential_backoff

from . import naming, ownership
from .config.traits import ConsulSpawnerConfig
from .consul import ConsulClient, ConsulError
from .intentions import L7, IntentionWriter
from .mesh import MeshState, ServerMesh, SidecarNotReady, new_incarnation, sweep_orphans
from .plan import MeshPlan, build_plan

SIDECAR_TOKEN_DIR = "consul"
SIDECAR_TOKEN_FILE = "/consul/token"
SIDECAR_CA_FILE = "/consul/ca.pem"
LABEL_PREFIX = "org.jupyter.consulspawner"
# How long a sidecar that is neither running nor being restarted by Docker may stay so before the
# keeper calls it dead (Docker's restart backoff starts at 100 ms).
SIDECAR_DOWN_GRACE = 3.0
# When the rollback of a failed start is repeated, in case a call that timed out lands late (s).
LINGER_DELAYS = (2, 5, 10, 20, 30)

# One Consul client and one intention writer per hub process and Consul identity, so every
# spawner's intention changes are coalesced together (keyed by loop: aiohttp sessions are
# bound to the loop that made them).
_shared_clients: dict[tuple, tuple[ConsulClient, IntentionWriter]] = {}
# One task per shared client that closes it when the hub shuts down (JupyterHub cancels every
# task of its loop then: shutdown_cancel_tasks).
_client_closers: set[asyncio.Task] = set()
# Background revocations still retrying; kept referenced so they are not garbage collected.
_pending_teardowns: set[asyncio.Task] = set()
# (Consul address, destination) whose protocol was found http-like, for L7 intentions.
_l7_ready: set[tuple[str, str]] = set()
# One orphan sweep per hub process and hub instance (keyed with the loop, as the clients).
_orphan_sweeps: dict[tuple, asyncio.Task] = {}


class ConsulSpawner(ConsulSpawnerConfig, DockerSpawner):
    """A DockerSpawner whose servers join a Consul Connect service mesh.

    On start: mint a least-privilege ACL token, register the server as a Consul service with a
    Connect sidecar, start the notebook, start the sidecar in the notebook's network namespace
    (its upstreams bind on the notebook's localhost), wait for the sidecar's checks, and grant
    the intentions last. On stop, cull or crash: revoke the intentions first, then remove the
    sidecar and the notebook, deregister, and delete the token.
    """

    _sidecar_client = None
    _sidecar_executor: ThreadPoolExecutor | None = None

    # -- state ----------------------------------------------------------------------------------

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.mesh_state = MeshState()
        self.sidecar_container_id = ""
        self._plan: MeshPlan | None = None
        self._progress_events: list[dict] = []
        self._progress_changed = asyncio.Event()
        self._lifecycle_lock: asyncio.Lock | None = None
        self._keeper: asyncio.Task | None = None
        # Set by the keeper when it had to take the server down (its sidecar stayed dead, a
        # rotation failed): poll reports it.
        self._mesh_failure = ""
        self.keeper_rounds = 0  # rounds the keeper completed, for logs and tests
        self._unfinished_teardown: asyncio.Future | None = None
        self._last_probe_output = ""  # what the sidecar's readiness command said last

    def load_state(self, state):
        super().load_state(state)
        self.mesh_state = MeshState.from_dict(state.get("consul"))
        self.sidecar_container_id = state.get("sidecar_container_id", "")
        if not self.mesh_state.empty:
            # A server restored by a restarted hub: its keeper reconciles it with Consul at once.
            self._start_keeper(reconcile=True)

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
            id(loop),
        )
        if key not in _shared_clients:
            client = ConsulClient(
                self.consul_address,
                self._hub_token or None,
                ca_file=self.consul_ca_file or None,
                client_cert=self.consul_client_cert or None,
                client_key=self.consul_client_key or None,
                datacenter=self.consul_datacenter or None,
                request_timeout=self.consul_request_timeout,
            )
            writer = IntentionWriter(client, self.hub_instance, retry_budget=self.consul_retry_budget, logger=self.log)
            _shared_clients[key] = (client, writer)
            _client_closers.add(loop.create_task(_close_on_shutdown(client)))
        return _shared_clients[key]

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

    async def _check_l7_destinations(self) -> None:
        """L7 intentions need each destination's protocol to be http (Consul refuses the write
        otherwise: agent/structs/config_entry_intentions.go). Check it before creating anything,
        once per destination and hub process, and say which entry to write."""
        client, _ = self._client_and_writer()
        for destination in self.intention_destinations:
            if (self.consul_address, destination) in _l7_ready:
                continue
            try:
                entry = await client.get_config("service-defaults", destination)
                protocol = (entry or {}).get("Protocol") or await self._global_protocol(client)
                if not protocol and entry is None and self.manage_l7_service_defaults:
                    await self._write_service_defaults(client, destination)
                    protocol = "http"
            except ConsulError as e:
                raise RuntimeError(f"Could not check the protocol of {destination!r} for L7 intentions: {e}") from e
            if protocol not in ("http", "http2", "grpc"):
                raise RuntimeError(
                    f"c.ConsulSpawner.intention_mode = 'L7' needs {destination!r} to speak http, but its protocol "
                    f"is {protocol or 'tcp'!r}: write the config entry "
                    f'{{"Kind": "service-defaults", "Name": "{destination}", "Protocol": "http"}} '
                    "(or set c.ConsulSpawner.manage_l7_service_defaults = True)"
                )
            _l7_ready.add((self.consul_address, destination))

    @staticmethod
    async def _global_protocol(client: ConsulClient) -> str:
        try:
            entry = await client.get_config("proxy-defaults", "global")
        except ConsulError:
            return ""  # not readable with this token: only service-defaults counts
        return ((entry or {}).get("Config") or {}).get("protocol", "")

    async def _write_service_defaults(self, client: ConsulClient, destination: str) -> None:
        entry = {
            "Kind": "service-defaults",
            "Name": destination,
            "Protocol": "http",
            "Meta": {ownership.META_MANAGED_BY: ownership.MANAGED_BY, ownership.META_HUB: self.hub_instance},
        }
        # cas=0: create only, so an entry an operator wrote meanwhile is never replaced.
        if await client.set_config(entry, cas=0):
            self.log.info("Wrote service-defaults %s with protocol http for L7 intentions", destination)

    # -- containers -----------------------------------------------------------------------------

    @property
    def sidecar_container_name(self) -> str:
        # A dot: DockerSpawner's escaping never produces one, so no notebook has this name.
        service_id = self.mesh_state.service_id or (self._plan.service_id if self._plan else "")
        return f"{service_id}.consul-sidecar"

    def _sidecar_labels(self, plan: MeshPlan) -> dict[str, str]:
        return {
            f"{LABEL_PREFIX}.role": "sidecar",
            f"{LABEL_PREFIX}.hub-instance": self.hub_instance,
            f"{LABEL_PREFIX}.service-id": plan.service_id,
            f"{LABEL_PREFIX}.incarnation": plan.owner.incarnation,
        }

    def _notebook_labels(self) -> dict[str, str]:
        plan = self._plan
        labels = {f"{LABEL_PREFIX}.role": "notebook", f"{LABEL_PREFIX}.hub-instance": self.hub_instance}
        if plan is not None:
            labels[f"{LABEL_PREFIX}.service-id"] = plan.service_id
            labels[f"{LABEL_PREFIX}.incarnation"] = plan.owner.incarnation
        return labels

    def _is_our_sidecar(self, info: dict, service_id: str) -> bool:
        labels = (info.get("Config") or {}).get("Labels") or info.get("Labels") or {}
        return (
            labels.get(f"{LABEL_PREFIX}.role") == "sidecar"
            and labels.get(f"{LABEL_PREFIX}.hub-instance") == self.hub_instance
            and labels.get(f"{LABEL_PREFIX}.service-id") == service_id
        )

    async def _inspect(self, container: str) -> dict | None:
        if not container:
            return None
        try:
            return await self.sidecar_docker("inspect_container", container)
        except NotFound:
            return None

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

    async def _start_sidecar(self, plan: MeshPlan, token_secret: str) -> None:
        await self._remove_sidecar()
        if self.sidecar_container_name == self.container_name:
            raise RuntimeError(f"sidecar and notebook would share the container name {self.container_name!r}")
        host_config = self.client.create_host_config(
            network_mode=f"container:{self.container_id}",
            auto_remove=False,
            # A crash is healed by Docker (the token file survives in the container); a sidecar
            # stopped or killed on purpose, or failing for good, stays down and the keeper
            # takes the server down with it.
            restart_policy={"Name": "on-failure", "MaximumRetryCount": self.sidecar_restart_attempts},
        )
        environment = {**self.sidecar_env, "CONSUL_HTTP_ADDR": self.sidecar_consul_address}
        ca_pem = None
        if self.sidecar_consul_address.startswith("https") and self.consul_ca_file:
            # Delivered like the token (a file in the sidecar alone), so CONSUL_CACERT works.
            ca_pem = await asyncio.to_thread(_read_bytes, self.consul_ca_file)
            environment.setdefault("CONSUL_CACERT", SIDECAR_CA_FILE)
        container = await self.sidecar_docker(
            "create_container",
            image=self.sidecar_image,
            command=plan.sidecar_args(self.sidecar_command, token_file=SIDECAR_TOKEN_FILE),
            name=self.sidecar_container_name,
            environment=environment,
            labels=self._sidecar_labels(plan),
            host_config=host_config,
        )
        self.sidecar_container_id = container["Id"]
        # The token goes in as a file copied into this container alone, so it is in no
        # container config (docker inspect), no environment and no mount of the notebook's.
        archive = _sidecar_archive(token_secret, ca_pem, self._sidecar_file_owner)
        await self.sidecar_docker("put_archive", self.sidecar_container_id, "/", archive)
        await self.sidecar_docker("start", self.sidecar_container_id)
        self.log.info("Started sidecar %s for %s", self.sidecar_container_name, plan.service_id)

    def sidecar_docker(self, method, *args, **kwargs):
        """A Docker call of the mesh's own (sidecar, readiness probes, inspections), on a thread
        and client of its own: DockerSpawner runs every Docker call of every spawner on one
        shared thread, and a user's sidecar should not queue behind other users' notebooks."""
        cls = ConsulSpawner
        if cls._sidecar_client is None:
            client_kwargs = {"version": "auto"}
            if self.tls_config:
                client_kwargs["tls"] = docker.tls.TLSConfig(**self.tls_config)
            client_kwargs.update(kwargs_from_env())
            client_kwargs.update(self.client_kwargs)
            cls._sidecar_client = docker.APIClient(**client_kwargs)
            cls._sidecar_executor = ThreadPoolExecutor(1, thread_name_prefix="consulspawner-sidecar")
        call = getattr(cls._sidecar_client, method)
        return asyncio.wrap_future(cls._sidecar_executor.submit(call, *args, **kwargs))

    def docker(self, method, *args, **kwargs):
        # DockerSpawner builds the notebook's host config from the site's settings; the mesh's
        # hardening is added to it here, never replacing what the site configured.
        if method == "create_container" and kwargs.get("name") == self.container_name:
            kwargs["host_config"] = self._harden(dict(kwargs.get("host_config") or {}))
            # Labelled as the sidecar is, so a notebook left behind can be found and proven ours.
            kwargs["labels"] = {**(kwargs.get("labels") or {}), **self._notebook_labels()}
        return super().docker(method, *args, **kwargs)

    def _harden(self, host_config: dict) -> dict:
        dropped = list(host_config.get("CapDrop") or [])
        host_config["CapDrop"] = dropped + [c for c in self.notebook_cap_drop if c not in dropped]
        if self.notebook_no_new_privileges:
            options = list(host_config.get("SecurityOpt") or [])
            if not any(o.startswith("no-new-privileges") for o in options):
                options.append("no-new-privileges:true")
            host_config["SecurityOpt"] = options
        return host_config

    async def _wait_for_sidecar(self, mesh: ServerMesh) -> None:
        """Until the sidecar says it is ready (``sidecar_ready_command``), or, without one, until
        its Consul checks pass; failing fast if the sidecar or the notebook dies."""
        if not self.sidecar_ready_command:
            await mesh.wait_until_ready(self.sidecar_ready_timeout, self._sidecar_and_notebook_running)
            return
        deadline = time.monotonic() + self.sidecar_ready_timeout
        self._last_probe_output = ""
        while True:
            if await self._probe_sidecar_ready():
                self.log.info("Sidecar %s is ready", self.sidecar_container_name)
                return
            # Not ready yet: only now ask whether it (or the notebook) died meanwhile.
            if not await self._sidecar_and_notebook_running():
                raise SidecarNotReady(f"sidecar {self.sidecar_container_name} stopped before it became ready")
            if time.monotonic() > deadline:
                raise SidecarNotReady(
                    f"sidecar {self.sidecar_container_name} not ready after {self.sidecar_ready_timeout:g}s: "
                    f"{self._last_probe_output}"
                )
            await asyncio.sleep(0.1)

    async def _probe_sidecar_ready(self) -> bool:
        """Run ``sidecar_ready_command`` in the sidecar once; False unless it exits 0. Docker
        refuses an exec into a container that is not running (409 or 500, at create or start):
        that is "not ready" too, and the caller's liveness check says whether it died."""
        try:
            created = await self.sidecar_docker(
                "exec_create", self.sidecar_container_id, self.sidecar_ready_command, stdout=True, stderr=True
            )
            output = await self.sidecar_docker("exec_start", created["Id"])
            self._last_probe_output = output.decode(errors="replace").strip()[-200:]
            return (await self.sidecar_docker("exec_inspect", created["Id"]))["ExitCode"] == 0
        except APIError as e:
            self._last_probe_output = f"docker exec refused: {e.explanation or e}"
            return False

    async def _container_running(self, container: str) -> bool:
        info = await self._inspect(container)
        return bool(info and info["State"]["Running"])

    async def _sidecar_and_notebook_running(self) -> bool:
        return (
            bool(self.sidecar_container_id)
            and await self._container_running(self.sidecar_container_id)
            and await self._container_running(self.container_id)
        )

    async def _remove_sidecar(self) -> None:
        """Remove this server's sidecar: the recorded one, and any container under its name
        whose labels prove it is this server's (one created by an interrupted start). A
        container under that name that is not ours is never touched."""
        # Taken now: a concurrent DockerSpawner.stop clears the spawner's state.
        recorded, name, service_id = self.sidecar_container_id, self.sidecar_container_name, self.mesh_state.service_id
        for target in dict.fromkeys(t for t in (recorded, name) if t):
            info = await self._inspect(target)
            if info is None:
                continue
            if not self._is_our_sidecar(info, service_id):
                if target == name:
                    raise RuntimeError(
                        f"a container named {target!r} exists and is not this server's sidecar; left alone"
                    )
                continue
            try:
                await self.sidecar_docker("remove_container", info["Id"], force=True, v=True)
                self.log.info("Removed sidecar %s (%s)", target, info["Id"][:12])
            except APIError as e:
                if e.status_code not in (404, 409):
                    raise
                self.log.debug("Sidecar %s already gone", target)
        self.sidecar_container_id = ""

    async def _notebook_exists(self) -> bool:
        return await self._inspect(self.container_name) is not None

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self):
        self._schedule_orphan_sweep()
        await self._stop_keeper()
        async with self._lock():
            return await self._start_locked()

    async def _start_locked(self):
        self._progress_events = []
        self._mesh_failure = ""
        self.mesh_state = MeshState()
        plan = self._plan = await self._make_plan(new_incarnation())
        mesh = self._mesh(plan)
        if plan.settings.intention_mode == L7:
            await self._check_l7_destinations()
        try:
            self._report(10, f"Creating a Consul token for {plan.service_name}")
            token_secret = await mesh.mint_token()
            self._report(25, "Starting the notebook container")
            ip, port = await super().start()
            self._report(45, f"Registering {plan.service_name} in Consul")
            await mesh.register(await self._mesh_address())
            self._report(55, "Starting the Connect sidecar")
            await self._start_sidecar(plan, token_secret)
            self._report(70, "Waiting for the Connect sidecar to be ready")
            await self._wait_for_sidecar(mesh)
            self._report(85, "Granting access to " + ", ".join(self.intention_destinations))
            await mesh.grant()
            self._report(95, "Connected to the service mesh")
        except BaseException as e:
            self.log.warning("Start of %s failed (%s); undoing what was created", self._log_name, e)
            # Shielded: a cancelled spawn (start_timeout, the user's cancel) still undoes everything.
            # Scheduled first: a cancelled spawn still gets its late rounds.
            self._linger(MeshState.from_dict(self.mesh_state.to_dict()))
            await self._teardown_to_the_end()
            if isinstance(e, SidecarNotReady | ConsulError):
                raise RuntimeError(f"Could not connect your server to the service mesh: {e}") from e
            raise
        self._start_keeper()
        return ip, port

    async def stop(self, now=False):
        await self._stop_keeper()
        async with self._lock():
            await self._teardown(stop_notebook=True, now=now)

    async def poll(self):
        """A read, as ``Popen.poll``: None while the notebook runs with its mesh membership
        intact. All repair work is the keeper's."""
        status = await super().poll()
        if status is not None:
            # Once the keeper has taken a server down, say why, not just the notebook's exit.
            return f"removed from the service mesh: {self._mesh_failure}" if self._mesh_failure else status
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
            if not self.mesh_state.empty or self.sidecar_container_id:
                await self._teardown(stop_notebook=True)
        result = super().run_post_stop_hook()
        if inspect.isawaitable(result):
            await result

    async def _teardown(self, *, stop_notebook: bool, now: bool = False) -> None:
        """Intention first (access ends before anything else), then sidecar, notebook,
        service and tokens, from state alone.

        Bounded: each Consul phase gets ``consul_request_timeout``; what Consul does not finish
        in time goes on in the background, guarded by this incarnation, while the containers
        are removed regardless."""
        state = self.mesh_state
        mesh = self._mesh(None)
        failed: list[str] = []
        if state.granted and not await self._bounded(mesh.undo(["revoke"])):
            failed.append("revoke")
        # Access has ended: the rest goes at once, side by side (the sidecar's Docker calls run
        # on their own thread). Under the server's lock no newer incarnation can have
        # registered, so deregistering needs no read first; what goes to the background (run
        # later, maybe after a new start) verifies the incarnation.
        steps = [
            step
            for step in ("deregister_held", "delete_tokens")
            if (step == "deregister_held" and state.registered) or (step == "delete_tokens" and not state.empty)
        ]
        results = await asyncio.gather(
            self._remove_containers(stop_notebook, now),
            *(self._bounded(mesh.undo([step])) for step in steps),
        )
        self.mesh_state = state  # DockerSpawner.stop clears all state; the mesh still holds what is left to undo
        failed += [step.replace("_held", "") for step, ok in zip(steps, results[1:], strict=True) if not ok]
        self._plan = None
        if failed:
            self._defer_teardown(state, failed)
        self.mesh_state = MeshState()
        self.sidecar_container_id = ""

    async def _remove_containers(self, stop_notebook: bool, now: bool) -> None:
        async def sidecar():
            try:
                await self._remove_sidecar()
            except Exception as e:
                self.log.warning("Could not remove the sidecar of %s: %s", self._log_name, e)

        async def notebook():
            if stop_notebook and (self.object_id or await self._notebook_exists()):
                try:
                    await DockerSpawner.stop(self, now=now)
                except Exception as e:
                    self.log.warning("Could not stop the notebook of %s: %s", self._log_name, e)

        await asyncio.gather(sidecar(), notebook())

    async def _bounded(self, undo: Any) -> bool:
        """Await a teardown step for at most consul_request_timeout; True when it succeeded."""
        try:
            errors = await asyncio.wait_for(undo, self.consul_request_timeout)
        except asyncio.TimeoutError:
            self.log.warning(
                "Consul did not finish a teardown step of %s within %gs; continuing in the background",
                self._log_name,
                self.consul_request_timeout,
            )
            return False
        return not errors

    def _defer_teardown(self, state: MeshState, steps: list[str]) -> None:
        """Keep retrying teardown steps Consul refused or did not answer, with JupyterHub's
        exponential backoff, for ``intention_ttl``; after that the expiry and the janitor take
        over. Each attempt holds this server's lock and is guarded by the old incarnation, so it
        never touches a newer server of the same user."""
        state = MeshState.from_dict(state.to_dict())
        client, writer = self._client_and_writer()
        mesh = ServerMesh(client, writer, None, state, retry_budget=0, logger=self.log)
        remaining = list(steps)

        async def attempt() -> bool:
            async with self._lock():
                for step in list(remaining):
                    if not await self._bounded(mesh.undo([step])):
                        return False
                    remaining.remove(step)
            return True

        async def retry():
            try:
                await exponential_backoff(
                    attempt,
                    f"Background teardown of {state.service_id} gave up",
                    start_wait=1,
                    max_wait=30,
                    timeout=self.intention_ttl,
                )
                self.log.info("Background teardown of %s (%s) completed", state.service_id, ", ".join(steps))
            except asyncio.TimeoutError:
                self.log.error(
                    "Gave up retrying %s for %s; the janitor removes them after expiry", remaining, state.service_id
                )

        _keep_referenced(asyncio.get_running_loop().create_task(retry()))

    def _linger(self, attempted: MeshState) -> None:
        """After a failed start, undo its incarnation again a few times over the next minute.

        A Consul call that timed out may still be applied later (Consul finishes a request
        whose client left): a registration or token landing after the rollback would outlive
        the failed spawn. Every round is guarded by the incarnation and holds the server's lock,
        so a new start of the same server is never touched."""
        if attempted.empty:
            return
        client, writer = self._client_and_writer()

        async def rounds():
            for delay in LINGER_DELAYS:
                await asyncio.sleep(delay)
                mesh = ServerMesh(
                    client, writer, None, MeshState.from_dict(attempted.to_dict()), retry_budget=0, logger=self.log
                )
                async with self._lock():
                    await self._bounded(mesh.undo(["revoke", "deregister", "delete_tokens"]))

        _keep_referenced(asyncio.get_running_loop().create_task(rounds()))

    # -- the keeper -----------------------------------------------------------------------------

    async def keep_now(self) -> None:
        """Run one keeper round now, under the server's lock (what the keeper does every
        ``keeper_interval``): heartbeat, restore, extend, rotate when due, supervise."""
        async with self._lock():
            await self._keep(reconcile=False)

    async def forget(self) -> None:
        """Stop this server's keeper and touch nothing else: what a hub process leaves when it
        exits with the server running (``cleanup_servers = False``)."""
        await self._stop_keeper()

    def _start_keeper(self, reconcile: bool = False) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop yet (load_state from a tool): the first poll starts it
        if self._keeper is None or self._keeper.done():
            self._keeper = loop.create_task(self._keeper_loop(reconcile))

    async def _stop_keeper(self) -> None:
        """Cancel the keeper, and let a teardown that a cancelled keeper round or spawn had
        begun finish before anything else touches this server."""
        keeper, self._keeper = self._keeper, None
        if keeper is not None and keeper is not asyncio.current_task():
            keeper.cancel()
            try:
                await keeper
            except (asyncio.CancelledError, Exception):
                pass
        unfinished, self._unfinished_teardown = self._unfinished_teardown, None
        if unfinished is not None:
            try:
                await unfinished
            except Exception as e:
                self.log.warning("An interrupted teardown of %s failed: %s", self._log_name, e)

    async def _keeper_loop(self, reconcile: bool) -> None:
        """The one place that heartbeats, extends, rotates, restores and supervises a running
        server, every ``keeper_interval`` (jittered), under the server's lock."""
        if not reconcile:
            await asyncio.sleep(self._keeper_pause())
        while True:
            async with self._lock():
                if self.mesh_state.empty:
                    return
                try:
                    if await self._keep(reconcile):
                        reconcile = False
                    self.keeper_rounds += 1
                except asyncio.CancelledError:
                    raise
                except Exception as e:
                    # Consul trouble is not the server's death: the check TTL and intention
                    # expiry leave room for the next round.
                    self.log.warning("Could not refresh %s in the mesh: %s", self._log_name, e)
                if self._mesh_failure:
                    return
            await asyncio.sleep(self._keeper_pause())

    def _keeper_pause(self) -> float:
        return random.uniform(0.8, 1.2) * self.keeper_interval

    async def _keep(self, reconcile: bool) -> bool:
        """One round of the keeper; True when a restored server is reconciled."""
        if not await self._container_running(self.container_id or self.container_name):
            return False  # the notebook is gone: poll reports it and JupyterHub stops the server
        plan = self._running_plan()
        mesh = self._mesh(plan)
        if not await self._sidecar_alive():
            if not reconcile:
                await self._fail_server(f"sidecar {self.sidecar_container_name} stopped and stayed down")
                return False
            self.log.warning("The sidecar of %s is gone; minting a new token and restarting it", self._log_name)
            await self._rotate_token(mesh)
        if reconcile or not await self._heartbeat_or_restore(mesh):
            if not await mesh.registered_in_consul():
                self.log.warning("Consul lost %s; registering it again", plan.service_id)
            await mesh.register(await self._mesh_address())
        if reconcile and not await mesh.token_exists():
            self.log.warning("The token of %s is gone; minting a new one and restarting the sidecar", self._log_name)
            await self._rotate_token(mesh)
        if reconcile or mesh.grant_due():
            await mesh.grant()
        if mesh.token_due(self._rotation_margin):
            await self._rotate_token(mesh)
        if reconcile:
            await mesh.delete_stale_tokens()
            self.log.info("Reconciled %s with Consul", plan.service_id)
        self._save_state()
        return True

    async def _heartbeat_or_restore(self, mesh: ServerMesh) -> bool:
        """Pass the TTL check; False when Consul no longer has it (the registration was lost)."""
        try:
            await mesh.heartbeat()
            return True
        except ConsulError as e:
            # 404 "Unknown check ID" (Consul's agent/agent_endpoint.go AgentCheckPass).
            if e.status == 404:
                return False
            raise

    async def _sidecar_alive(self) -> bool:
        """Running or being restarted by Docker's policy; a sidecar that stays down for a few
        seconds is dead (stopped, killed, or out of restarts)."""
        deadline = time.monotonic() + SIDECAR_DOWN_GRACE
        while True:
            info = await self._inspect(self.sidecar_container_id)
            if info is None:
                return False
            state = info["State"]
            if state.get("Running") or state.get("Restarting"):
                return True
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.5)

    async def _fail_server(self, reason: str) -> None:
        """Take the whole server down (notebook included, so nothing runs out of the hub's
        sight), then let poll report it."""
        self.log.error("Taking %s down: %s", self._log_name, reason)
        self._mesh_failure = reason  # poll reports it once the notebook has stopped
        await self._teardown_to_the_end()

    async def _teardown_to_the_end(self) -> None:
        """A teardown no cancellation interrupts (a cancelled spawn, a stop cancelling the
        keeper): whoever runs next on this server waits for it first (``_stop_keeper``)."""
        self._unfinished_teardown = asyncio.ensure_future(self._teardown(stop_notebook=True))
        await asyncio.shield(self._unfinished_teardown)

    def _save_state(self) -> None:
        """Write state to the hub database now: JupyterHub itself saves it only at start and
        stop, and a rotated token must not be forgotten if the hub restarts before then."""
        if self.orm_spawner is not None and self.db is not None:
            self.orm_spawner.state = self.get_state()
            self.db.commit()

    async def _rotate_token(self, mesh: ServerMesh) -> None:
        """Mint a new token, restart the sidecar with it, wait until it is ready, then delete
        the old token (Consul tokens cannot be extended). A rotation that fails takes the
        server down: a server without a working sidecar is not healthy."""
        plan = mesh.need_plan()
        secret = await mesh.mint_token()
        self._save_state()  # the new accessor is known before anything else can fail
        try:
            await self._start_sidecar(plan, secret)
            await self._wait_for_sidecar(mesh)
        except (APIError, SidecarNotReady, RuntimeError) as e:
            await self._fail_server(f"token rotation could not restart the sidecar: {e}")
            return
        await mesh.delete_retired_tokens()
        self._save_state()
        self.log.info("Rotated the Consul token of %s", plan.service_id)

    # -- orphans ----------------------------------------------------------------------------------

    def _schedule_orphan_sweep(self) -> None:
        """Start, once per hub process, the sweep of objects this hub owns but no server holds."""
        users = getattr(self.user, "settings", {}).get("users") if self.orphan_sweep_delay > 0 else None
        if users is None:
            return  # not inside a hub (tests, tools), or disabled
        client, writer = self._client_and_writer()
        key = (self.hub_instance, id(asyncio.get_running_loop()))
        if key in _orphan_sweeps:
            return

        def live_incarnations() -> dict[str, str | None]:
            alive: dict[str, str | None] = {}
            for user in list(users.values()):
                for spawner in list(user.spawners.values()):
                    if not isinstance(spawner, ConsulSpawner):
                        continue
                    if spawner.mesh_state.service_id:
                        alive[spawner.mesh_state.service_id] = spawner.mesh_state.incarnation or None
                    if spawner.pending or spawner.active:
                        # Mid-start its incarnation may not be recorded yet: keep all of its objects.
                        name = naming.service_name(user.name, spawner.name or "", spawner.service_name_template)
                        if spawner.pending or name not in alive:
                            alive[name] = None
            return alive

        async def sweep():
            await asyncio.sleep(self.orphan_sweep_delay)
            try:
                removed = await sweep_orphans(client, writer, self.hub_instance, live_incarnations, self.log)
                await self._remove_orphan_sidecars({(o.service, o.incarnation) for o in removed})
            except Exception as e:
                self.log.warning("Orphan sweep of hub %s failed; the janitor remains: %s", self.hub_instance, e)

        _orphan_sweeps[key] = asyncio.get_running_loop().create_task(sweep())

    async def _remove_orphan_sidecars(self, orphaned: set[tuple[str, str]]) -> None:
        """Remove sidecar containers whose labels name an incarnation the sweep just found
        orphaned in this hub's Consul: both Docker and Consul must say it is our leftover (a
        second hub on the same Docker daemon has other incarnations)."""
        containers = await self.sidecar_docker(
            "containers",
            all=True,
            filters={"label": [f"{LABEL_PREFIX}.role=sidecar", f"{LABEL_PREFIX}.hub-instance={self.hub_instance}"]},
        )
        for container in containers:
            labels = container.get("Labels") or {}
            key = (labels.get(f"{LABEL_PREFIX}.service-id"), labels.get(f"{LABEL_PREFIX}.incarnation"))
            if key[1] and key in orphaned:
                await self.sidecar_docker("remove_container", container["Id"], force=True, v=True)
                self.log.info("Removed orphaned sidecar container %s of %s", container["Id"][:12], key[0])


def _read_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _keep_referenced(task: asyncio.Task) -> None:
    """Hold a background teardown task until it ends (the loop keeps only weak references)."""
    _pending_teardowns.add(task)
    task.add_done_callback(_pending_teardowns.discard)


async def _close_on_shutdown(client: ConsulClient) -> None:
    try:
        await asyncio.get_running_loop().create_future()  # until the hub cancels its tasks
    finally:
        await client.close()


def _sidecar_archive(secret: str, ca_pem: bytes | None = None, owner: tuple[int, int] = (0, 0)) -> bytes:
    """The sidecar's /consul directory: its token (0400) and, for an HTTPS agent, the CA that
    verifies it, owned by ``owner`` so a proxy image running as non-root can read them."""
    buffer = io.BytesIO()
    uid, gid = owner

    def add(name: str, mode: int, data: bytes | None = None) -> None:
        info = tarfile.TarInfo(name)
        info.mode, info.uid, info.gid, info.mtime = mode, uid, gid, int(time.time())
        if data is None:
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
        else:
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

    with tarfile.open(fileobj=buffer, mode="w") as tar:
        add(SIDECAR_TOKEN_DIR, 0o700)
        add(SIDECAR_TOKEN_FILE.lstrip("/"), 0o400, secret.encode())
        if ca_pem is not None:
            add(SIDECAR_CA_FILE.lstrip("/"), 0o444, ca_pem)
    return buffer.getvalue()
