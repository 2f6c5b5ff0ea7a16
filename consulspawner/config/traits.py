"""Every trait of ConsulSpawner in one mixin, and the settings the mesh plan is built from."""

from __future__ import annotations

from .connection import ConnectionConfig
from .containers import ContainerConfig
from .identity import IdentityConfig
from .lifetimes import LifetimeConfig
from .mesh import MeshConfig
from .settings import MeshSettings, upstreams_from


class ConsulSpawnerConfig(ConnectionConfig, IdentityConfig, MeshConfig, ContainerConfig, LifetimeConfig):
    """The traits ConsulSpawner adds to DockerSpawner (``c.ConsulSpawner.<name>``)."""

    def mesh_settings(self) -> MeshSettings:
        """The traits as :class:`MeshSettings`; ValueError when they do not fit together (the
        cross-checks of MeshSettings: distinct upstream ports, intention TTL >= check TTL)."""
        if not self.service_name_template.startswith(self.service_prefix):
            # The binding rule binds only <service_prefix>*: any other name could never log in.
            raise ValueError(
                f"c.ConsulSpawner.service_name_template {self.service_name_template!r} must start with "
                f"c.ConsulSpawner.service_prefix {self.service_prefix!r} (the auth method's binding rule "
                "and the hub policy's service_prefix rule are fixed to it)"
            )
        return MeshSettings(
            hub_instance=self.hub_instance,
            name_template=self.service_name_template,
            upstreams=upstreams_from(self.upstreams),
            intention_destinations=tuple(self.intention_destinations),
            intention_mode=self.intention_mode.upper(),
            trino_destination=self.trino_destination,
            check_ttl=self.check_ttl,
            deregister_critical_after=self.deregister_critical_after,
            intention_ttl=self.intention_ttl,
            sidecar_port=self.sidecar_port,
        )
