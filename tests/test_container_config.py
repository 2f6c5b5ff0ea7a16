"""The sidecar's readiness deadline against JupyterHub's start_timeout (issue 17): a sidecar
that is never ready must fail the spawn with the mesh's own message, before JupyterHub gives up
on the whole spawn with a bare timeout."""

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
