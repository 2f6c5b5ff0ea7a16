"""Traits of the hub's connection to Consul: address, token, TLS, datacenter, timeouts."""

from __future__ import annotations

import os

from traitlets import Float, HasTraits, Unicode, default, validate

from .limits import address, checked

# The hub's Consul token must not reach the processes the hub starts (configurable-http-proxy,
# managed services): JupyterHub hands them its environment. Taken out when JupyterHub loads
# the spawner class (which imports this module), before it starts any of them;
# ConsulSpawner.consul_token defaults to it.
_HUB_ENV_TOKEN = os.environ.pop("CONSUL_HTTP_TOKEN", "")


class ConnectionConfig(HasTraits):
    """How the hub reaches Consul (``c.ConsulSpawner.consul_*``)."""

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

    @validate("consul_address")
    def _valid_consul_address(self, proposal):
        return address(proposal)

    consul_token = Unicode(
        help="""The hub's own Consul ACL token (secret). Prefer ``consul_token_file``.

        Needs the policy in docker/consul/hub-policy.hcl: acl:write (to mint per-server tokens),
        service:write on the managed services, intentions:write on the intention destinations
        and node:read. Defaults to $CONSUL_HTTP_TOKEN. It is only ever sent in the
        X-Consul-Token header and never logged.

            c.ConsulSpawner.consul_token = os.environ["HUB_CONSUL_TOKEN"]
        """,
    ).tag(config=True)

    consul_token_file = Unicode(
        help="""File holding the hub's Consul ACL token, read when the first Consul client is made.

        Defaults to $CONSUL_HTTP_TOKEN_FILE (the variable Consul's own CLI reads). Wins over
        ``consul_token``. Keep it mode 0600.

            c.ConsulSpawner.consul_token_file = "/run/secrets/hub-consul-token"
        """,
    ).tag(config=True)

    @default("consul_token")
    def _consul_token_default(self):
        return os.environ.get("CONSUL_HTTP_TOKEN", "") or _HUB_ENV_TOKEN

    @default("consul_token_file")
    def _consul_token_file_default(self):
        return os.environ.get("CONSUL_HTTP_TOKEN_FILE", "")

    @property
    def _hub_token(self) -> str:
        if self.consul_token_file:
            try:
                with open(self.consul_token_file) as f:
                    return f.read().strip()
            except OSError as e:
                raise RuntimeError(f"c.ConsulSpawner.consul_token_file: cannot read it: {e.strerror}") from e
        return self.consul_token

    consul_ca_file = Unicode(
        "",
        help="""CA bundle to verify Consul's HTTPS certificate.

        c.ConsulSpawner.consul_ca_file = "/etc/consul/ca.pem"
        """,
    ).tag(config=True)
    consul_client_cert = Unicode(
        "",
        help="""Client certificate (PEM) for Consul's HTTPS API, when it verifies clients.

        c.ConsulSpawner.consul_client_cert = "/etc/consul/hub.pem"
        """,
    ).tag(config=True)
    consul_client_key = Unicode(
        "",
        help="""Private key (PEM) of ``consul_client_cert``.

        c.ConsulSpawner.consul_client_key = "/etc/consul/hub-key.pem"
        """,
    ).tag(config=True)
    consul_datacenter = Unicode(
        "",
        help="""Consul datacenter for catalog, health, config and ACL calls (default: the agent's).

        c.ConsulSpawner.consul_datacenter = "dc1"
        """,
    ).tag(config=True)
    consul_request_timeout = Float(
        10.0,
        help="""Seconds one Consul call may take before it counts as failed.

        c.ConsulSpawner.consul_request_timeout = 5
        """,
    ).tag(config=True)
    consul_retry_budget = Float(
        15.0,
        help="""Seconds a Consul step may spend retrying transport errors and 5xx answers.

        A spawn fails, naming the Consul call, once a step exhausts it.

            c.ConsulSpawner.consul_retry_budget = 30
        """,
    ).tag(config=True)

    @validate("consul_request_timeout")
    def _valid_request_timeout(self, proposal):
        return checked(proposal)
