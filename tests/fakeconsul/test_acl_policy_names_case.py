"""ACL policy names are unique and looked up without regard to case.

agent/consul/state/acl_schema.go: the policies table's name index is written with
indexNameFromACLPolicy (strings.ToLower(p.Name)) and read with indexFromQuery (lower-cased), so
"Hub" and "hub" collide on write (ACL.PolicySet: "A Policy with Name ... already exists") and a
read or a token link by name finds the policy whatever the case.
"""

import json

from .conftest import MASTER


async def test_policy_names_are_case_insensitive(acl_fake, raw):
    status, _, text = await raw(acl_fake, "PUT", "/v1/acl/policy", token=MASTER, json={"Name": "Hub", "Rules": ""})
    assert status == 200, text
    hub = json.loads(text)
    status, _, text = await raw(acl_fake, "PUT", "/v1/acl/policy", token=MASTER, json={"Name": "hub", "Rules": ""})
    assert (status, text) == (500, 'Invalid Policy: A Policy with Name "hub" already exists')
    status, _, text = await raw(acl_fake, "GET", "/v1/acl/policy/name/HUB", token=MASTER)
    assert status == 200 and json.loads(text)["ID"] == hub["ID"]
    status, _, text = await raw(acl_fake, "PUT", "/v1/acl/token", token=MASTER, json={"Policies": [{"Name": "hUb"}]})
    assert status == 200 and json.loads(text)["Policies"] == [{"ID": hub["ID"], "Name": "Hub"}]
    # Renaming a policy to another case of its own name is no conflict.
    status, _, text = await raw(
        acl_fake, "PUT", f"/v1/acl/policy/{hub['ID']}", token=MASTER, json={"Name": "HUB", "Rules": ""}
    )
    assert status == 200 and json.loads(text)["Name"] == "HUB"
