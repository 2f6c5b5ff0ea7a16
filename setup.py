"""consulspawner: JupyterHub servers as short-lived members of a Consul Connect service mesh."""

from setuptools import find_packages, setup

setup(
    name="consulspawner",
    version="0.1.0",
    description=(
        "A DockerSpawner that registers each notebook server in Consul Connect with a "
        "least-privilege token, a sidecar and an intention that live only as long as the server"
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["consulspawner", "consulspawner.*"]),
    # The development stand-ins (fake Consul agent, Connect proxy, Trino) are a second
    # distribution, dev/setup.py: the demo and the test command install both.
    # What production needs, and nothing else: the hub talks to Consul through our own small
    # aiohttp client (consulspawner/consul.py).
    install_requires=[
        "aiohttp>=3.9,<4",
        "dockerspawner>=13,<15",
        "jupyterhub>=5,<7",
        # Metrics in the registry the hub serves at /hub/metrics (JupyterHub depends on it too).
        "prometheus_client>=0.17",
        "traitlets>=5.9",
        "tornado>=6.2",
    ],
    extras_require={
        "test": [
            "cryptography>=41",
            "pytest>=8",
            "pytest-asyncio>=0.23",
            "hypothesis>=6.100",
            "jupyterhub-idle-culler>=1.4",
            "ruff>=0.5",
            "mypy>=1.8",
            # py-consul, not python-consul2: the fake agent's own tests go through a real
            # third-party Consul client, so the fake is checked against more than our client.
            "py-consul[asyncio]>=1.8,<2",
            # The official Trino client, driving the Trino stand-in through the mesh.
            "trino>=0.330",
        ],
    },
    entry_points={
        "console_scripts": [
            "consulspawner-janitor = consulspawner.janitor:main",
            "consulspawner-reach = consulspawner.reach:main",
        ],
        # spawner_class = "consul", and `jupyterhub --help-all` lists every ConsulSpawner trait.
        "jupyterhub.spawners": [
            "consul = consulspawner.spawner:ConsulSpawner",
        ],
    },
)
