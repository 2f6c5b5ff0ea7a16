"""The Docker side of a server's Connect sidecar: its Docker client, create (with the token as
a file), start, remove by proven labels. Readiness and liveness: :mod:`.sidecarhealth`.

A mixin of ConsulSpawner: it reads the spawner's traits and its recorded sidecar container.
"""

from __future__ import annotations

import asyncio
import io
import tarfile
import time
from typing import Any

from docker.errors import APIError, NotFound
from docker.tls import TLSConfig
from docker.utils import kwargs_from_env
from jupyterhub.utils import exponential_backoff

from .consul import ConsulError
from .dockerpool import DockerPool, DockerUnreachable
from .hubwide import _sidecar_dockers
from .plan import MeshPlan
from .room import Room
from .state import MeshState
from .uninterrupted import awaited_to_its_answer

SIDECAR_TOKEN_DIR = "consul"
SIDECAR_TOKEN_FILE = "/consul/token"
SIDECAR_CA_FILE = "/consul/ca.pem"
LABEL_PREFIX = "org.jupyter.consulspawner"
# How long a start waits for Docker to finish removing an old container of the same name.
REMOVAL_WAIT = 60.0


class SidecarContainer(Room):
    """The sidecar container of one server, next to its notebook."""

    sidecar_container_id: str

    @property
    def sidecar_container_name(self) -> str:
        # A dot: DockerSpawner's escaping never produces one, so no notebook has this name.
        # Stable per server (the service name, not the per-start ID): a leftover is found by name.
        return f"{self._service_name()}.consul-sidecar"

    def container_labels(self, plan: MeshPlan | None, role: str = "sidecar") -> dict[str, str]:
        """Labels proving a container is this hub's (and, with a plan, this incarnation's)."""
        labels = {f"{LABEL_PREFIX}.role": role, f"{LABEL_PREFIX}.hub-instance": self.hub_instance}
        if plan is not None:
            labels[f"{LABEL_PREFIX}.service-id"] = plan.service_id
            labels[f"{LABEL_PREFIX}.service-name"] = plan.service_name
            labels[f"{LABEL_PREFIX}.incarnation"] = plan.owner.incarnation
        return labels

    def _is_our_sidecar(self, info: dict, service_name: str) -> bool:
        labels = (info.get("Config") or {}).get("Labels") or info.get("Labels") or {}
        return (
            labels.get(f"{LABEL_PREFIX}.role") == "sidecar"
            and labels.get(f"{LABEL_PREFIX}.hub-instance") == self.hub_instance
            and _service_name(labels) == service_name
        )

    # -- the client -----------------------------------------------------------------------------

    def sidecar_docker(self, method, *args, **kwargs):
        """A Docker call of the mesh's own (sidecar, readiness probes, inspections), on the
        threads and client of :class:`~.dockerpool.DockerPool`: DockerSpawner runs every Docker
        call of every spawner on one shared thread, and a user's sidecar should not queue behind
        other users' notebooks.

        One pool per spawner class, with that class's ``client_kwargs`` and ``tls_config`` (as
        DockerSpawner's own client), its client built on a pool thread."""
        cls = type(self)
        if cls not in _sidecar_dockers:
            _sidecar_dockers[cls] = DockerPool(self._sidecar_client_kwargs, f"consulspawner-sidecar-{cls.__name__}")
        return _sidecar_dockers[cls].call(method, *args, **kwargs)

    def _sidecar_client_kwargs(self) -> dict:
        """As DockerSpawner.client's (run on a pool thread: TLSConfig reads the files)."""
        client_kwargs = {"version": "auto"}
        if self.tls_config:
            client_kwargs["tls"] = TLSConfig(**self.tls_config)
        client_kwargs.update(kwargs_from_env())
        client_kwargs.update(self.client_kwargs)
        return client_kwargs

    async def _inspect(self, container: str) -> dict | None:
        if not container:
            return None
        try:
            return await self.sidecar_docker("inspect_container", container)
        except NotFound:
            return None

    async def _container_running(self, container: str) -> bool:
        info = await self._inspect(container)
        return bool(info and info["State"]["Running"])

    async def _wait_while_removed(self, name: str) -> None:
        """Until no container named ``name`` is on its way out: Docker removes an auto_remove
        container after it exits, asynchronously, and a create under its name meanwhile fails
        with 409 "name already in use" (as after a dead sidecar took its notebook down, or an
        old sidecar whose removal answered 409 "removal already in progress")."""

        async def free() -> bool:
            info = await self._inspect(name)
            if info is None:
                return True
            status = info["State"].get("Status")
            auto_remove = (info.get("HostConfig") or {}).get("AutoRemove")
            return not (status in ("removing", "dead") or (auto_remove and status == "exited"))

        try:
            await exponential_backoff(free, "", start_wait=0.1, max_wait=1.0, timeout=REMOVAL_WAIT)
        except TimeoutError:
            raise RuntimeError(
                f"Docker is still removing the old container {name!r} after {REMOVAL_WAIT:g}s (docker inspect)"
            ) from None

    # -- create and remove ----------------------------------------------------------------------

    async def _start_sidecar(self, plan: MeshPlan, token_secret: str) -> None:
        """Create the sidecar with its token in it, and start it."""
        await self._create_sidecar(plan, token_secret)
        await self._run_created_sidecar(plan)

    async def _create_sidecar(self, plan: MeshPlan, token_secret: str) -> None:
        """Create the sidecar (not started) with its token copied in. It needs only the notebook
        container to exist (it joins its network namespace), not to run: a spawn does this
        while the notebook starts (ConsulSpawner.start_object)."""
        await self._remove_sidecar()
        await self._wait_while_removed(self.sidecar_container_name)
        if self.sidecar_container_name == self.container_name:
            raise RuntimeError(f"sidecar and notebook would share the container name {self.container_name!r}")
        host_config = await self.sidecar_docker(
            "create_host_config",
            network_mode=f"container:{self.container_id}",
            auto_remove=False,
            # A crash is healed by Docker (the token file survives in the container); a sidecar
            # stopped or killed on purpose, or failing for good, stays down and the keeper
            # takes the server down with it.
            # No MaximumRetryCount: Docker never resets its count, so the budget is counted
            # here, over sidecar_restart_window (_sidecar_alive).
            restart_policy={"Name": "on-failure"},
            # Ahead of notebooks booting while it starts (sidecar_start_cpu_shares), lowered to
            # sidecar_cpu_shares once it is ready (SidecarHealth._end_start_boost).
            cpu_shares=self.sidecar_start_cpu_shares or self.sidecar_cpu_shares or None,
        )
        environment = {**self.sidecar_env, "CONSUL_HTTP_ADDR": self.sidecar_consul_address}
        ca_pem = None
        if self.sidecar_consul_address.startswith("https") and self.consul_ca_file:
            # Delivered like the token (a file in the sidecar alone), so CONSUL_CACERT works.
            ca_pem = await asyncio.to_thread(_read_bytes, self.consul_ca_file)
            environment.setdefault("CONSUL_CACERT", SIDECAR_CA_FILE)
        create = self.sidecar_docker(
            "create_container",
            image=self.sidecar_image,
            command=plan.sidecar_args(self.sidecar_command, token_file=SIDECAR_TOKEN_FILE),
            name=self.sidecar_container_name,
            environment=environment,
            labels=self.container_labels(plan),
            host_config=host_config,
        )
        # Recorded even when a stop cancels this meanwhile, so that stop's teardown removes it.
        await awaited_to_its_answer(create, lambda container: setattr(self, "sidecar_container_id", container["Id"]))
        self._sidecar_boosted = self._start_weight_differs()
        self._restart_marks = [(time.monotonic(), 0)]
        # The token goes in as a file copied into this container alone, so it is in no
        # container config (docker inspect), no environment and no mount of the notebook's.
        archive = sidecar_archive(token_secret, ca_pem, self._sidecar_file_owner)
        await self.sidecar_docker("put_archive", self.sidecar_container_id, "/", archive)

    def _start_weight_differs(self) -> bool:
        """Whether a sidecar is created at a CPU weight other than the one it runs at."""
        return self.sidecar_start_cpu_shares not in (0, self.sidecar_cpu_shares)

    async def _settle_early_sidecar(self) -> None:
        """A start that failed or was cancelled while its sidecar was being made: that creation
        ends first (its container recorded), so the teardown that follows removes it. Run by
        the teardown, and by the next start; awaited to its end even if that start is cancelled
        meanwhile. Its own failure is no one's business any more: what it made is found by name."""
        early, self._early_sidecar = self._early_sidecar, None
        if early is not None:
            try:
                await awaited_to_its_answer(early)
            except Exception as e:
                self.log.info("The sidecar of %s was not made: %s", self._log_name, e)

    async def _run_created_sidecar(self, plan: MeshPlan) -> None:
        """Start the sidecar ``_create_sidecar`` made, once the notebook (whose network namespace
        it joins) runs and the service is registered: ``consul connect envoy -sidecar-for``
        exits at once without a sidecar registration (LookupProxyIDForSidecar: "No sidecar
        proxy registered for ...")."""
        await self.sidecar_docker("start", self.sidecar_container_id)
        self.log.info("Started sidecar %s for %s", self.sidecar_container_name, plan.service_id)

    async def _read_sidecar_token(self, service_name: str) -> str | None:
        """The token secret in this server's sidecar (``/consul/token``), once its labels prove
        the container is this server's; None when there is no such sidecar or file."""
        # The recorded one, else the one under this server's name (a hub that died mid-rotation
        # saved the sidecar it was replacing).
        for target in dict.fromkeys(t for t in (self.sidecar_container_id, f"{service_name}.consul-sidecar") if t):
            info = await self._inspect(target)
            if info is None or not self._is_our_sidecar(info, service_name):
                continue
            try:
                return await self.sidecar_docker(_token_from_archive, info["Id"])
            except (NotFound, APIError, DockerUnreachable, KeyError, tarfile.TarError) as e:
                self.log.info(
                    "Could not read the token file of sidecar %s: %s", info.get("Name", "?"), type(e).__name__
                )
        return None

    async def _find_current_sidecar(self) -> None:
        """After a hub restart: when the recorded sidecar is gone, take the one under this
        server's name, once its labels prove it is this server's (a hub that died mid-rotation
        saved the sidecar it was replacing)."""
        if await self._inspect(self.sidecar_container_id):
            return
        info = await self._inspect(self.sidecar_container_name)
        if info is not None and self._is_our_sidecar(info, self._service_name()):
            self.log.info("Found the sidecar of %s under its name (%s)", self._log_name, info["Id"][:12])
            self.sidecar_container_id = info["Id"]

    async def _logout_leftover_token(self) -> None:
        """A stop without state (a hub killed mid-spawn): log out the token the server's sidecar
        holds, once its labels prove it is this server's, before the sidecar is removed."""
        secret = await self._read_sidecar_token(self._service_name())
        if not secret:
            return
        client = self._client_and_writer()[0]
        client.remember_secret(secret)
        try:
            if await client.logout(secret):
                self.log.info("Logged out the token an earlier start of %s left", self._log_name)
        except ConsulError as e:
            self.log.info("Could not log out the token an earlier start of %s left: %s", self._log_name, e)

    async def _logout_sidecar_token(self, container: str) -> None:
        """Log out the token an orphaned sidecar holds (best effort: it expires anyway)."""
        try:
            secret = await self.sidecar_docker(_token_from_archive, container)
        except (NotFound, APIError, DockerUnreachable, KeyError, tarfile.TarError):
            return
        client = self._client_and_writer()[0]
        client.remember_secret(secret)
        try:
            if await client.logout(secret):
                self.log.info("Logged out the token of orphaned sidecar %s", container[:12])
        except ConsulError as e:
            self.log.info("Could not log out the token of orphaned sidecar %s: %s", container[:12], e)

    async def _recover_token_secret(self, state: MeshState) -> str | None:
        """After a hub restart: take the current token's secret back from the sidecar into this
        process's memory (``state.secrets``), so it can be checked, rotated and logged out."""
        secret = await self._read_sidecar_token(state.service_name or state.service_id)
        if secret and state.token_accessor:
            state.secrets[state.token_accessor] = secret
            self._client_and_writer()[0].remember_secret(secret)
        return secret

    async def _remove_sidecar(self) -> None:
        """Remove this server's sidecar: the recorded one, and any container under its name
        whose labels prove it is this server's (one created by an interrupted start). A
        container under that name that is not ours is never touched."""
        # Taken now: a concurrent DockerSpawner.stop clears the spawner's state.
        service_name = self._service_name()
        recorded, name = self.sidecar_container_id, self.sidecar_container_name
        for target in dict.fromkeys(t for t in (recorded, name) if t):
            info = await self._inspect(target)
            if info is None:
                continue
            if not self._is_our_sidecar(info, service_name):
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
            key = (_service_name(labels), labels.get(f"{LABEL_PREFIX}.incarnation"))
            if key[1] and key in orphaned:
                await self._logout_sidecar_token(container["Id"])
                await self.sidecar_docker("remove_container", container["Id"], force=True, v=True)
                self.log.info("Removed orphaned sidecar container %s of %s", container["Id"][:12], key[0])


def _token_from_archive(client: Any, container: str) -> str:
    stream, _ = client.get_archive(container, SIDECAR_TOKEN_FILE)
    data = b"".join(stream)
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        member = archive.extractfile(archive.getmembers()[0])
        if member is None:
            raise KeyError(SIDECAR_TOKEN_FILE)
        return member.read().decode().strip()


def _service_name(labels: dict) -> str | None:
    # Sidecars of earlier releases have no service-name label; their service ID was the name.
    return labels.get(f"{LABEL_PREFIX}.service-name") or labels.get(f"{LABEL_PREFIX}.service-id")


def _read_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def sidecar_archive(secret: str, ca_pem: bytes | None = None, owner: tuple[int, int] = (0, 0)) -> bytes:
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
