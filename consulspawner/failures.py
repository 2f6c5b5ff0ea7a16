"""A spawn that fails in the mesh, said twice: to the notebook user (which step, in their words)
and to the admin (which Consul or Docker call, its status, where to read on).

JupyterHub shows an exception's ``jupyterhub_message`` instead of its ``str()`` on the spawn
page and in the progress stream's failure event (jupyterhub/utils.py ``format_exception``, used
by handlers/pages.py and apihandlers/users.py: ``"Spawn failed: " + message``). The user's
message names the step and where the admin looks; the hub log line names the call. Neither
carries a secret: the user's words are fixed text, and the admin's line is the error's own
message, which ``ConsulError`` already scrubs of secrets (consul.py).
"""

from __future__ import annotations

import logging

from .consul import ConsulError

TROUBLESHOOTING = "docs/troubleshooting.md"

# step -> (what the user reads, the troubleshooting entry's anchor). The steps are the metrics'
# spawn steps (metrics.SPAWN_STEPS) plus the notebook container's own start.
STEPS: dict[str, tuple[str, str]] = {
    "token": ("Consul identity", "spawn-failed-at-the-consul-identity-step-token"),
    "notebook": ("notebook container", "spawn-failed-at-the-notebook-container-step-notebook"),
    "register": ("registration", "spawn-failed-at-registration-step-register"),
    "sidecar": ("sidecar start", "spawn-failed-at-sidecar-start-step-sidecar"),
    "ready": ("sidecar readiness", "the-sidecar-never-becomes-ready-step-ready"),
    "grant": ("access grant", "spawn-failed-at-the-access-grant-step-grant"),
}


class MeshSpawnFailed(RuntimeError):
    """A spawn failed in the mesh at ``step``; ``jupyterhub_message`` is what the user reads."""

    def __init__(self, step: str, user_message: str, admin_detail: str):
        # str() is the admin's view (JupyterHub logs it); the user reads jupyterhub_message.
        super().__init__(f"mesh spawn failed at step {step}: {admin_detail} (see {anchor(step)})")
        self.step = step
        self.jupyterhub_message = user_message
        self.admin_detail = admin_detail


def anchor(step: str) -> str:
    return f"{TROUBLESHOOTING}#{STEPS[step][1]}"


def user_message(step: str, server: str) -> str:
    """The notebook user's words: what failed, at which step, and where the admin looks."""
    words = STEPS[step][0]
    return (
        f"Could not connect your server to the data network (step: {words}). Nothing of it was "
        f"left running; you can try again. If it keeps failing, your administrator can find "
        f"details in the hub log under 'mesh spawn failed' for {server} ({anchor(step)})."
    )


def call_of(error: BaseException) -> str:
    """The Consul or Docker call that failed and its status, as far as the error says."""
    if isinstance(error, ConsulError):
        return f"Consul {error.call} -> {error.status if error.status is not None else 'no answer'}"
    status = getattr(error, "status_code", None)  # docker.errors.APIError
    if status is not None:
        return f"Docker API -> {status}"
    return type(error).__name__


def failed(
    step: str, error: BaseException, server: str, log: logging.Logger | logging.LoggerAdapter
) -> MeshSpawnFailed:
    """Log the admin's line (at ERROR) and return the exception to raise from ``start``."""
    detail = f"{call_of(error)}: {error}"
    log.error("mesh spawn failed for %s at step %s: %s; see %s", server, step, detail, anchor(step))
    return MeshSpawnFailed(step, user_message(step, server), detail)
