"""The mesh's own Docker client against a slow daemon (issue 17, item 7): building it asks the
daemon for its API version, which must never happen on the hub's event loop, and a client the
daemon refused once is built again at the next call."""

import asyncio

import pytest
from docker.errors import DockerException

from consulspawner import hubwide
from consulspawner.dockerpool import DockerUnreachable
from consulspawner.spawner import ConsulSpawner
from consulspawner.uninterrupted import awaited_to_its_answer
from consulspawner_dev.standalone import standalone_spawner

from .slowdocker import SlowDocker


@pytest.fixture
def spawner_on():
    """A spawner of a class of its own (clients are per class) talking to ``stub``."""
    made = []

    def make(stub):
        cls = type("OwnDaemon", (ConsulSpawner,), {})
        spawner = standalone_spawner("alice")
        spawner.__class__ = cls
        spawner.client_kwargs = {"base_url": stub.url}
        made.append(cls)
        return spawner

    yield make
    for cls in made:
        pool = hubwide._sidecar_dockers.pop(cls, None)
        if pool is not None:
            pool.shutdown()


async def test_a_slow_daemon_never_holds_the_loop_while_the_sidecar_client_is_built(spawner_on):
    with SlowDocker().running() as stub:
        spawner = spawner_on(stub)
        call = asyncio.ensure_future(spawner._inspect("nope"))
        # Only a running loop gets here while the daemon holds /version: it is the loop that
        # releases it. A client built on the loop would hold it until the stub gives up.
        await asyncio.to_thread(stub.version_requested.wait, 30)
        stub.release()
        assert await call is None
        assert not stub.released_by_timeout, "the event loop was frozen while /version was held"


async def test_a_slow_daemon_never_holds_the_loop_for_dockerspawners_own_client(spawner_on):
    with SlowDocker().running() as stub:
        spawner = spawner_on(stub)
        call = asyncio.ensure_future(spawner.docker("inspect_image", "nope"))
        await asyncio.to_thread(stub.version_requested.wait, 30)
        stub.release()
        with pytest.raises(DockerException):
            await call
        assert not stub.released_by_timeout, "the event loop was frozen while /version was held"


async def test_a_client_the_daemon_refused_once_is_built_again(spawner_on):
    with SlowDocker(hold=0, fail_versions=1).running() as stub:
        spawner = spawner_on(stub)
        with pytest.raises(DockerUnreachable, match="Docker inspect_container failed"):
            await spawner._inspect("nope")
        # A daemon that was starting answers now: the refused construction is not remembered.
        assert await spawner._inspect("nope") is None


async def _cancelled_while(call: asyncio.Future, answer) -> tuple[list, BaseException | None]:
    """Await ``call`` through awaited_to_its_answer, cancel the awaiting task while the call is
    in flight, then let the call answer (``answer(call)``)."""
    recorded: list = []
    task = asyncio.ensure_future(awaited_to_its_answer(call, recorded.append))
    await asyncio.sleep(0)  # the task is now awaiting the call
    task.cancel()
    await asyncio.sleep(0)
    assert not task.done(), "the cancellation ended the wait before the call answered"
    answer(call)
    try:
        await task
    except BaseException as e:  # what it raised is the result
        return recorded, e
    return recorded, None


async def test_a_create_answered_after_a_cancellation_is_recorded_then_the_cancellation_raised():
    call = asyncio.get_running_loop().create_future()
    recorded, raised = await _cancelled_while(call, lambda c: c.set_result({"Id": "abc"}))
    assert recorded == [{"Id": "abc"}]
    assert isinstance(raised, asyncio.CancelledError)


async def test_a_create_that_fails_after_a_cancellation_records_nothing_and_raises_the_cancellation():
    call = asyncio.get_running_loop().create_future()
    recorded, raised = await _cancelled_while(call, lambda c: c.set_exception(DockerUnreachable("gone")))
    assert recorded == []
    assert isinstance(raised, asyncio.CancelledError)


async def test_a_create_that_fails_uncancelled_raises_its_own_error():
    call = asyncio.get_running_loop().create_future()
    call.set_exception(DockerUnreachable("Docker create_container failed"))
    recorded: list = []
    with pytest.raises(DockerUnreachable, match="create_container"):
        await awaited_to_its_answer(call, recorded.append)
    assert recorded == []
