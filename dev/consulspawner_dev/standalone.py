"""A ConsulSpawner outside a hub, built as JupyterHub builds one (for tests and benchmarks).

The user is a minimal stand-in with what DockerSpawner and Spawner read (name, url, id);
there is no database, so nothing calls back into a hub.
"""

from __future__ import annotations

import uuid
from types import SimpleNamespace

from jupyterhub.objects import Hub
from traitlets.config import Config

from consulspawner.spawner import ConsulSpawner


def standalone_spawner(user_name: str, **settings) -> ConsulSpawner:
    """A ConsulSpawner for ``user_name`` configured with ``settings`` (trait name -> value)."""
    config = Config()
    for key, value in settings.items():
        setattr(config.ConsulSpawner, key, value)
    user = SimpleNamespace(name=user_name, url=f"/user/{user_name}/", escaped_name=user_name, id=1, settings={})
    return ConsulSpawner(
        user=user,
        hub=Hub(),
        config=config,
        api_token=uuid.uuid4().hex,
        oauth_client_id=f"jupyterhub-user-{user_name}",
    )
