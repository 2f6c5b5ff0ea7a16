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
    python_requires=">=3.10",
    packages=find_packages(include=["consulspawner", "consulspawner.*"]),
    install_requires=[
        # py-consul, not python-consul2: both install the top-level `consul` package, and only
        # py-consul has sidecar registration, intentions/exact and cas=0 on config writes.
        "py-consul[asyncio]>=1.8,<2",
        "aiohttp>=3.9,<4",
        "dockerspawner>=13,<15",
        "jupyterhub>=5,<7",
        "traitlets>=5.9",
        "tornado>=6.2",
        "cryptography>=41",
    ],
    extras_require={
        "test": [
            "pytest>=8",
            "pytest-asyncio>=0.23",
            "hypothesis>=6.100",
            "jupyterhub-idle-culler>=1.4",
            "ruff>=0.5",
        ],
    },
    entry_points={
        "console_scripts": [
            "consulspawner-janitor = consulspawner.janitor:main",
        ],
    },
)
