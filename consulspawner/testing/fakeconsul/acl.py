"""ACL resolution and the authorizer a token grants, with Consul's error texts.

Sources: ``acl/errors.go`` (error strings, ``PermissionDeniedError.Error`` format),
``acl/resource_descriptor_ce.go`` (a resource name is printed in double quotes),
``agent/structs/acl_templated_policy_ce.go`` / ``aclPolicyTemplateServiceIdentity`` (what a
service identity grants), ``acl/policy_authorizer.go`` (a ``service`` rule with read or write
implies ``intentions = "read"``) and ``agent/structs/acl.go`` (the global-management policy).
"""

from __future__ import annotations

ANONYMOUS_ACCESSOR = "00000000-0000-0000-0000-000000000002"
GLOBAL_MANAGEMENT_ID = "00000000-0000-0000-0000-000000000001"
GLOBAL_MANAGEMENT_NAME = "global-management"

ACL_NOT_FOUND = "ACL not found"  # acl.ErrNotFound
PERMISSION_DENIED = "Permission denied"  # acl.ErrPermissionDenied (no details)
ACL_DISABLED = "ACL support disabled"  # agent/acl_endpoint.go aclDisabled (401)


class ConsulError(Exception):
    """An HTTP error answer, written as Consul writes it: a status and a plain-text body."""

    def __init__(self, status: int, text: str, headers: dict | None = None):
        super().__init__(text)
        self.status = status
        self.text = text
        self.headers = headers or {}


def not_found_acl() -> ConsulError:
    # agent/http.go: acl.IsErrNotFound errors are "forbidden" -> 403 with the error text.
    return ConsulError(403, ACL_NOT_FOUND)


class Authorizer:
    """What one resolved token may do (the subset of Consul's rule kinds this fake needs)."""

    def __init__(self, accessor: str, management: bool = False, services: tuple[str, ...] = ()):
        self.accessor = accessor
        self.management = management
        # Service identities grant write on <name> and <name>-sidecar-proxy.
        self.service_write_names = set()
        for name in services:
            self.service_write_names.add(name)
            self.service_write_names.add(name + "-sidecar-proxy")
        # ...and read on every service and node (service_prefix "" / node_prefix "" read).
        self.read_all = management or bool(services)

    # ---- decisions ----
    def service_read(self, name: str) -> bool:
        return self.read_all

    def service_write(self, name: str) -> bool:
        return self.management or name in self.service_write_names

    def node_read(self, name: str = "") -> bool:
        return self.read_all

    def node_write(self, name: str = "") -> bool:
        return self.management

    def agent_read(self, name: str = "") -> bool:
        return self.management

    def intention_read(self, name: str) -> bool:
        # policy_authorizer.go: service read/write implies intentions read.
        return self.read_all

    def intention_write(self, name: str) -> bool:
        return self.management

    def acl_read(self) -> bool:
        return self.management

    def acl_write(self) -> bool:
        return self.management

    def mesh_write(self) -> bool:
        return self.management

    def operator_write(self) -> bool:
        return self.management

    # ---- errors ----
    def denied(self, resource: str, level: str, name: str | None = None) -> ConsulError:
        """acl.PermissionDeniedError.Error() for this token, resource, access level and name."""
        msg = PERMISSION_DENIED
        if self.accessor == ANONYMOUS_ACCESSOR:
            msg += ": anonymous token"
        else:
            msg += f": token with AccessorID '{self.accessor}'"
        msg += f" lacks permission '{resource}:{level}'"
        if name:
            msg += f' on "{name}"'
        if self.accessor == ANONYMOUS_ACCESSOR:
            msg += ". The anonymous token is used implicitly when a request does not specify a token."
        return ConsulError(403, msg)

    def require(self, allowed: bool, resource: str, level: str, name: str | None = None) -> None:
        if not allowed:
            raise self.denied(resource, level, name)


ALLOW_ALL = Authorizer("", management=True)
