"""The keeper writes a rotated token's state to the hub database through the ORM object's own
session, not JupyterHub's deprecated Spawner.db (issue 17)."""

import logging

from jupyterhub import orm

from consulspawner.state import MeshState
from consulspawner_dev.standalone import standalone_spawner


def test_save_state_commits_through_the_orm_objects_session(caplog):
    factory = orm.new_session_factory("sqlite://")
    db = factory()
    user = orm.User(name="alice")
    db.add(user)
    db.commit()
    orm_spawner = orm.Spawner(user=user, name="")
    db.add(orm_spawner)
    db.commit()

    spawner = standalone_spawner("alice")
    spawner.orm_spawner = orm_spawner
    spawner.mesh_state = MeshState(service_id="jupyter-alice--01234567", token_accessor="a-1", registered=True)
    with caplog.at_level(logging.WARNING):
        spawner._save_state()
    assert not [r for r in caplog.records if "Spawner.db is deprecated" in r.getMessage()]

    db.expire_all()
    stored = db.query(orm.Spawner).one().state
    assert stored["consul"]["token_accessor"] == "a-1"
