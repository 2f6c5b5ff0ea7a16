"""sweep_orphans against the fake agent: this hub's objects that no live server holds go,
intention first; live servers, other hubs and foreign objects stay."""

import time

from consulspawner.entries import KIND, L4
from consulspawner.intentions import IntentionWriter
from consulspawner.orphans import sweep_orphans
from consulspawner.plan import MeshSettings, build_plan
from consulspawner.state import new_incarnation


async def create_server(client, hub, user):
    plan = build_plan(MeshSettings(hub_instance=hub, intention_mode=L4), user, incarnation=new_incarnation())
    await client.register_service(plan.registration("127.0.0.1"))
    [(destination, entry)] = plan.grants(time.time())
    await IntentionWriter(client, hub).grant(destination, entry)
    return plan


async def test_sweep_removes_only_this_hubs_orphans(acl_client):
    orphan = await create_server(acl_client, "hub-a", "orphan")
    live = await create_server(acl_client, "hub-a", "live")
    elsewhere = await create_server(acl_client, "hub-b", "elsewhere")
    await acl_client.register_service({"ID": "web", "Name": "web", "Port": 80})
    writer = IntentionWriter(acl_client, "hub-a")

    removed = await sweep_orphans(acl_client, writer, "hub-a", lambda: {live.service_name: live.owner.incarnation})

    assert [o.kind for o in removed] == ["intention", "service"]
    assert {(o.service, o.incarnation) for o in removed} == {(orphan.service_name, orphan.owner.incarnation)}
    services = await acl_client.agent_services()
    assert orphan.service_id not in services and orphan.sidecar_id not in services
    assert {live.service_id, elsewhere.service_id, "web"} <= set(services)
    sources = sorted(s["Name"] for s in (await acl_client.get_config(KIND, "trino-coordinator"))["Sources"])
    assert sources == sorted([live.service_name, elsewhere.service_name])


async def test_a_server_spawned_during_the_sweep_is_left_alone(acl_client):
    plan = await create_server(acl_client, "hub-a", "racer")
    alive: dict[str, str | None] = {}
    calls = []

    def keep():
        # The user spawns right after the sweep has read Consul: from then on it is alive (its
        # incarnation not recorded yet, as mid-start).
        calls.append(1)
        alive[plan.service_name] = None
        return alive

    removed = await sweep_orphans(acl_client, IntentionWriter(acl_client, "hub-a"), "hub-a", keep)
    assert removed == [] and calls
    assert plan.service_id in await acl_client.agent_services()


async def test_an_older_incarnation_of_a_live_server_is_an_orphan(acl_client):
    """A hub killed mid-spawn, then the user started again: the service name is live, but the
    registration of the earlier start carries another incarnation (its own service ID) and goes;
    the live one stays. (Its login token is not the sweep's: it expires.)"""
    old = await create_server(acl_client, "hub-a", "again")
    new = await create_server(acl_client, "hub-a", "again")  # its own service ID; re-grants the name
    removed = await sweep_orphans(
        acl_client, IntentionWriter(acl_client, "hub-a"), "hub-a", lambda: {new.service_name: new.owner.incarnation}
    )
    assert [(o.kind, o.target) for o in removed] == [("service", old.service_id)]
    services = await acl_client.agent_services()
    assert new.service_id in services and old.service_id not in services
    sources = (await acl_client.get_config(KIND, "trino-coordinator"))["Sources"]
    assert [s["Name"] for s in sources] == [new.service_name]


class RefusingWriter(IntentionWriter):
    """A writer whose revoke finds, in its CAS cycle, that the source changed meanwhile."""

    async def revoke(self, destination, source, only_if=None):
        return False


async def test_an_intention_the_revoke_kept_is_not_reported_removed(acl_client):
    orphan = await create_server(acl_client, "hub-a", "changed")
    removed = await sweep_orphans(acl_client, RefusingWriter(acl_client, "hub-a"), "hub-a", dict)
    assert "intention" not in [o.kind for o in removed]
    sources = (await acl_client.get_config(KIND, "trino-coordinator"))["Sources"]
    assert [s["Name"] for s in sources] == [orphan.service_name]
