"""What a spawn that fails in the mesh says: to the user, the step in their words and where the
admin looks; to the admin, the call, its status and a troubleshooting entry that exists."""

import logging
import re
from pathlib import Path

import pytest

from consulspawner import failures, metrics
from consulspawner.consul import ConsulError

DOC = Path(__file__).resolve().parents[1] / "docs" / "troubleshooting.md"


def github_anchor(heading: str) -> str:
    """GitHub's heading anchor: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_step_has_a_troubleshooting_entry_the_messages_link_to():
    anchors = {github_anchor(line[3:]) for line in DOC.read_text().splitlines() if line.startswith("## ")}
    assert "the-server-never-showed-up" in anchors
    assert set(metrics.SPAWN_STEPS) <= set(failures.STEPS)
    for step, (_, anchor) in failures.STEPS.items():
        assert anchor in anchors, (step, anchor)


def test_the_user_reads_the_step_and_the_admin_the_call_its_status_and_the_entry(caplog):
    caplog.set_level(logging.ERROR)
    error = ConsulError("PUT /v1/agent/service/register", 403, "Permission denied")
    failed = failures.failed("register", error, "alice", logging.getLogger("test"))

    assert failed.jupyterhub_message == failures.user_message("register", "alice")
    assert failed.jupyterhub_message.startswith(
        "Could not connect your server to the data network (step: registration)."
    )
    assert "PUT" not in failed.jupyterhub_message  # the call is the admin's business
    [record] = caplog.records
    line = record.getMessage()
    assert "mesh spawn failed for alice at step register" in line
    assert "Consul PUT /v1/agent/service/register -> 403" in line
    assert "docs/troubleshooting.md#spawn-failed-at-registration-step-register" in line
    assert "PUT /v1/agent/service/register" in str(failed)  # what JupyterHub logs with the traceback


@pytest.mark.parametrize(
    "error, call",
    [
        (
            ConsulError("GET /v1/health/service/x", None, "no answer within 10s"),
            "Consul GET /v1/health/service/x -> no answer",
        ),
        (TimeoutError(), "TimeoutError"),
    ],
)
def test_call_of(error, call):
    assert failures.call_of(error) == call


def test_a_docker_error_names_its_status():
    from docker.errors import APIError

    class Response:
        status_code = 409
        reason = "Conflict"

    assert failures.call_of(APIError("conflict", response=Response())) == "Docker API -> 409"
