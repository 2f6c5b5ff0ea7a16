"""GET /v1/acl/tokens server-side filters.

agent/acl_endpoint.go ACLTokenList reads the query parameters policy, role, authmethod and
servicename; agent/consul/state/acl.go ACLTokenListWithParameters allows one of them at a time
("can only filter by one of policy, role, serviceName, or methodName at a time") and looks
servicename up in a lower-cased index of the tokens' service identities
(indexServiceNameFromACLToken).
"""

import json

from .conftest import MASTER

GM = "00000000-0000-0000-0000-000000000001"


async def _list(raw, fake, **params):
    status, _, text = await raw(fake, "GET", "/v1/acl/tokens", token=MASTER, params=params)
    return status, (json.loads(text) if status == 200 else text)


async def test_servicename_filter(acl_fake, admin, raw):
    alice = await admin.acl.token.create(service_identities=[{"ServiceName": "jupyter-alice"}])
    both = await admin.acl.token.create(
        service_identities=[{"ServiceName": "jupyter-bob"}, {"ServiceName": "jupyter-alice"}]
    )
    await admin.acl.token.create(service_identities=[{"ServiceName": "jupyter-bob"}])
    status, tokens = await _list(raw, acl_fake, servicename="jupyter-alice")
    assert status == 200
    assert sorted(t["AccessorID"] for t in tokens) == sorted([alice["AccessorID"], both["AccessorID"]])
    assert all(t["SecretID"] for t in tokens)  # acl:write sees secrets, as unfiltered
    # The index is lower-cased on both sides.
    _, upper = await _list(raw, acl_fake, servicename="JUPYTER-ALICE")
    assert sorted(t["AccessorID"] for t in upper) == sorted(t["AccessorID"] for t in tokens)
    assert (await _list(raw, acl_fake, servicename="jupyter-nobody")) == (200, [])
    # An empty value is no filter at all.
    _, everything = await _list(raw, acl_fake, servicename="")
    assert len(everything) == 5  # anonymous, initial management and the three above


async def test_policy_role_authmethod_filters(acl_fake, admin, raw):
    await admin.acl.token.create(service_identities=[{"ServiceName": "web"}])
    status, tokens = await _list(raw, acl_fake, policy=GM)
    assert status == 200 and [t["Description"] for t in tokens] == ["Initial Management Token"]
    assert (await _list(raw, acl_fake, role="11111111-1111-1111-1111-111111111111")) == (200, [])
    assert (await _list(raw, acl_fake, authmethod="kubernetes")) == (200, [])


async def test_only_one_filter_at_a_time(acl_fake, raw):
    status, text = await _list(raw, acl_fake, servicename="web", policy=GM)
    assert (status, text) == (500, "can only filter by one of policy, role, serviceName, or methodName at a time")


async def test_policy_and_role_filters_take_ids_not_names(acl_fake, raw):
    # The tokens table's policies/roles indexes read a UUID (state/acl_schema.go
    # indexFromUUIDQuery -> uuidStringToBytes); go-memdb wraps the indexer error as
    # "index error: ..." and ACLTokenListWithParameters as "failed acl token lookup: ...",
    # which the RPC returns as a 500.
    for param in ("policy", "role"):
        status, text = await _list(raw, acl_fake, **{param: "global-management"})
        assert (status, text) == (500, "failed acl token lookup: index error: UUID must be 36 characters"), param
