"""consulspawner-dev: the development stand-ins (fake Consul agent, Connect proxy, Trino).

A second distribution in the same repository, so that ``pip install consulspawner`` installs
only what a hub needs. The test command and the demo install both (``-e . -e ./dev``).
"""

from setuptools import find_packages, setup

setup(
    name="consulspawner-dev",
    version="0.1.0",
    description="Development stand-ins for consulspawner: fake Consul agent, Connect proxy, Trino",
    python_requires=">=3.10",
    packages=find_packages(include=["consulspawner_dev", "consulspawner_dev.*"]),
    install_requires=["consulspawner", "aiohttp>=3.9,<4", "cryptography>=41"],
)
