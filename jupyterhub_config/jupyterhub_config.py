"""JupyterHub with ConsulSpawner, configured from the environment.

Used by scripts/demo.sh (through scripts/demo.py: a dev Consul agent and local images) and by the
end-to-end hub tests. A production hub takes the same shape with its own authenticator and real
Consul address.

Environment:
  CONSUL_HTTP_ADDR            Consul address for the hub (default http://127.0.0.1:8500)
  CONSUL_HTTP_TOKEN_FILE      file (0600) with the hub's Consul token, of docker/consul/hub-policy.hcl;
                              read by ConsulSpawner, never logged, never in any environment
  CONSULSPAWNER_SIDECAR_CONSUL_ADDR  Consul address as containers see it
  CONSULSPAWNER_NETWORK       Docker network of notebooks (default consulspawner)
  CONSULSPAWNER_HUB_IP        address the hub API binds and containers connect to
  CONSULSPAWNER_HUB_PORT      hub API port (default 8081)
  CONSULSPAWNER_PROXY_PORT    public port (default 8000)
  CONSULSPAWNER_NOTEBOOK_IMAGE, CONSULSPAWNER_SIDECAR_IMAGE, CONSULSPAWNER_SIDECAR_COMMAND (JSON list)
  CONSULSPAWNER_HUB_INSTANCE  hub_instance (default jupyterhub)
  CONSULSPAWNER_CULL_TIMEOUT, CONSULSPAWNER_CULL_EVERY  idle culler (seconds; unset: no culler)
  CONSULSPAWNER_ADMIN_SERVICE_TOKEN  API token of an admin service (tests drive the hub with it)
  CONSULSPAWNER_ADMIN_SERVICE_TOKEN_FILE  the same, read from a file (0600; the demo stops servers with it)
  CONSULSPAWNER_INTENTION_MODE  L7 (default) or L4
  CONSULSPAWNER_JANITOR_TOKEN_FILE  set: run consulspawner-janitor as a hub-managed service with
                              this token file (0600, a token of docker/consul/janitor-policy.hcl)
  CONSULSPAWNER_ADMIN_USER, CONSULSPAWNER_PASSWORDS_FILE  log in with passwords (JupyterHub's
                              shared-password authenticator): the file (0600) is JSON with
                              "admin_password" (for the admin user) and "user_password" (any
                              other name); unset: any name logs in without a password (tests)
  CONSULSPAWNER_CLEANUP_SERVERS  set: the hub stops every server when it stops (the demo)
  CONSULSPAWNER_DEFAULT_URL   the notebook's default URL (e.g. /lab/tree/trino-example.ipynb)
  CONSULSPAWNER_ORPHAN_SWEEP_DELAY  seconds after start before the hub revokes what no server holds
  CONSULSPAWNER_START_TIMEOUT, CONSULSPAWNER_HTTP_TIMEOUT, CONSULSPAWNER_SIDECAR_READY_TIMEOUT,
  CONSULSPAWNER_CONSUL_REQUEST_TIMEOUT  seconds (unset: the defaults; the demo raises them)
  CONSULSPAWNER_AUDIT_LOG     set: the audit trail (logger consulspawner.audit) goes to this file,
                              one JSON line per event, as docs/operations.md shows
"""

import json
import os
import sys

c = get_config()  # noqa: F821 (provided by JupyterHub when it loads this file)
env = os.environ.get

c.JupyterHub.spawner_class = "consulspawner.ConsulSpawner"
if env("CONSULSPAWNER_PASSWORDS_FILE"):
    with open(env("CONSULSPAWNER_PASSWORDS_FILE")) as f:
        passwords = json.load(f)
    c.JupyterHub.authenticator_class = "shared-password"
    c.SharedPasswordAuthenticator.admin_password = passwords["admin_password"]
    c.SharedPasswordAuthenticator.user_password = passwords["user_password"]
    c.Authenticator.admin_users = {env("CONSULSPAWNER_ADMIN_USER", "admin")}
else:
    c.JupyterHub.authenticator_class = "dummy"
c.Authenticator.allow_all = True
c.JupyterHub.bind_url = f"http://127.0.0.1:{env('CONSULSPAWNER_PROXY_PORT', '8000')}"
c.JupyterHub.hub_ip = env("CONSULSPAWNER_HUB_IP", "127.0.0.1")
c.JupyterHub.hub_port = int(env("CONSULSPAWNER_HUB_PORT", "8081"))
c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{env('CONSULSPAWNER_PROXY_API_PORT', '8001')}"
# Servers (and their mesh membership) survive hub restarts; the demo stops them with the hub.
c.JupyterHub.cleanup_servers = bool(env("CONSULSPAWNER_CLEANUP_SERVERS"))
c.JupyterHub.allow_named_servers = True  # each named server is its own Consul service and identity

c.ConsulSpawner.image = env("CONSULSPAWNER_NOTEBOOK_IMAGE", "consulspawner/notebook:latest")
c.ConsulSpawner.cmd = ["jupyterhub-singleuser"]
c.ConsulSpawner.network_name = env("CONSULSPAWNER_NETWORK", "consulspawner")
c.ConsulSpawner.use_internal_ip = True
c.ConsulSpawner.remove = True
c.ConsulSpawner.pull_policy = "never"
c.ConsulSpawner.hub_instance = env("CONSULSPAWNER_HUB_INSTANCE", "jupyterhub")
# ConsulSpawner labels its notebook containers as it does its sidecars
# (org.jupyter.consulspawner.role=notebook, hub-instance, service-id, incarnation).
if env("CONSULSPAWNER_DEFAULT_URL"):
    c.Spawner.default_url = env("CONSULSPAWNER_DEFAULT_URL")
c.ConsulSpawner.intention_mode = env("CONSULSPAWNER_INTENTION_MODE", "L7")
if env("CONSULSPAWNER_SIDECAR_CONSUL_ADDR"):
    c.ConsulSpawner.sidecar_consul_address = env("CONSULSPAWNER_SIDECAR_CONSUL_ADDR")
if env("CONSULSPAWNER_SIDECAR_IMAGE"):
    c.ConsulSpawner.sidecar_image = env("CONSULSPAWNER_SIDECAR_IMAGE")
if env("CONSULSPAWNER_SIDECAR_COMMAND"):
    c.ConsulSpawner.sidecar_command = json.loads(env("CONSULSPAWNER_SIDECAR_COMMAND"))
if env("CONSULSPAWNER_ORPHAN_SWEEP_DELAY"):
    c.ConsulSpawner.orphan_sweep_delay = float(env("CONSULSPAWNER_ORPHAN_SWEEP_DELAY"))
if env("CONSULSPAWNER_CHECK_INTERVAL"):
    c.JupyterHub.last_activity_interval = int(env("CONSULSPAWNER_CHECK_INTERVAL"))
    c.Spawner.poll_interval = int(env("CONSULSPAWNER_CHECK_INTERVAL"))

# Timeouts: a busy small machine needs more than the defaults (scripts/demo.py sets these).
for variable, section, trait in (
    ("CONSULSPAWNER_START_TIMEOUT", "Spawner", "start_timeout"),
    ("CONSULSPAWNER_HTTP_TIMEOUT", "Spawner", "http_timeout"),
    ("CONSULSPAWNER_SIDECAR_READY_TIMEOUT", "ConsulSpawner", "sidecar_ready_timeout"),
    ("CONSULSPAWNER_CONSUL_REQUEST_TIMEOUT", "ConsulSpawner", "consul_request_timeout"),
):
    if env(variable):
        setattr(c[section], trait, float(env(variable)) if section == "ConsulSpawner" else int(env(variable)))
if env("CONSULSPAWNER_AUDIT_LOG"):
    c.JupyterHub.logging_config = {
        "formatters": {"audit": {"format": "%(message)s"}},
        "handlers": {
            "audit_file": {
                "class": "logging.handlers.WatchedFileHandler",
                "filename": env("CONSULSPAWNER_AUDIT_LOG"),
                "formatter": "audit",
                "level": "INFO",
            },
        },
        "loggers": {"consulspawner.audit": {"handlers": ["audit_file"], "level": "INFO", "propagate": False}},
    }

services, roles = [], []
if env("CONSULSPAWNER_CULL_TIMEOUT"):
    services.append(
        {
            "name": "idle-culler",
            "command": [
                sys.executable,
                "-m",
                "jupyterhub_idle_culler",
                f"--timeout={env('CONSULSPAWNER_CULL_TIMEOUT')}",
                f"--cull-every={env('CONSULSPAWNER_CULL_EVERY', '60')}",
            ],
        }
    )
    roles.append(
        {
            "name": "idle-culler",
            "scopes": ["list:users", "read:users:activity", "read:servers", "delete:servers"],
            "services": ["idle-culler"],
        }
    )
admin_service_token = env("CONSULSPAWNER_ADMIN_SERVICE_TOKEN")
if env("CONSULSPAWNER_ADMIN_SERVICE_TOKEN_FILE"):
    with open(env("CONSULSPAWNER_ADMIN_SERVICE_TOKEN_FILE")) as f:
        admin_service_token = f.read().strip()
if admin_service_token:
    services.append({"name": "test-admin", "api_token": admin_service_token})
    roles.append(
        {
            "name": "test-admin",
            "scopes": ["admin:users", "admin:servers", "users:activity", "read:metrics"],
            "services": ["test-admin"],
        }
    )
if env("CONSULSPAWNER_JANITOR_TOKEN_FILE"):
    # The janitor needs only Consul; run by the hub here for convenience, it keeps working
    # (as its own process or container) when the hub is gone. Its token comes from a file.
    services.append(
        {
            "name": "consul-janitor",
            "command": [
                sys.executable,
                "-m",
                "consulspawner.janitor",
                "--interval",
                "30",
                "--hub-instance",
                c.ConsulSpawner.hub_instance,
                "--token-file",
                env("CONSULSPAWNER_JANITOR_TOKEN_FILE"),
            ],
            "environment": {"CONSUL_HTTP_ADDR": env("CONSUL_HTTP_ADDR", "")},
        }
    )
c.JupyterHub.services = services
c.JupyterHub.load_roles = roles
