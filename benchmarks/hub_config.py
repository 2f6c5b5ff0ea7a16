"""JupyterHub config of figure 1 (a): the repo's settings, the spawner class from
$CSBENCH_SPAWNER (DockerSpawner or ConsulSpawner), so the two hubs differ only in the class."""

import json
import os

c = get_config()  # noqa: F821 (JupyterHub provides it)
env = os.environ.get
kind = env("CSBENCH_SPAWNER", "ConsulSpawner")
c.JupyterHub.spawner_class = "docker" if kind == "DockerSpawner" else "consulspawner.ConsulSpawner"
c.JupyterHub.authenticator_class = "dummy"
c.Authenticator.allow_all = True
c.JupyterHub.bind_url = f"http://127.0.0.1:{env('CSBENCH_PROXY_PORT')}"
c.JupyterHub.hub_ip = env("CSBENCH_HUB_IP")
c.JupyterHub.hub_port = int(env("CSBENCH_HUB_PORT"))
c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{env('CSBENCH_PROXY_API_PORT')}"
c.JupyterHub.cleanup_servers = True
c.DockerSpawner.image = env("CSBENCH_NOTEBOOK_IMAGE")
# Figure 6's --minimal-notebook: a server that costs no CPU to start (JSON list), to tell the
# mesh's own time apart from ten jupyterhub-singleuser starts competing for two cores.
c.DockerSpawner.cmd = json.loads(env("CSBENCH_NOTEBOOK_CMD") or '["jupyterhub-singleuser"]')
c.DockerSpawner.network_name = env("CSBENCH_NETWORK")
c.DockerSpawner.use_internal_ip = True
c.DockerSpawner.remove = True
c.DockerSpawner.pull_policy = "never"
c.ConsulSpawner.consul_address = env("CSBENCH_CONSUL")
c.ConsulSpawner.consul_token = env("CSBENCH_CONSUL_TOKEN")
c.ConsulSpawner.hub_instance = "csbench-hub"
c.ConsulSpawner.sidecar_image = env("CSBENCH_SIDECAR_IMAGE")
c.ConsulSpawner.sidecar_command = json.loads(env("CSBENCH_SIDECAR_COMMAND"))
if env("CSBENCH_SIDECAR_CPU_SHARES"):  # figure 6's --sidecar-cpu-shares (else the default)
    c.ConsulSpawner.sidecar_cpu_shares = int(env("CSBENCH_SIDECAR_CPU_SHARES"))
c.JupyterHub.services = [{"name": "csbench-admin", "api_token": env("CSBENCH_ADMIN_TOKEN")}]
c.JupyterHub.load_roles = [
    {"name": "csbench-admin", "scopes": ["admin:users", "admin:servers"], "services": ["csbench-admin"]}
]
# Figure 6 spawns ten servers at once on a small machine.
c.Spawner.start_timeout = int(env("CSBENCH_START_TIMEOUT", "60"))
c.Spawner.http_timeout = int(env("CSBENCH_START_TIMEOUT", "30"))
