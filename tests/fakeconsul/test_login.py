"""The jwt auth method, binding rules, login and logout, as Consul's source does them.

Sources (hashicorp/consul): agent/acl_endpoint.go (HTTP handlers: ACLLogin never parses a
request token, ACLLogout answers 401 "Supplied token does not exist" without one),
agent/consul/acl_endpoint.go (ACL.Login, ACL.Logout, AuthMethodSet, BindingRuleSet),
agent/consul/auth/login.go (TokenForVerifiedIdentity: Local from TokenLocality, ExpirationTTL =
MaxTokenTTL, AuthMethod set; BuildTokenDescription), agent/consul/auth/binder.go (Bind,
computeBindName, doesSelectorMatch), agent/consul/authmethod/ssoauth/sso.go (value.* fields),
internal/go-sso/oidcauth/jwt.go (verifyVanillaJWT) and config.go (Validate).
"""

import json

import pytest

from .conftest import MASTER
from .jwt_helper import Signer

ISSUER = "https://hub.example/instance-a"
AUDIENCE = "consul-login"


async def _call(raw, fake, method, path, token=MASTER, body=None, params=None):
    status, _, text = await raw(fake, method, path, token=token, json=body, params=params)
    return status, (json.loads(text) if status == 200 else text)


def _method(signer: Signer, **over) -> dict:
    config = {
        "JWTValidationPubKeys": [signer.pem],
        "BoundIssuer": ISSUER,
        "BoundAudiences": [AUDIENCE],
        "ClaimMappings": {"user": "user", "hub": "hub"},
        "ListClaimMappings": {"groups": "groups"},
    }
    config.update(over.pop("Config", {}))
    return {"Name": "hub-a", "Type": "jwt", "MaxTokenTTL": "1h", "TokenLocality": "local", "Config": config, **over}


@pytest.fixture
def signer():
    return Signer("ES256")


@pytest.fixture
async def setup(acl_fake, raw, signer):
    """An auth method and a service binding rule with the fixed jupyter- prefix."""
    status, method = await _call(raw, acl_fake, "PUT", "/v1/acl/auth-method", body=_method(signer))
    assert status == 200, method
    rule = {
        "AuthMethod": "hub-a",
        "Selector": 'value.hub == "a"',
        "BindType": "service",
        "BindName": "jupyter-${value.user}",
    }
    status, rule = await _call(raw, acl_fake, "PUT", "/v1/acl/binding-rule", body=rule)
    assert status == 200, rule
    return method, rule


def _claims(fake, **over) -> dict:
    now = int(fake.state.now())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + 300, "user": "alice", "hub": "a"}
    claims.update(over)
    return {k: v for k, v in claims.items() if v is not None}


async def _login(raw, fake, jwt, meta=None, token=None):
    body = {"AuthMethod": "hub-a", "BearerToken": jwt, **({"Meta": meta} if meta else {})}
    return await _call(raw, fake, "POST", "/v1/acl/login", token=token, body=body)


# ---------------------------------------------------------------- login


async def test_login_makes_a_local_expiring_token_bound_to_the_service(acl_fake, raw, signer, setup):
    status, token = await _login(raw, acl_fake, signer.sign(_claims(acl_fake)), meta={"owner": "hub-a", "n": "1"})
    assert status == 200, token
    assert token["AuthMethod"] == "hub-a"
    assert token["Local"] is True
    assert token["ServiceIdentities"] == [{"ServiceName": "jupyter-alice"}]
    assert "Policies" not in token
    # login.go BuildTokenDescription: prefix + ": " + json.Marshal(meta) (sorted keys, compact).
    assert token["Description"] == 'token created via login: {"n":"1","owner":"hub-a"}'
    # ExpirationTTL = MaxTokenTTL (1h), turned into ExpirationTime by the token writer.
    assert token["ExpirationTime"] != token["CreateTime"]
    status, self_view = await _call(raw, acl_fake, "GET", "/v1/acl/token/self", token=token["SecretID"])
    assert status == 200 and self_view["AccessorID"] == token["AccessorID"]
    # Past MaxTokenTTL the token is expired: ACL.TokenRead treats it as absent (IsExpired), so
    # ACLTokenSelf answers 404 "Supplied token does not exist".
    acl_fake.advance(3601)
    status, text = await _call(raw, acl_fake, "GET", "/v1/acl/token/self", token=token["SecretID"])
    assert (status, text) == (404, "Supplied token does not exist")


async def test_login_without_meta_has_the_bare_prefix(acl_fake, raw, signer, setup):
    status, token = await _login(raw, acl_fake, signer.sign(_claims(acl_fake)))
    assert status == 200 and token["Description"] == "token created via login"


async def test_rs256_keys_work_too(acl_fake, raw):
    rsa_signer = Signer("RS256")
    status, _ = await _call(raw, acl_fake, "PUT", "/v1/acl/auth-method", body=_method(rsa_signer))
    assert status == 200
    rule = {"AuthMethod": "hub-a", "BindType": "service", "BindName": "jupyter-${value.user}"}
    assert (await _call(raw, acl_fake, "PUT", "/v1/acl/binding-rule", body=rule))[0] == 200
    status, token = await _login(raw, acl_fake, rsa_signer.sign(_claims(acl_fake)))
    assert status == 200, token


async def test_global_locality_makes_a_global_token(acl_fake, raw, signer, setup):
    assert (
        await _call(raw, acl_fake, "PUT", "/v1/acl/auth-method/hub-a", body=_method(signer, TokenLocality="global"))
    )[0] == 200
    status, token = await _login(raw, acl_fake, signer.sign(_claims(acl_fake)))
    assert status == 200 and token["Local"] is False


async def test_a_token_on_the_login_request_is_not_looked_at(acl_fake, raw, signer, setup):
    # agent/acl_endpoint.go ACLLogin does not call parseToken, so the RPC's args.Token stays
    # empty: an unknown token on the request neither refuses the login nor is used by it.
    status, token = await _login(raw, acl_fake, signer.sign(_claims(acl_fake)), token="not-a-real-secret")
    assert status == 200, token


@pytest.mark.parametrize(
    ("over", "text"),
    [
        ({"aud": "someone-else"}, "aud claim does not match any bound audience"),
        ({"aud": None}, "aud claim does not match any bound audience"),
        ({"iss": "https://hub.example/instance-b"}, "invalid issuer claim (iss)"),
        ({"exp": -120}, "token is expired (exp)"),
        ({"nbf": 600}, "token not valid yet (nbf)"),
        ({"iat": None, "exp": None}, "no issue time, notbefore, or expiration time encoded in token"),
    ],
)
async def test_refused_claims(acl_fake, raw, signer, setup, over, text):
    now = int(acl_fake.state.now())
    over = {k: (now + v if isinstance(v, int) else v) for k, v in over.items()}
    status, body = await _login(raw, acl_fake, signer.sign(_claims(acl_fake, **over)))
    assert status == 500 and text in body


async def test_leeways_default_as_consul(acl_fake, raw, signer, setup):
    now = int(acl_fake.state.now())
    # Expired 30 s ago: inside go-jose's 60 s default clock-skew leeway.
    assert (await _login(raw, acl_fake, signer.sign(_claims(acl_fake, exp=now - 30))))[0] == 200
    # No exp: exp = iat + 150 s (claimDefaultLeeway); 100 s old (plus 60 s skew) is still fine,
    # 300 s old is not.
    assert (await _login(raw, acl_fake, signer.sign(_claims(acl_fake, exp=None, iat=now - 100))))[0] == 200
    status, body = await _login(raw, acl_fake, signer.sign(_claims(acl_fake, exp=None, iat=now - 300)))
    assert status == 500 and "token is expired" in body


async def test_audience_is_strict_when_none_are_bound(acl_fake, raw, signer, setup):
    method = _method(signer)
    del method["Config"]["BoundAudiences"]
    assert (await _call(raw, acl_fake, "PUT", "/v1/acl/auth-method/hub-a", body=method))[0] == 200
    status, body = await _login(raw, acl_fake, signer.sign(_claims(acl_fake)))
    assert status == 500 and "audience claim found in JWT but no audiences are bound" in body


async def test_forged_and_unsigned_tokens_are_refused(acl_fake, raw, signer, setup):
    forger = Signer("ES256")
    status, body = await _login(raw, acl_fake, forger.sign(_claims(acl_fake)))
    assert status == 500 and body == "no known key successfully validated the token signature"
    status, body = await _login(raw, acl_fake, signer.sign(_claims(acl_fake), alg="none"))
    assert status == 500 and body == "no known key successfully validated the token signature"


async def test_no_matching_rule_is_permission_denied(acl_fake, raw, signer, setup):
    status, body = await _login(raw, acl_fake, signer.sign(_claims(acl_fake, hub="b")))
    assert (status, body) == (403, "Permission denied")


async def test_unknown_auth_method(acl_fake, raw, signer, setup):
    body = {"AuthMethod": "nope", "BearerToken": signer.sign(_claims(acl_fake))}
    status, text = await _call(raw, acl_fake, "POST", "/v1/acl/login", token=None, body=body)
    assert (status, text) == (403, 'ACL not found: auth method "nope" not found')


@pytest.mark.parametrize(
    ("user", "text"),
    [
        ("alice/../admin", 'invalid bind name: "jupyter-alice/../admin"'),
        ("-x-", 'invalid bind name: "jupyter--x-"'),
        ("", 'invalid bind name: "jupyter-"'),
        ("Alice", "the projected variables contain uppercase characters"),
    ],
)
async def test_an_invalid_interpolated_name_refuses_the_login(acl_fake, raw, signer, setup, user, text):
    status, body = await _login(raw, acl_fake, signer.sign(_claims(acl_fake, user=user)))
    assert status == 500 and text in body


@pytest.mark.parametrize(
    ("selector", "matches"),
    [
        ('value.hub == "a" and value.user != "bob"', True),
        ('value.hub == "b" or value.user == "alice"', True),
        ('"analysts" in list.groups', True),
        ('list.groups contains "admins"', False),
        ('value.user contains "lic"', True),
        ('not (value.hub == "a")', False),
        ('value.missing == "x"', False),  # a key absent from the map: evaluation error, no match
    ],
)
async def test_selectors(acl_fake, raw, signer, setup, selector, matches):
    _, rule = setup
    rule = {**rule, "Selector": selector}
    assert (await _call(raw, acl_fake, "PUT", f"/v1/acl/binding-rule/{rule['ID']}", body=rule))[0] == 200
    claims = _claims(acl_fake, groups=["analysts", "users"])
    status, _ = await _login(raw, acl_fake, signer.sign(claims))
    assert status == (200 if matches else 403)


# ---------------------------------------------------------------- logout, listing


async def test_logout_deletes_only_login_tokens(acl_fake, raw, signer, setup):
    _, token = await _login(raw, acl_fake, signer.sign(_claims(acl_fake)))
    assert await _call(raw, acl_fake, "POST", "/v1/acl/logout", token=token["SecretID"]) == (200, True)
    # agent/acl_endpoint.go ACLTokenSelf: no token found -> 404 "Supplied token does not exist".
    assert await _call(raw, acl_fake, "GET", "/v1/acl/token/self", token=token["SecretID"]) == (
        404,
        "Supplied token does not exist",
    )
    # Any endpoint that resolves the deleted secret: acl.ErrNotFound -> 403 "ACL not found".
    assert await _call(raw, acl_fake, "GET", "/v1/agent/services", token=token["SecretID"]) == (403, "ACL not found")
    assert await _call(raw, acl_fake, "POST", "/v1/acl/logout", token=token["SecretID"]) == (403, "ACL not found")
    # auth/token_writer.go Delete(secret, fromLogout=true) wraps ErrPermissionDenied.
    assert await _call(raw, acl_fake, "POST", "/v1/acl/logout", token=MASTER) == (
        403,
        "Permission denied: token wasn't created via login",
    )
    assert await _call(raw, acl_fake, "POST", "/v1/acl/logout", token=None) == (401, "Supplied token does not exist")


async def test_tokens_listed_by_auth_method(acl_fake, raw, signer, setup):
    _, a = await _login(raw, acl_fake, signer.sign(_claims(acl_fake)))
    _, b = await _login(raw, acl_fake, signer.sign(_claims(acl_fake, user="bob")))
    status, stubs = await _call(raw, acl_fake, "GET", "/v1/acl/tokens", params={"authmethod": "hub-a"})
    assert status == 200
    assert sorted(s["AccessorID"] for s in stubs) == sorted([a["AccessorID"], b["AccessorID"]])
    assert all(s["AuthMethod"] == "hub-a" for s in stubs)


# ---------------------------------------------------------------- auth method and binding rule CRUD


async def test_auth_method_crud_and_its_acls(acl_fake, raw, signer, setup):
    status, policy = await _call(raw, acl_fake, "PUT", "/v1/acl/policy", body={"Name": "r", "Rules": 'acl = "read"'})
    _, reader = await _call(raw, acl_fake, "PUT", "/v1/acl/token", body={"Policies": [{"ID": policy["ID"]}]})
    status, text = await _call(
        raw, acl_fake, "PUT", "/v1/acl/auth-method", token=reader["SecretID"], body=_method(signer)
    )
    assert status == 403 and "lacks permission 'acl:write'" in text
    status, method = await _call(raw, acl_fake, "GET", "/v1/acl/auth-method/hub-a", token=reader["SecretID"])
    assert status == 200 and method["MaxTokenTTL"] == "1h0m0s" and method["TokenLocality"] == "local"
    assert method["Config"]["BoundIssuer"] == ISSUER
    status, stubs = await _call(raw, acl_fake, "GET", "/v1/acl/auth-methods", token=reader["SecretID"])
    assert status == 200 and [s["Name"] for s in stubs] == ["hub-a"] and "Config" not in stubs[0]
    status, rules = await _call(
        raw, acl_fake, "GET", "/v1/acl/binding-rules", token=reader["SecretID"], params={"authmethod": "hub-a"}
    )
    assert status == 200 and len(rules) == 1
    assert await _call(raw, acl_fake, "GET", "/v1/acl/auth-method/nope") == (
        404,
        "Requested auth method does not exist: ACL not found",
    )
    # Deleting the method deletes its rules and the tokens made through it (state/acl.go).
    _, token = await _login(raw, acl_fake, signer.sign(_claims(acl_fake)))
    assert await _call(raw, acl_fake, "DELETE", "/v1/acl/auth-method/hub-a") == (200, True)
    assert await _call(raw, acl_fake, "GET", "/v1/acl/binding-rules") == (200, [])
    assert (await _call(raw, acl_fake, "GET", f"/v1/acl/token/{token['AccessorID']}"))[0] == 404


@pytest.mark.parametrize(
    ("over", "text"),
    [
        ({"Name": "bad name"}, "Invalid Auth Method: invalid Name"),
        ({"MaxTokenTTL": "30s"}, "MaxTokenTTL 30s cannot be less than 1m0s"),
        ({"TokenLocality": "planet"}, "Invalid Auth Method: TokenLocality should be one of 'local' or 'global'"),
        (
            {"Config": {"JWTValidationPubKeys": []}},
            "exactly one of 'JWTValidationPubKeys', 'JWKSURL', or 'OIDCDiscoveryURL'",
        ),
        ({"Config": {"JWTValidationPubKeys": ["not a pem"]}}, "error parsing public key JWTValidationPubKeys[0]"),
        ({"Config": {"Bogus": 1}}, "has invalid keys: Bogus"),
        ({"Config": {"ClaimMappings": {"a": "x", "b": "x"}}}, 'ClaimMappings contains multiple mappings for key "x"'),
    ],
)
async def test_auth_method_refusals(acl_fake, raw, signer, over, text):
    status, body = await _call(raw, acl_fake, "PUT", "/v1/acl/auth-method", body=_method(signer, **over))
    assert status == 500 and text in body


@pytest.mark.parametrize(
    ("over", "text"),
    [
        ({"Selector": 'value.hub = "a"'}, "invalid Binding Rule: Selector is invalid"),
        ({"Selector": 'other.hub == "a"'}, "invalid Binding Rule: Selector is invalid"),
        # go-bexpr (field_config.go / validate.go): a []string only takes in/not in/is (not) empty,
        # a string ==, !=, in, not in, matches; anything else is refused when the rule is written.
        ({"Selector": 'list.groups == "admins"'}, 'Invalid match operator "Equal" for selector "list.groups"'),
        ({"Selector": "value.user is empty"}, 'Invalid match operator "Is Empty" for selector "value.user"'),
        ({"Selector": 'value.user.first == "a"'}, "is not valid"),
        ({"BindType": "group"}, 'unknown BindType "group"'),
        ({"BindName": "Jupyter-${value.user}"}, 'invalid bind name: "Jupyter-fake"'),
        ({"BindName": "jupyter-${value.nope}"}, "unknown variable accessed: value.nope"),
        ({"BindName": ""}, "bindType and bindName must not be empty"),
        ({"AuthMethod": "nope"}, 'cannot find auth method with name "nope"'),
    ],
)
async def test_binding_rule_refusals(acl_fake, raw, signer, setup, over, text):
    rule = {"AuthMethod": "hub-a", "BindType": "service", "BindName": "jupyter-${value.user}", **over}
    status, body = await _call(raw, acl_fake, "PUT", "/v1/acl/binding-rule", body=rule)
    assert status == 500 and text in body


# ---------------------------------------------------------------- other bind types


async def test_policy_and_templated_policy_bindings(acl_fake, raw, signer, setup):
    del setup  # the method and its service rule exist
    # binder.go: BindTypePolicy links an existing policy by name (none bound if it is missing).
    status, policy = await _call(raw, acl_fake, "PUT", "/v1/acl/policy", body={"Name": "hub-a-reader", "Rules": ""})
    assert status == 200
    for body in (
        {"AuthMethod": "hub-a", "BindType": "policy", "BindName": "hub-${value.hub}-reader"},
        {"AuthMethod": "hub-a", "BindType": "policy", "BindName": "no-such-policy"},
        {
            "AuthMethod": "hub-a",
            "BindType": "templated-policy",
            "BindName": "builtin/service",
            "BindVars": {"Name": "jupyter-${value.user}-t"},
        },
    ):
        status, text = await _call(raw, acl_fake, "PUT", "/v1/acl/binding-rule", body=body)
        assert status == 200, text
    status, token = await _login(raw, acl_fake, signer.sign(_claims(acl_fake)))
    assert status == 200, token
    assert token["Policies"] == [{"ID": policy["ID"], "Name": "hub-a-reader"}]
    assert token["TemplatedPolicies"] == [
        {"TemplateName": "builtin/service", "TemplateVariables": {"Name": "jupyter-alice-t"}}
    ]
    # What the token may do: service:write on both bound names, nothing else.
    for name, allowed in (("jupyter-alice", True), ("jupyter-alice-t", True), ("jupyter-bob", False)):
        reg = {"Name": name, "ID": name, "Port": 8888}
        status, _, _ = await raw(acl_fake, "PUT", "/v1/agent/service/register", token=token["SecretID"], json=reg)
        assert status == (200 if allowed else 403), name


async def test_unknown_template_is_refused(acl_fake, raw, signer, setup):
    body = {"AuthMethod": "hub-a", "BindType": "templated-policy", "BindName": "builtin/everything"}
    status, text = await _call(raw, acl_fake, "PUT", "/v1/acl/binding-rule", body=body)
    assert status == 500 and "does not match existing template name: builtin/everything" in text


async def test_badly_typed_claims_fail_as_the_signature_does(acl_fake, raw, signer, setup):
    # go-jose's parsedJWT.Claims(key, ...) verifies and unmarshals in one call; an unmarshal
    # error fails every key, so oidcauth/jwt.go reports "no known key successfully validated".
    for over in ({"exp": "soon"}, {"aud": 7}, {"iss": ["a"]}):
        status, body = await _login(raw, acl_fake, signer.sign(_claims(acl_fake, **over)))
        assert (status, body) == (500, "no known key successfully validated the token signature"), over


async def test_login_body_must_decode(acl_fake, raw, signer, setup):
    status, text = await _call(
        raw, acl_fake, "POST", "/v1/acl/login", token=None, body={"AuthMethod": "hub-a", "BearerToken": 5}
    )
    assert status == 400 and text.startswith("Failed to decode request body:")
