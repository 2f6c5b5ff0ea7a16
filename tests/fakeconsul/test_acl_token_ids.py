"""Client-chosen AccessorID/SecretID on token create (agent/consul/auth/token_writer.go Create).

validateTokenID then tokenIDInUse, which looks the value up as an accessor AND as a secret;
the RPC error reaches the HTTP client as a 500 with its text.
"""

import uuid

from .conftest import MASTER


async def _create(raw, fake, **body):
    status, _, text = await raw(fake, "PUT", "/v1/acl/token", token=MASTER, json=body)
    return status, text


async def test_accessor_and_secret_already_in_use(acl_fake, raw):
    acc, sec = str(uuid.uuid4()), str(uuid.uuid4())
    assert (await _create(raw, acl_fake, AccessorID=acc, SecretID=sec))[0] == 200
    assert await _create(raw, acl_fake, AccessorID=acc) == (500, "Invalid Token: AccessorID is already in use")
    assert await _create(raw, acl_fake, SecretID=sec) == (500, "Invalid Token: SecretID is already in use")
    # tokenIDInUse checks both indexes: an existing secret is taken as an accessor, and back.
    assert await _create(raw, acl_fake, AccessorID=sec) == (500, "Invalid Token: AccessorID is already in use")
    assert await _create(raw, acl_fake, SecretID=acc) == (500, "Invalid Token: SecretID is already in use")


async def test_accessor_must_be_a_non_reserved_uuid(acl_fake, raw):
    assert await _create(raw, acl_fake, AccessorID="not-a-uuid") == (
        500,
        "Invalid Token: AccessorID - not a valid UUID",
    )
    assert await _create(raw, acl_fake, AccessorID="00000000-0000-0000-0000-000000000099") == (
        500,
        'Invalid Token: AccessorID - UUIDs with the prefix "00000000-0000-0000-0000-0000000000" are reserved',
    )
