"""An operator's Consul client for the tests, the demo and the benchmarks: what the product never
does (create, read, list and delete ACL tokens with a management or acl-holding token)."""

from __future__ import annotations

from consulspawner.consul import ConsulClient, ConsulError, ConsulResponse, _segment, _token_gone


class AdminClient(ConsulClient):
    """:class:`ConsulClient` plus the ACL token calls an operator makes (the product's hub and
    janitor hold no ``acl`` right: their servers' tokens come from login)."""

    async def create_service_token(
        self,
        service_name: str,
        description: str,
        ttl_seconds: int,
        *,
        accessor_id: str | None = None,
        secret_id: str | None = None,
    ) -> dict:
        """Mint a token whose only grant is the service identity of ``service_name``.

        A service identity gives write on that service and its sidecar and read on services and
        nodes (docs: security/acl/acl-roles#service-identities): exactly what a sidecar needs.
        ``accessor_id``/``secret_id`` (UUIDs) let the caller know the token before Consul
        answers (docs: api-docs/acl/tokens#create-a-token), so a lost answer is not a lost token.
        """
        body = {
            "Description": description,
            "ServiceIdentities": [{"ServiceName": service_name}],
            "ExpirationTTL": f"{int(ttl_seconds)}s",
        }
        if accessor_id:
            body["AccessorID"] = accessor_id
        if secret_id:
            body["SecretID"] = secret_id
        return (await self.request("PUT", "/v1/acl/token", body=body)).body

    async def _token_call(self, method: str, accessor_id: str) -> ConsulResponse | None:
        """A call on one token; None when the token does not exist (any more)."""
        path = f"/v1/acl/token/{_segment(accessor_id)}"
        try:
            return await self.request(method, path, ok=(200,))
        except ConsulError as e:
            # Consul answers 404 for an unknown accessor, and 403 "ACL not found" where the
            # lookup itself fails; a plain "Permission denied" is a real error and is raised.
            if _token_gone(e):
                return None
            raise

    async def read_token(self, accessor_id: str) -> dict | None:
        response = await self._token_call("GET", accessor_id)
        return None if response is None else response.body

    async def delete_token(self, accessor_id: str) -> bool:
        """Delete a token; False when it was already gone (expired or deleted)."""
        response = await self._token_call("DELETE", accessor_id)
        return response is not None and response.body is not False

    async def list_tokens(self, *, service_name: str | None = None) -> list[dict]:
        """ACL tokens; with ``service_name`` only those with that service identity, filtered by
        Consul (``?servicename=``, docs: api-docs/acl/tokens#list-tokens)."""
        params = {"servicename": service_name} if service_name else None
        return (await self.request("GET", "/v1/acl/tokens", params=params)).body or []
