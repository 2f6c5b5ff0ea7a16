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

    # ------------------------------------------------------------------ auth methods, binding rules, login
    # agent/acl_endpoint.go ACLAuthMethod* / ACLBindingRule* / ACLLogin / ACLLogout.
    async def acl_auth_method_create(self, request, _rest):
        self._acl_enabled_or_401()
        body = await self._body(request, "AuthMethod decoding failed")
        return json_response(self.state.auth_method_set(body, request_token(request)))

    async def acl_auth_method_crud(self, request, name):
        self._acl_enabled_or_401()
        token = request_token(request)
        if not name and request.method != "PUT":
            raise ConsulError(400, "Missing auth method name")
        if request.method == "GET":
            index, body = await self._block(request, lambda: self.state.auth_method_read(name, token))
            return json_response(body, headers=self._meta_headers(index))
        if request.method == "DELETE":
            return json_response(self.state.auth_method_delete(name, token))
        body = await self._body(request, "AuthMethod decoding failed")
        return json_response(self.state.auth_method_set(body, token, name_in_url=name))

    async def acl_auth_methods(self, request, _rest):
        self._acl_enabled_or_401()
        token = request_token(request)
        index, body = await self._block(request, lambda: self.state.auth_method_list(token))
        return json_response(body, headers=self._meta_headers(index))

    async def acl_binding_rule_create(self, request, _rest):
        self._acl_enabled_or_401()
        body = await self._body(request, "BindingRule decoding failed")
        return json_response(self.state.binding_rule_set(body, request_token(request)))

    async def acl_binding_rule_crud(self, request, rule_id):
        self._acl_enabled_or_401()
        token = request_token(request)
        if not rule_id and request.method != "PUT":
            raise ConsulError(400, "Missing binding rule ID")
        if request.method == "GET":
            index, body = await self._block(request, lambda: self.state.binding_rule_read(rule_id, token))
            return json_response(body, headers=self._meta_headers(index))
        if request.method == "DELETE":
            return json_response(self.state.binding_rule_delete(rule_id, token))
        body = await self._body(request, "BindingRule decoding failed")
        return json_response(self.state.binding_rule_set(body, token, rule_id_in_url=rule_id))

    async def acl_binding_rules(self, request, _rest):
        self._acl_enabled_or_401()
        token = request_token(request)
        method = request.query.get("authmethod", "")
        index, body = await self._block(request, lambda: self.state.binding_rule_list(token, method))
        return json_response(body, headers=self._meta_headers(index))

    async def acl_login(self, request, _rest):
        # ACLLogin never calls parseToken: a token on the request is not looked at at all, so
        # the RPC's "do not provide a token when logging in" cannot trigger over HTTP.
        self._acl_enabled_or_401()
        body = await self._body(request, "Failed to decode request body")
        return json_response(self.state.login(body))

    async def acl_logout(self, request, _rest):
        self._acl_enabled_or_401()
        return json_response(self.state.logout(request_token(request)))

    async def acl_authorize(self, request, _rest):
        """``POST /v1/internal/acl/authorize`` (agent/acl_endpoint.go ACLAuthorize and
        agent/structs/acl.go CreateACLAuthorizationResponses): at most 64 checks, each
        ``{Resource, Segment, Access}``, answered with ``Allow`` for the request's own token."""
        self._acl_enabled_or_401()
        body = await self._body(request, "Failed to decode request body")
        if not isinstance(body, list):
            raise ConsulError(400, "Failed to decode request body: expected a list of authorizations")
        if len(body) > 64:
            raise ConsulError(400, "Refusing to process more than 64 authorizations at once")
        authz = self.state.resolve(request_token(request))
        answers = []
        for check in body:
            resource, segment, access = (check.get(k, "") for k in ("Resource", "Segment", "Access"))
            answers.append({**check, "Allow": _authorize(authz, resource, segment, access)})
        return json_response(answers)

    @staticmethod
    def acl_routes(app) -> list:
        """The ACL endpoints' routes (agent/http_register.go), for the dispatcher's table."""
        return [
            ("/v1/acl/token", ["PUT"], app.acl_token_create),
            ("/v1/acl/token/self", ["GET"], app.acl_token_self),
            ("/v1/acl/token/", ["GET", "PUT", "DELETE"], app.acl_token_crud),
            ("/v1/acl/tokens", ["GET"], app.acl_tokens),
            ("/v1/acl/policy", ["PUT"], app.acl_policy_create),
            ("/v1/acl/policy/", ["GET", "PUT", "DELETE"], app.acl_policy_crud),
            ("/v1/acl/policy/name/", ["GET"], app.acl_policy_by_name),
            ("/v1/acl/policies", ["GET"], app.acl_policies),
            ("/v1/acl/auth-method", ["PUT"], app.acl_auth_method_create),
            ("/v1/acl/auth-method/", ["GET", "PUT", "DELETE"], app.acl_auth_method_crud),
            ("/v1/acl/auth-methods", ["GET"], app.acl_auth_methods),
            ("/v1/acl/binding-rule", ["PUT"], app.acl_binding_rule_create),
            ("/v1/acl/binding-rule/", ["GET", "PUT", "DELETE"], app.acl_binding_rule_crud),
            ("/v1/acl/binding-rules", ["GET"], app.acl_binding_rules),
            ("/v1/acl/login", ["POST"], app.acl_login),
            ("/v1/acl/logout", ["POST"], app.acl_logout),
            ("/v1/internal/acl/authorize", ["POST"], app.acl_authorize),
        ]


# Segmented resources need a Segment, the others refuse one (CreateACLAuthorizationResponses).
_SEGMENTED = {"agent", "intention", "node", "service"}
_UNSEGMENTED = {"acl", "operator", "mesh"}


def _authorize(authz, resource: str, segment: str, access: str) -> bool:
    if access not in ("read", "write"):
        raise ConsulError(400, f"Invalid access level for {resource} resource: {access}")
    if resource in _SEGMENTED:
        if not segment:
            raise ConsulError(400, f"Authorization request for {resource} resource is missing a segment")
        return getattr(authz, f"{resource}_{access}")(segment)
    if resource in _UNSEGMENTED:
        if segment:
            raise ConsulError(400, f"Authorization request for {resource} resource does not allow a segment")
        return getattr(authz, f"{resource}_{access}")()
    raise ConsulError(400, f"Invalid resource: {resource}")
