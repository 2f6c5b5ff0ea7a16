"""HTTP handlers of the fake agent's ACL endpoints (``agent/acl_endpoint.go``).

Also the small response helpers every handler uses, and ``agent/http.go`` ``parseTokenInternal``.
"""

from __future__ import annotations

import json
import urllib.parse

from aiohttp import web

from .acl import ConsulError


def json_response(obj, status: int = 200, headers: dict | None = None) -> web.Response:
    return web.Response(
        body=json.dumps(obj).encode(), status=status, content_type="application/json", headers=headers or {}
    )


def text_response(text: str, status: int, headers: dict | None = None) -> web.Response:
    return web.Response(text=text, status=status, content_type="text/plain", headers=headers or {})


def request_token(request: web.Request) -> str:
    """agent/http.go parseTokenInternal: ?token=, then X-Consul-Token, then Authorization: Bearer."""
    if request.query.get("token"):
        return request.query["token"]
    if request.headers.get("X-Consul-Token"):
        return request.headers["X-Consul-Token"]
    auth = request.headers.get("Authorization", "")
    parts = auth.split(" ")
    if len(parts) > 1 and parts[0].lower() == "bearer":
        return " ".join(parts[1:]).strip().split(" ")[0]
    return ""


class AclRoutes:
    """The ACL handlers of the request dispatcher (mixed into ``App``)."""

    # ------------------------------------------------------------------ ACL
    async def acl_token_create(self, request, _rest):
        if not self.state.acl_enabled:
            raise ConsulError(401, "ACL support disabled")
        body = await self._body(request, "Token decoding failed")
        if not isinstance(body, dict):
            raise ConsulError(
                400, "Token decoding failed: json: cannot unmarshal into Go value of type structs.ACLToken"
            )
        return json_response(self.state.acl_token_create(body, request_token(request)))

    async def acl_token_self(self, request, _rest):
        index, body = self.state.acl_token_self(request_token(request))
        return json_response(body, headers=self._meta_headers(index))

    async def acl_token_crud(self, request, accessor):
        if not self.state.acl_enabled:
            raise ConsulError(401, "ACL support disabled")
        token = request_token(request)
        if not accessor and request.method != "PUT":
            raise ConsulError(400, "Missing token AccessorID")
        if request.method == "GET":
            index, body = self.state.acl_token_read(accessor, token)
            return json_response(body, headers=self._meta_headers(index))
        if request.method == "DELETE":
            return json_response(self.state.acl_token_delete(accessor, token))
        body = await self._body(request, "Token decoding failed")
        return json_response(self.state.acl_token_create(body, token, accessor_in_url=accessor))

    async def acl_tokens(self, request, _rest):
        token = request_token(request)
        if not self.state.acl_enabled:
            raise ConsulError(401, "ACL support disabled")
        # agent/acl_endpoint.go ACLTokenList: ?policy, ?role, ?authmethod, ?servicename.
        filters = {k: request.query.get(k, "") for k in ("policy", "role", "authmethod", "servicename")}
        index, body = await self._block(request, lambda: self.state.acl_token_list(token, **filters))
        return json_response(body, headers=self._meta_headers(index))

    # ------------------------------------------------------------------ ACL policies
    # agent/acl_endpoint.go ACLPolicyCreate / ACLPolicyCRUD / ACLPolicyReadByName / ACLPolicyList.
    def _acl_enabled_or_401(self) -> None:
        if not self.state.acl_enabled:
            raise ConsulError(401, "ACL support disabled")

    async def acl_policy_create(self, request, _rest):
        self._acl_enabled_or_401()
        body = await self._body(request, "Policy decoding failed")
        return json_response(self.state.acl_policy_set(body, request_token(request)))

    async def acl_policy_crud(self, request, policy_id):
        self._acl_enabled_or_401()
        token = request_token(request)
        if not policy_id and request.method != "PUT":
            raise ConsulError(400, "Missing policy ID")
        if request.method == "GET":
            index, body = await self._block(request, lambda: self.state.acl_policy_read(token, policy_id=policy_id))
            return json_response(body, headers=self._meta_headers(index))
        if request.method == "DELETE":
            return json_response(self.state.acl_policy_delete(policy_id, token))
        body = await self._body(request, "Policy decoding failed")
        return json_response(self.state.acl_policy_set(body, token, policy_id=policy_id))

    async def acl_policy_by_name(self, request, name):
        self._acl_enabled_or_401()
        if not name:
            raise ConsulError(400, "Missing policy Name")
        token = request_token(request)
        name = urllib.parse.unquote(name)  # ACLPolicyRead: url.QueryUnescape
        index, body = await self._block(request, lambda: self.state.acl_policy_read(token, name=name))
        return json_response(body, headers=self._meta_headers(index))

    async def acl_policies(self, request, _rest):
        self._acl_enabled_or_401()
        token = request_token(request)
        index, body = await self._block(request, lambda: self.state.acl_policy_list(token))
        return json_response(body, headers=self._meta_headers(index))
