"""Traits of the containers: the sidecar's image, command, port, files and readiness, and the
notebook's privileges and network."""

from __future__ import annotations

from traitlets import Bool, Dict, Float, HasTraits, Int, List, TraitError, Unicode, default, validate

from .limits import address, checked
from .settings import default as setting


def _within_start_timeout(ready_timeout: float, start_timeout: float) -> None:
    if ready_timeout >= start_timeout:
        raise TraitError(
            f"c.ConsulSpawner.sidecar_ready_timeout ({ready_timeout:g}) must be less than "
            f"c.Spawner.start_timeout ({start_timeout:g}): the spawn must fail with the sidecar's reason first"
        )


class ContainerConfig(HasTraits):
    """The sidecar container and the notebook's hardening (``c.ConsulSpawner.sidecar_*``,
    ``c.ConsulSpawner.notebook_*``)."""

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
                "connectproxy", "-sidecar-for", "{service_id}", "-token-file", "{token_file}"]
        """,
    ).tag(config=True)

    sidecar_env = Dict(
        help="""Extra environment of the sidecar container (never of the notebook).

        CONSUL_HTTP_ADDR is set from sidecar_consul_address.

            c.ConsulSpawner.sidecar_env = {"CONSUL_CACERT": "/consul/ca.pem"}
        """,
    ).tag(config=True)

    sidecar_port = Int(
        setting("sidecar_port"),
        help="""Port of every sidecar's public (inbound) listener, on its notebook's address.

        All sidecars can share it: each listens in its own notebook's network namespace. 0 lets
        the Consul agent pick one from its sidecar port range (21000..21255 by default), which
        caps one agent at 256 servers.

            c.ConsulSpawner.sidecar_port = 21000
        """,
    ).tag(config=True)

    sidecar_cpu_shares = Int(
        4096,
        help="""The running sidecar's CPU weight (Docker's ``CpuShares``; a container's default
        is 1024). Only a weight: it reserves and limits nothing, and matters only while the CPU
        is contended.

        Every query to Trino passes through the sidecar. Its CPU use follows its user's
        traffic, so a weight far above the notebooks' would let one user's traffic crowd out
        other users' notebooks (a proxy like Envoy uses every core by default): while it starts,
        the sidecar has sidecar_start_cpu_shares instead. 0 leaves Docker's default.

            c.ConsulSpawner.sidecar_cpu_shares = 0
        """,
    ).tag(config=True)

    sidecar_start_cpu_shares = Int(
        65536,
        help="""The sidecar's CPU weight from its creation until it is ready; then it is lowered
        to sidecar_cpu_shares (if that fails, the keeper lowers it at its next round).

        Every spawn waits for its sidecar to boot, and when many notebooks start at once their
        servers' boot takes the CPU: ten spawns at once on two cores, the mesh's part of a spawn
        took about 2 to 2.5 times a lone spawn's at 4096, 1.4 to 1.7 times at 65536
        (benchmarks/README.md, figure 6). The boot is short (a tenth of a second of CPU for the
        development proxy), so the weight favours only that. 0: no boost, the sidecar starts at
        sidecar_cpu_shares.

            c.ConsulSpawner.sidecar_start_cpu_shares = 0
        """,
    ).tag(config=True)

    @validate("sidecar_port", "sidecar_restart_attempts", "sidecar_cpu_shares", "sidecar_start_cpu_shares")
    def _valid_limited(self, proposal):
        return checked(proposal)

    @validate("sidecar_ready_timeout")
    def _valid_ready_timeout(self, proposal):
        _within_start_timeout(checked(proposal), self.start_timeout)
        return proposal.value

    sidecar_file_owner = Unicode(
        "0:0",
        help="""``uid:gid`` owning the token (and CA) files copied into the sidecar's /consul.

        The token file is mode 0400: give it to the user the proxy runs as (Envoy images often
        run as uid 101).

            c.ConsulSpawner.sidecar_file_owner = "101:101"
        """,
    ).tag(config=True)

    @validate("sidecar_file_owner")
    def _valid_owner(self, proposal):
        try:
            uid, gid = (int(part) for part in proposal.value.split(":"))
            if uid < 0 or gid < 0:
                raise ValueError
        except ValueError:
            raise TraitError(f"c.ConsulSpawner.sidecar_file_owner {proposal.value!r} is not uid:gid") from None
        return proposal.value

    @property
    def _sidecar_file_owner(self) -> tuple[int, int]:
        uid, gid = self.sidecar_file_owner.split(":")
        return int(uid), int(gid)

    sidecar_consul_address = Unicode(
        help="""Consul HTTP address as seen from inside the sidecar container.

        Defaults to consul_address; set it when the hub and containers reach Consul differently.

            c.ConsulSpawner.sidecar_consul_address = "http://172.17.0.1:8500"
        """,
    ).tag(config=True)

    @default("sidecar_consul_address")
    def _sidecar_consul_address_default(self):
        return self.consul_address

    @validate("sidecar_consul_address")
    def _valid_sidecar_consul_address(self, proposal):
        return address(proposal)

    sidecar_ready_timeout = Float(
        help="""Seconds to wait for the sidecar to be ready before the spawn fails.

        Less than JupyterHub's ``start_timeout`` (default: three quarters of it, 45 s of the
        default 60 s), so a sidecar that is never ready fails the spawn with its own reason and
        is undone before JupyterHub gives up on the spawn.

            c.ConsulSpawner.sidecar_ready_timeout = 90  # with c.Spawner.start_timeout = 120
        """,
    ).tag(config=True)

    @default("sidecar_ready_timeout")
    def _sidecar_ready_timeout_default(self):
        return 0.75 * self.start_timeout

    @validate("start_timeout")
    def _valid_start_timeout(self, proposal):
        if self.trait_has_value("sidecar_ready_timeout"):
            _within_start_timeout(self.sidecar_ready_timeout, proposal.value)
        return proposal.value

    sidecar_ready_command = List(
        Unicode(),
        default_value=["sidecar-ready"],
        help="""Command run in the sidecar container (docker exec) that exits 0 once the proxy is
        ready: listeners bound, certificates loaded. The spawner runs it until then (first
        after 0.05 s on average, backing off to 0.5 s), so readiness does not wait for Consul's
        TCP check interval (10 s by default).

        The sidecar images in docker/ provide ``sidecar-ready``: for Envoy it asks the admin
        interface's ``/ready`` on a unix socket in the sidecar's own filesystem (never a TCP
        port: the notebook shares the network namespace). An empty list waits for the sidecar's
        Consul checks instead.

            c.ConsulSpawner.sidecar_ready_command = ["connectproxy", "ready", "-admin-socket", "/consul/admin.sock"]
        """,
    ).tag(config=True)

    sidecar_restart_attempts = Int(
        5,
        help="""How many crashes of a sidecar within ``sidecar_restart_window`` Docker heals
        (restart policy on-failure) before the keeper takes the server down. A sidecar stopped
        or killed on purpose is not restarted.

        Docker never resets a container's restart count, so the budget is the spawner's: crashes
        days apart never add up.

            c.ConsulSpawner.sidecar_restart_attempts = 3
        """,
    ).tag(config=True)

    sidecar_restart_window = Float(
        600.0,
        help="""Seconds over which sidecar crashes are counted against ``sidecar_restart_attempts``.

            c.ConsulSpawner.sidecar_restart_window = 3600
        """,
    ).tag(config=True)

    @validate("sidecar_restart_window")
    def _valid_restart_window(self, proposal):
        if proposal.value <= 0:
            raise TraitError(f"c.ConsulSpawner.sidecar_restart_window ({proposal.value:g}) must be positive")
        return proposal.value

    notebook_cap_drop = List(
        Unicode(),
        default_value=["NET_RAW", "NET_ADMIN"],
        help="""Capabilities dropped from the notebook container, added to any the site drops.

        The notebook shares its network namespace with the sidecar, whose Consul token and
        traffic cross that namespace: without NET_RAW a notebook user cannot open a packet
        socket to capture them, and without NET_ADMIN cannot reroute them.

            c.ConsulSpawner.notebook_cap_drop = ["NET_RAW", "NET_ADMIN", "SYS_PTRACE"]
        """,
    ).tag(config=True)

    notebook_no_new_privileges = Bool(
        True,
        help="""Start the notebook with Docker's ``no-new-privileges``, so no setuid program can
        give a notebook user back what ``notebook_cap_drop`` took.

            c.ConsulSpawner.notebook_no_new_privileges = True
        """,
    ).tag(config=True)

    @validate("network_name")
    def _valid_network_name(self, proposal):
        # The sidecar joins the notebook's network namespace and Consul must reach the notebook
        # at an address of its own: host, none and container: networking give it none.
        value = proposal.value
        if value in ("host", "none") or value.startswith("container:"):
            raise TraitError(
                f"c.DockerSpawner.network_name = {value!r} is not supported by ConsulSpawner: the notebook "
                "needs an address of its own on a bridge or user-defined network"
            )
        return value
