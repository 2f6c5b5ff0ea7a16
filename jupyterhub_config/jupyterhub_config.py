"""JupyterHub with ConsulSpawner, configured from the environment.

Used by scripts/demo.sh (a dev Consul agent and local images) and by the end-to-end test. A
production hub takes the same shape with its own authenticator and real Consul address.

Environment:
  CONSUL_HTTP_ADDR            Consul address for the hub (default http://127.0.0.1:8500)
  CONSUL_HTTP_TOKEN           the hub's Consul token (read by ConsulSpawner, never logged)
  CONSULSPAWNER_SIDECAR_CONSUL_ADDR  Consul address as containers see it
  CONSULSPAWNER_NETWORK       Docker network of notebooks (default consulspawner)
  CONSULSPAWNER_HUB_IP        address the hub API binds and containers connect to
  CONSULSPAWNER_HUB_PORT      hub API port (default 8081)
  CONSULSPAWNER_PROXY_PORT    public port (default 8000)
  CONSULSPAWNER_NOTEBOOK_IMAGE, CONSULSPAWNER_SIDECAR_IMAGE, CONSULSPAWNER_SIDECAR_COMMAND (JSON list)
  CONSULSPAWNER_HUB_INSTANCE  hub_instance (default jupyterhub)
  CONSULSPAWNER_CULL_TIMEOUT, CONSULSPAWNER_CULL_EVERY  idle culler (seconds; unset: no culler)
  CONSULSPAWNER_ADMIN_SERVICE_TOKEN  API token of an admin service (tests drive the hub with it)
  CONSULSPAWNER_INTENTION_MODE  L4 or L7
  CONSULSPAWNER_JANITOR       set: run consulspawner-janitor as a hub-managed service
  CONSULSPAWNER_ORPHAN_SWEEP_DELAY  seconds after start before the hub revokes what no server holds
"""

import json
import os
import sys

c = get_config()  # noqa: F821 (provided by JupyterHub when it loads this file)
env = os.environ.get

c.JupyterHub.spawner_class = "consulspawner.ConsulSpawner"
c.JupyterHub.authenticator_class = "dummy"
c.Authenticator.allow_all = True
c.JupyterHub.bind_url = f"http://127.0.0.1:{env('CONSULSPAWNER_PROXY_PORT', '8000')}"
c.JupyterHub.hub_ip = env("CONSULSPAWNER_HUB_IP", "127.0.0.1")
c.JupyterHub.hub_port = int(env("CONSULSPAWNER_HUB_PORT", "8081"))
c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{env('CONSULSPAWNER_PROXY_API_PORT', '8001')}"
c.JupyterHub.cleanup_servers = False  # servers (and their mesh membership) survive hub restarts
c.JupyterHub.allow_named_servers = True  # each named server is its own Consul service and identity

c.ConsulSpawner.image = env("CONSULSPAWNER_NOTEBOOK_IMAGE", "consulspawner/notebook:latest")
c.ConsulSpawner.cmd = ["jupyterhub-singleuser"]
c.ConsulSpawner.network_name = env("CONSULSPAWNER_NETWORK", "consulspawner")
c.ConsulSpawner.use_internal_ip = True
c.ConsulSpawner.remove = True
c.ConsulSpawner.pull_policy = "never"
c.ConsulSpawner.hub_instance = env("CONSULSPAWNER_HUB_INSTANCE", "jupyterhub")
c.ConsulSpawner.intention_mode = env("CONSULSPAWNER_INTENTION_MODE", "L4")
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

services, roles = [], []
if env("CONSULSPAWNER_CULL_TIMEOUT"):
    services.append({
        "name": "idle-culler",
        "command": [
            sys.executable, "-m", "jupyterhub_idle_culler",
            f"--timeout={env('CONSULSPAWNER_CULL_TIMEOUT')}",
            f"--cull-every={env('CONSULSPAWNER_CULL_EVERY', '60')}",
        ],
    })
    roles.append({
        "name": "idle-culler",
        "scopes": ["list:users", "read:users:activity", "read:servers", "delete:servers"],
        "services": ["idle-culler"],
    })
if env("CONSULSPAWNER_ADMIN_SERVICE_TOKEN"):
    services.append({"name": "test-admin", "api_token": env("CONSULSPAWNER_ADMIN_SERVICE_TOKEN")})
    roles.append({"name": "test-admin", "scopes": ["admin:users", "admin:servers", "users:activity"],
                  "services": ["test-admin"]})
if env("CONSULSPAWNER_JANITOR"):
    # The janitor needs only Consul; run by the hub here for convenience, it keeps working
    # (as its own process or container) when the hub is gone.
    services.append({
        "name": "consul-janitor",
        "command": [sys.executable, "-m", "consulspawner.janitor", "--interval", "30",
                    "--hub-instance", c.ConsulSpawner.hub_instance],
        "environment": {key: env(key, "") for key in ("CONSUL_HTTP_ADDR", "CONSUL_HTTP_TOKEN")},
    })
c.JupyterHub.services = services
c.JupyterHub.load_roles = roles
