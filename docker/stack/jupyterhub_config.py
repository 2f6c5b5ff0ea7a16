"""JupyterHub with ConsulSpawner for the production stack (docker/stack/compose.yaml).

Every notebook server becomes a Consul service with its own ACL token (a service identity, made
by Consul when the hub logs the server in with a JWT it signs: the hub mints no token),
an Envoy sidecar in its network namespace whose upstream binds trino-coordinator on
127.0.0.1:28080, and an intention to trino-coordinator that lives only as long as the server.
The hub's own Consul token (docker/consul/hub-policy.hcl) is a file written by consul-acl-init;
it never reaches a notebook. Loaded by tests/test_stack.py through JupyterHub's config loader.
"""

import os
import sys

c = get_config()  # noqa: F821 (provided by JupyterHub when it loads this file)
env = os.environ.get

# -- JupyterHub ------------------------------------------------------------------------------------
c.JupyterHub.spawner_class = "consul"  # entry point jupyterhub.spawners: consul
c.JupyterHub.bind_url = "http://0.0.0.0:8000"
# Notebooks reach the hub API by the hub container's name on the mesh network.
c.JupyterHub.hub_ip = "0.0.0.0"
c.JupyterHub.hub_connect_ip = "jupyterhub"
# Servers (and their mesh membership) survive hub restarts; each restored server's keeper
# reconciles it with Consul at once.
c.JupyterHub.cleanup_servers = False
c.JupyterHub.allow_named_servers = True  # each named server is its own Consul service and identity
# Bring your own authenticator (OAuth, LDAP, ...); PAM is JupyterHub's default.
# c.JupyterHub.authenticator_class = "generic-oauth"
c.JupyterHub.cookie_secret_file = "/srv/jupyterhub/jupyterhub_cookie_secret"
c.JupyterHub.db_url = "sqlite:////srv/jupyterhub/jupyterhub.sqlite"

# -- Consul: the hub's connection ------------------------------------------------------------------
# The client agent over HTTPS; its certificate names consul-client, signed by the stack's CA.
c.ConsulSpawner.consul_address = env("CONSUL_HTTP_ADDR", "https://consul-client:8501")
c.ConsulSpawner.consul_ca_file = env("CONSUL_CACERT", "/run/secrets/consul/ca.pem")
# The hub's token (policy consulspawner-hub), a 0600 file; never in the environment or the config.
c.ConsulSpawner.consul_token_file = env("CONSUL_HTTP_TOKEN_FILE", "/run/secrets/consul/token")
# Give every hub sharing this Consul its own name: cleanup touches only objects carrying it.
# consul/identity/*.json (the auth method and binding rule) name it too: change them together.
c.ConsulSpawner.hub_instance = "jupyterhub"

# -- Consul: each server's identity, by login ------------------------------------------------------
# The hub signs a short-lived JWT per server with this key (EC P-256, 0600, made by the one-shot
# hub-jwt-key-init; volume hub-jwt-key, mounted only into the hub) and exchanges it at Consul's
# POST /v1/acl/login through this auth method, whose binding rule (consul/identity/) turns it into
# a local token with the one service identity jupyter-<slug>, expiring after the method's
# MaxTokenTTL (24 h). The hub hands that token to the server's sidecar as a file and logs it out
# at stop. The hub's own token needs no acl rule.
c.ConsulSpawner.jwt_signing_key_file = "/run/secrets/hub-jwt/key.pem"
c.ConsulSpawner.auth_method = "consulspawner-jupyterhub"

# -- Notebook containers -------------------------------------------------------------------------
c.ConsulSpawner.image = env("CONSULSPAWNER_NOTEBOOK_IMAGE", "consulspawner/notebook:stack")
c.ConsulSpawner.pull_policy = "ifnotpresent"
c.ConsulSpawner.remove = True
# The compose network (compose.yaml: networks.mesh.name); Consul and the sidecars reach the
# notebook at its address there.
c.ConsulSpawner.network_name = env("CONSULSPAWNER_NETWORK", "consulspawner-mesh")
c.ConsulSpawner.use_internal_ip = True

# -- Sidecar: docker/stack/envoy-sidecar -----------------------------------------------------------
c.ConsulSpawner.sidecar_image = env("CONSULSPAWNER_SIDECAR_IMAGE", "consulspawner/envoy-sidecar:1.20.2-v1.31.2")
# consul connect envoy -bootstrap ... then Envoy with its admin interface on a unix socket.
c.ConsulSpawner.sidecar_command = [
    "consul-envoy-sidecar",
    "-sidecar-for",
    "{service_id}",
    "-token-file",
    "{token_file}",
]
# Envoy's admin /ready over that socket, run with docker exec until it exits 0.
c.ConsulSpawner.sidecar_ready_command = ["sidecar-ready"]
# The sidecar asks the same agent the hub registered the server on; its xDS is gRPC over TLS.
# CONSUL_HTTP_ADDR and CONSUL_CACERT (from consul_ca_file) are set by ConsulSpawner.
c.ConsulSpawner.sidecar_consul_address = "https://consul-client:8501"
c.ConsulSpawner.sidecar_env = {"CONSUL_GRPC_ADDR": "https://consul-client:8503"}
# The image runs Envoy as uid 101: the token copied in as /consul/token (0400) is that user's.
c.ConsulSpawner.sidecar_file_owner = "101:101"
# JupyterHub gives up on a spawn after start_timeout; the sidecar's own deadline must be less.
c.Spawner.start_timeout = 180
c.ConsulSpawner.sidecar_ready_timeout = 120

# -- Mesh: what a notebook may reach ---------------------------------------------------------------
c.ConsulSpawner.upstreams = [{"destination_name": "trino-coordinator", "local_bind_port": 28080}]
c.ConsulSpawner.intention_destinations = ["trino-coordinator"]
# L7: each notebook may send only requests whose X-Trino-User is its user's Trino user.
# consul-acl-init writes the service-defaults (protocol http) L7 needs.
c.ConsulSpawner.intention_mode = "L7"
c.ConsulSpawner.trino_user = "{username}"

# -- Services: the idle culler (the janitor runs as its own container) -----------------------------
c.JupyterHub.services = [
    {
        "name": "idle-culler",
        "command": [sys.executable, "-m", "jupyterhub_idle_culler", "--timeout=3600", "--cull-every=300"],
    },
]
c.JupyterHub.load_roles = [
    {
        "name": "idle-culler",
        "scopes": ["list:users", "read:users:activity", "read:servers", "delete:servers"],
        "services": ["idle-culler"],
    },
]
