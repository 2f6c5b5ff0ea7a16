"""The sidecar container's settings. Its readiness deadline against JupyterHub's start_timeout
(issue 17): a sidecar that is never ready must fail the spawn with the mesh's own message,
before JupyterHub gives up on the whole spawn with a bare timeout. Its CPU weights."""

import pytest
from traitlets import TraitError

from consulspawner_dev.standalone import standalone_spawner


def test_the_default_readiness_deadline_is_within_the_start_timeout():
    spawner = standalone_spawner("alice")
    assert spawner.sidecar_ready_timeout < spawner.start_timeout
    assert standalone_spawner("bob", start_timeout=20).sidecar_ready_timeout < 20


def test_a_readiness_deadline_not_within_the_start_timeout_is_refused_naming_both():
    with pytest.raises(TraitError, match=r"sidecar_ready_timeout.*start_timeout"):
        standalone_spawner("alice", start_timeout=60, sidecar_ready_timeout=60)


WEIGHTS = ["sidecar_cpu_shares", "sidecar_start_cpu_shares"]


@pytest.mark.parametrize("setting", WEIGHTS)
@pytest.mark.parametrize("shares", [-1, 1, 262145])
def test_a_sidecar_cpu_weight_docker_cannot_take_is_refused_naming_the_setting(setting, shares):
    with pytest.raises(TraitError, match=rf"c\.ConsulSpawner\.{setting} must be 0 .* or 2\.\.262144"):
        standalone_spawner("alice", **{setting: shares})


@pytest.mark.parametrize("setting", WEIGHTS)
@pytest.mark.parametrize("shares", [0, 2, 4096, 65536, 262144])
def test_a_sidecar_cpu_weight_in_range_is_kept(setting, shares):
    assert getattr(standalone_spawner("alice", **{setting: shares}), setting) == shares
