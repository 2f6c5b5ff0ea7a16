"""Prometheus metrics of the mesh, in the registry JupyterHub serves at ``/hub/metrics``.

JupyterHub exports ``prometheus_client.REGISTRY`` (jupyterhub/handlers/metrics.py,
``generate_latest(REGISTRY)``), so metrics defined here at import appear next to the hub's own
``jupyterhub_*`` ones with no configuration. Names follow Prometheus' conventions as
jupyterhub/metrics.py does (``<noun>_<verb>_<unit>``, base units, ``_total`` on counters) under
our own ``consulspawner_`` namespace.

Cardinality never grows with users or servers: labels take values from the fixed sets below
(phases, steps, causes, outcomes, janitor kinds), and ``destination`` is one of the configured
intention destinations (a handful per hub). Every label combination of a fixed set is created
up front, as JupyterHub does for its statuses, so a dashboard or an alert sees a zero rather
than no series until the first failure.

What the spawner calls (each a one-line addition around code that already exists)::

    with metrics.step("spawn", "token"):   # times the step; a failure is counted by cause
        ...
    metrics.GRANTS.inc()                   # or EXTENSIONS / REVOKES
    metrics.keeper_watching(key) / metrics.keeper_done(key) / metrics.keeper_round(key, ok)
    metrics.observe_entry(destination, entry)            # the intention writer, after a write
    metrics.INTENTION_WRITES.inc() / metrics.CAS_CONFLICTS.inc()

The janitor runs without the hub and serves its own registry (:func:`janitor_metrics`,
:func:`serve_janitor_metrics`), so the hub's endpoint does not show janitor series and the
janitor's does not show the hub's.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Hashable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from typing import Any, TypeVar

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.registry import Collector

NAMESPACE = "consulspawner"

SPAWN_STEPS = ("token", "register", "sidecar", "ready", "grant")
STOP_STEPS = ("revoke", "deregister", "logout")
PHASE_STEPS = {"spawn": SPAWN_STEPS, "stop": STOP_STEPS}
# Why a step failed, in as few words as an alert needs: Consul answered with an error or did
# not answer; Docker failed; a deadline passed; a refusal (ACL denied, intention refused or
# owned by someone else); anything else.
CAUSES = ("consul", "docker", "timeout", "refused", "other")
OUTCOMES = ("success", "failure")
JANITOR_KINDS = ("intention", "token", "service")

# The size Consul can carry in one Raft log entry: a whole service-intentions entry is one
# (a ConfigEntryRequest is never chunked). hashicorp/raft api.go: SuggestedMaxDataSize =
# 512 * 1024 ("no actual hard checking"); hashicorp/consul agent/consul/rpc.go: raftWarnSize =
# 1024 * 1024 (logs "Attempting to apply large raft entry", then applies it). See
# benchmarks/README.md, figure 5. Raft encodes msgpack; the JSON size we measure is close.
RAFT_SUGGESTED_MAX_BYTES = 512 * 1024
RAFT_WARN_BYTES = 1024 * 1024

# Mesh steps take from milliseconds (a config write) to tens of seconds (a sidecar ready on a
# busy machine); the default Prometheus buckets stop at 10 s.
STEP_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, float("inf"))

_M = TypeVar("_M", Counter, Gauge, Histogram)
_define_lock = threading.Lock()


def _define(cls: type[_M], name: str, doc: str, labelnames: tuple[str, ...] = (), *, registry=REGISTRY, **kw) -> _M:
    """The metric ``name`` of ``registry``, created on first use.

    Defined once per process: a second import of this module (``importlib.reload``, or the
    module loaded again under another path by a test runner) gets the collector the first one
    registered, instead of prometheus_client's "Duplicated timeseries" error. The registry keeps
    its name index in ``_names_to_collectors`` (prometheus_client/registry.py), the only way to
    look a collector up by name.
    """
    full = f"{NAMESPACE}_{name}"
    with _define_lock:
        existing: Collector | None = getattr(registry, "_names_to_collectors", {}).get(full)
        if existing is not None:
            if not isinstance(existing, cls) or tuple(existing._labelnames) != labelnames:
                raise ValueError(f"metric {full} already exists with another type or labels")
            return existing
        return cls(name, doc, labelnames, namespace=NAMESPACE, registry=registry, **kw)


# -- spawn and stop steps ---------------------------------------------------------------------

STEP_DURATION = _define(
    Histogram,
    "mesh_step_duration_seconds",
    "Duration of one mesh step of a server's spawn or stop, by outcome",
    ("phase", "step", "outcome"),
    buckets=STEP_BUCKETS,
)
STEP_FAILURES = _define(
    Counter,
    "mesh_step_failures_total",
    "Mesh steps that failed, by step and cause (consul, docker, timeout, refused, other)",
    ("phase", "step", "cause"),
)
for _phase, _steps in PHASE_STEPS.items():
    for _step in _steps:
        for _outcome in OUTCOMES:
            STEP_DURATION.labels(_phase, _step, _outcome)
        for _cause in CAUSES:
            STEP_FAILURES.labels(_phase, _step, _cause)


def cause_of(error: BaseException) -> str:
    """The fixed-set cause of a step's failure (never the error text: unbounded)."""
    # Imported here: intentions imports consul, and metrics must stay importable on its own.
    from .consul import ConsulError
    from .entries import IntentionRefused
    from .intentions import IntentionConflict

    if isinstance(error, (asyncio.TimeoutError, TimeoutError)):
        return "timeout"
    if isinstance(error, (IntentionRefused, IntentionConflict)):
        return "refused"
    if isinstance(error, ConsulError):
        if error.status in (401, 403):
            return "refused"
        if error.status is None and error.detail.startswith("no answer within"):
            return "timeout"  # ConsulClient.request's own deadline
        return "consul"
    if _is_docker_error(error):
        return "docker"
    return "other"


def _is_docker_error(error: BaseException) -> bool:
    try:
        from docker.errors import DockerException
    except ImportError:  # pragma: no cover - docker-py comes with dockerspawner
        return False
    return isinstance(error, DockerException)


def _check_step(phase: str, step: str) -> None:
    if step not in PHASE_STEPS.get(phase, ()):
        raise ValueError(f"unknown mesh step {phase}/{step}; known: {PHASE_STEPS}")


@contextmanager
def step(phase: str, step: str) -> Iterator[None]:
    """Time one mesh step (``with metrics.step("spawn", "token"): ...``).

    Success and failure durations both go to the histogram, under ``outcome``; a failure is
    also counted by :func:`cause_of`. A cancelled step (the user cancelled the spawn, the hub
    is shutting down) is neither: it says nothing about the mesh. Exceptions pass through.
    Works around ``await`` in a coroutine (a plain ``with`` suspends with it).
    """
    _check_step(phase, step)
    started = _clock()
    try:
        yield
    except Exception as e:  # not CancelledError, KeyboardInterrupt: BaseExceptions
        STEP_DURATION.labels(phase, step, "failure").observe(_clock() - started)
        STEP_FAILURES.labels(phase, step, cause_of(e)).inc()
        raise
    STEP_DURATION.labels(phase, step, "success").observe(_clock() - started)


_clock = time.perf_counter


# -- grants -----------------------------------------------------------------------------------

GRANTS = _define(Counter, "intention_grants_total", "Intention sources granted to a starting server")
EXTENSIONS = _define(Counter, "intention_extensions_total", "Intention sources whose expiry the keeper pushed back")
REVOKES = _define(Counter, "intention_revokes_total", "Intention sources revoked by the hub")
INTENTION_WRITES = _define(
    Counter, "intention_writes_total", "Config writes and deletes of service-intentions entries sent to Consul"
)
CAS_CONFLICTS = _define(
    Counter,
    "intention_cas_conflicts_total",
    "service-intentions writes Consul refused because another writer changed the entry first (re-read and retried)",
)
ENTRY_SOURCES = _define(
    Gauge,
    "intention_entry_sources",
    "Sources in a destination's service-intentions entry, all writers', as last written by this hub",
    ("destination",),
)
ENTRY_BYTES = _define(
    Gauge,
    "intention_entry_size_bytes",
    "Size (JSON) of a destination's service-intentions entry as last written by this hub; one Raft log entry",
    ("destination",),
)
ENTRY_LIMIT_BYTES = _define(
    Gauge,
    "intention_entry_limit_bytes",
    "Consul's Raft limits on one log entry: raft_suggested (hashicorp/raft SuggestedMaxDataSize) "
    "and raft_warn (consul raftWarnSize, logged as a large raft entry)",
    ("limit",),
)
ENTRY_LIMIT_BYTES.labels("raft_suggested").set(RAFT_SUGGESTED_MAX_BYTES)
ENTRY_LIMIT_BYTES.labels("raft_warn").set(RAFT_WARN_BYTES)


def entry_size(entry: dict) -> int:
    """Bytes of ``entry`` as JSON (compact, UTF-8): the order of what one Raft write carries."""
    return len(json.dumps(entry, separators=(",", ":"), ensure_ascii=False).encode("utf-8", "surrogatepass"))


def observe_entry(destination: str, entry: dict | None) -> None:
    """Record a destination's entry as just written (``None``: deleted, no sources)."""
    sources = (entry or {}).get("Sources") or []
    ENTRY_SOURCES.labels(destination).set(len(sources))
    ENTRY_BYTES.labels(destination).set(entry_size(entry) if entry else 0)


# -- the keeper -------------------------------------------------------------------------------


class _KeeperBook:
    """Which servers a keeper watches and which of those failed their last round, by an opaque
    key per server (a set, not labels: the gauges count, the keys never reach Prometheus).
    Idempotent: watching twice or finishing a server never watched does not skew the counts."""

    def __init__(self) -> None:
        self.watched: set[Hashable] = set()
        self.failing: set[Hashable] = set()

    def watching(self, key: Hashable) -> None:
        self.watched.add(key)

    def done(self, key: Hashable) -> None:
        self.watched.discard(key)
        self.failing.discard(key)

    def round(self, key: Hashable, ok: bool) -> None:
        if ok:
            self.failing.discard(key)
        elif key in self.watched:
            self.failing.add(key)


@cache
def _keeper_book() -> _KeeperBook:
    return _KeeperBook()


KEEPER_SERVERS = _define(Gauge, "keeper_servers", "Servers whose keeper is running in this hub")
KEEPER_FAILING = _define(Gauge, "keeper_failing_servers", "Servers whose keeper's last round failed")
# Bound at import to this module's book; after a reload the first definition keeps counting
# the first module's book, which is the one the spawner already imported.
KEEPER_SERVERS.set_function(lambda: len(_keeper_book().watched))
KEEPER_FAILING.set_function(lambda: len(_keeper_book().failing))


def keeper_watching(key: Hashable) -> None:
    """A keeper started for the server ``key`` (any hashable that names it, e.g. its service ID)."""
    _keeper_book().watching(key)


def keeper_done(key: Hashable) -> None:
    """The server's keeper stopped (server stopped, failed, or forgotten)."""
    _keeper_book().done(key)


def keeper_round(key: Hashable, ok: bool) -> None:
    """A keeper round ended; ``ok=False`` counts the server as failing until a round succeeds."""
    _keeper_book().round(key, ok)


# -- the janitor: its own registry, served on its own port ----------------------------------


@dataclass(frozen=True)
class JanitorMetrics:
    """The janitor's metrics, in a registry of their own (see :func:`janitor_metrics`)."""

    registry: CollectorRegistry
    passes: Counter
    deletions: Counter
    deletion_failures: Counter
    last_success: Gauge

    def pass_done(self, ok: bool) -> None:
        self.passes.labels("success" if ok else "failure").inc()
        if ok:
            self.last_success.set_to_current_time()

    def deleted(self, kind: str) -> None:
        self.deletions.labels(_janitor_kind(kind)).inc()

    def deletion_failed(self, kind: str) -> None:
        self.deletion_failures.labels(_janitor_kind(kind)).inc()


def _janitor_kind(kind: str) -> str:
    if kind not in JANITOR_KINDS:
        raise ValueError(f"unknown janitor object kind {kind!r}")
    return kind


@cache
def janitor_metrics() -> JanitorMetrics:
    """The janitor's metrics, created once per process in their own registry, with the
    process and platform collectors a scrape expects (prometheus_client adds those only to the
    default registry)."""
    from prometheus_client.gc_collector import GCCollector
    from prometheus_client.platform_collector import PlatformCollector
    from prometheus_client.process_collector import ProcessCollector

    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    kw: dict[str, Any] = {"registry": registry}
    metrics = JanitorMetrics(
        registry=registry,
        passes=_define(Counter, "janitor_passes_total", "Janitor passes, by outcome", ("outcome",), **kw),
        deletions=_define(Counter, "janitor_deletions_total", "Objects the janitor deleted, by kind", ("kind",), **kw),
        deletion_failures=_define(
            Counter,
            "janitor_deletion_failures_total",
            "Deletions the janitor attempted that failed, by kind",
            ("kind",),
            **kw,
        ),
        last_success=_define(
            Gauge,
            "janitor_last_success_timestamp_seconds",
            "Unix time the last successful janitor pass ended",
            **kw,
        ),
    )
    for outcome in OUTCOMES:
        metrics.passes.labels(outcome)
    for kind in JANITOR_KINDS:
        metrics.deletions.labels(kind)
        metrics.deletion_failures.labels(kind)
    return metrics


def serve_janitor_metrics(port: int, addr: str = "0.0.0.0") -> Any:
    """Serve the janitor's registry on ``addr:port`` (``/metrics``, any path in fact) from a
    daemon thread; returns prometheus_client's server (``.shutdown()``) and thread."""
    from prometheus_client import start_http_server

    return start_http_server(port, addr, registry=janitor_metrics().registry)
