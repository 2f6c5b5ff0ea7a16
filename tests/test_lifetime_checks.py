"""keeper_interval must leave room for one missed round within the check TTL and the intentions'
half-life extension (issue 17)."""

import pytest

from consulspawner_dev.standalone import standalone_spawner


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"keeper_interval": 50.0, "check_ttl": 90}, "check_ttl"),
        ({"keeper_interval": 400.0, "check_ttl": 900, "intention_ttl": 600}, "intention_ttl"),
    ],
)
async def test_a_keeper_interval_over_half_a_lifetime_is_refused_before_anything_starts(settings, named):
    spawner = standalone_spawner("alice", consul_address="http://127.0.0.1:9", **settings)
    with pytest.raises(RuntimeError, match=rf"keeper_interval.*{named}"):
        await spawner.start()


async def test_the_defaults_pass():
    assert standalone_spawner("alice").lifetime_problem() == ""
