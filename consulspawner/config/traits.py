"""Every trait of ConsulSpawner in one mixin, and the settings the mesh plan is built from."""

from __future__ import annotations

from .connection import ConnectionConfig
from .containers import ContainerConfig
from .lifetimes import LifetimeConfig
from .mesh import MeshConfig
from .settings import MeshSettings, upstreams_from


class ConsulSpawnerConfig(ConnectionConfig, MeshConfig, ContainerConfig, LifetimeConfig):
    """The traits ConsulSpawner adds to DockerSpawner (``c.ConsulSpawner.<name>``)."""

    def mesh_settings(self) -> MeshSettings:
        """The traits as :class:`MeshSettings`; ValueError when they do not fit together (the
        cross-checks of MeshSettings: distinct upstream ports, intention TTL >= check TTL)."""
        return MeshSettings(
            hub_instance=self.hub_instance,
            name_template=self.service_name_template,
            upstreams=upstreams_from(self.upstreams),
            intention_destinations=tuple(self.intention_destinations),
            intention_mode=self.intention_mode.upper(),
            trino_destination=self.trino_destination,
            check_ttl=self.check_ttl,
            deregister_critical_after=self.deregister_critical_after,
            token_ttl=self.token_ttl,
            intention_ttl=self.intention_ttl,
            sidecar_port=self.sidecar_port,
        )
