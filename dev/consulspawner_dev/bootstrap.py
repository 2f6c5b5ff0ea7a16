"""What an operator does once per hub, for the tests, the demo and the benchmarks.

With a management token (held by the operator's bootstrap, never by a process of ours):
create the hub's JWT auth method and binding rule, and the hub's and the janitor's policies and
tokens from docker/consul/*-policy.hcl. Production does the same with the ``consul`` CLI
(docker/stack/consul/acl-init.sh); this module is the same steps through the HTTP API.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from consulspawner import identity
from consulspawner.consul import ConsulClient

POLICY_DIR = Path(__file__).resolve().parents[2] / "docker" / "consul"


def write_signing_key(path: str | os.PathLike) -> str:
    """A new EC P-256 signing key at ``path``, created 0600 (never readable by others, not even
    for an instant), unless a key is already there."""
    path = os.fspath(path)
    if os.path.exists(path):
        return path
    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    return path


async def bootstrap_identity(
    admin: ConsulClient,
    *,
    hub_instance: str,
    key_file: str,
    auth_method: str | None = None,
    audience: str = "consul",
    prefix: str = "jupyter-",
    token_lifetime: int = 3600,
) -> str:
    """Create (or update) the hub's auth method and its binding rule; returns the method's name."""
    name = auth_method or f"consulspawner-{hub_instance}"
    signer = identity.Signer.from_file(key_file)
    method = identity.auth_method(
        name,
        hub_instance=hub_instance,
        audience=audience,
        public_pem=signer.public_pem(),
        token_lifetime=token_lifetime,
    )
    existing = await admin.request("GET", f"/v1/acl/auth-method/{name}", ok=(200, 403, 404))
    if existing.status == 200:
        await admin.request("PUT", f"/v1/acl/auth-method/{name}", body=method)
    else:
        await admin.request("PUT", "/v1/acl/auth-method", body=method)
    rule = identity.binding_rule(name, hub_instance=hub_instance, prefix=prefix)
    rules = (await admin.request("GET", "/v1/acl/binding-rules", params={"authmethod": name})).body or []
    if not any(r.get("BindName") == rule["BindName"] and r.get("Selector") == rule["Selector"] for r in rules):
        await admin.request("PUT", "/v1/acl/binding-rule", body=rule)
    return name


async def policy_token(admin: ConsulClient, role: str, *, description: str = "") -> str:
    """A token of the shipped least-privilege policy docker/consul/<role>-policy.hcl ("hub" or
    "janitor"); returns its secret, which callers keep in a 0600 file."""
    name = f"consulspawner-{role}"
    rules = (POLICY_DIR / f"{role}-policy.hcl").read_text()
    existing = await admin.request("GET", f"/v1/acl/policy/name/{name}", ok=(200, 403, 404))
    if existing.status != 200:
        await admin.request("PUT", "/v1/acl/policy", body={"Name": name, "Rules": rules})
    token = await admin.request(
        "PUT",
        "/v1/acl/token",
        body={"Description": description or f"consulspawner {role}", "Policies": [{"Name": name}]},
    )
    return token.body["SecretID"]
