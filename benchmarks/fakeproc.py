"""The fake Consul agent in a process of its own, as a real agent would be: the hub-side code
under measurement does not share a GIL with the agent's HTTP server. Same knobs and the same
request counting as ``FakeConsul`` (``requests``, ``count``), fetched over a pipe."""

from __future__ import annotations

import multiprocessing
import re


def indexed_alias_recompute() -> None:
    """Replace the fake's alias-check refresh, which scans every check for every alias check on
    each registration (O(checks^2) per call: 400 registrations take 5.6 s, 500 concurrent ones
    time out), by the same computation over a per-service index (O(checks)). Same statuses,
    same outputs; Consul itself updates an alias check from a watch on its one target."""
    from consulspawner_dev.fakeconsul import state as fake_state

    def _recompute_aliases(self) -> None:
        statuses: dict[str, list[str]] = {}
        for chk in self.checks.values():
            if not chk.get("_alias"):
                statuses.setdefault(chk["ServiceID"], []).append(chk["Status"])
        for chk in list(self.checks.values()):
            target = chk.get("_alias")
            if not target:
                continue
            if target not in self.services:
                status, output = fake_state.CRITICAL, f"Service {target} could not be found on node {self.node_name}"
            else:
                found = statuses.get(target) or []
                if not found:
                    status, output = fake_state.PASSING, "No checks found."
                else:
                    status = max(found, key=lambda s: fake_state._STATUS_RANK.get(s, 2))
                    output = (
                        "All checks passing."
                        if status == fake_state.PASSING
                        else f"Aliased service has {status} checks"
                    )
            self._set_check_status(chk, status, output, self.now())

    fake_state.State._recompute_aliases = _recompute_aliases


def _serve(conn, kwargs: dict, fast_aliases: bool) -> None:
    from consulspawner_dev.fakeconsul import FakeConsul

    if fast_aliases:
        indexed_alias_recompute()
    fake = FakeConsul(**kwargs).start()
    conn.send(fake.url)
    try:
        while True:
            command = conn.recv()
            if command == "requests":
                conn.send(fake.requests)
            elif command == "stop":
                break
    except EOFError:
        pass
    finally:
        fake.close()
        conn.close()


class FakeConsulProcess:
    """``with FakeConsulProcess(acl_master_token=..., host=...) as fake: fake.url, fake.count(...)``."""

    def __init__(self, *, fast_aliases: bool = False, **kwargs):
        self.fast_aliases = fast_aliases
        # None: Consul's real default timings (TCP check every 10 s), as the figures ask.
        kwargs.setdefault("check_interval_override", None)
        self.kwargs = kwargs
        self._conn = None
        self._process = None
        self.url = ""

    def __enter__(self) -> FakeConsulProcess:
        context = multiprocessing.get_context("spawn")
        parent, child = context.Pipe()
        self._process = context.Process(target=_serve, args=(child, self.kwargs, self.fast_aliases), daemon=True)
        self._process.start()
        child.close()
        self._conn = parent
        if not parent.poll(30):
            raise RuntimeError("the fake Consul process did not start within 30 s")
        self.url = parent.recv()
        return self

    def __exit__(self, *exc) -> None:
        try:
            self._conn.send("stop")
        except (BrokenPipeError, OSError):
            pass
        self._process.join(10)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()

    @property
    def requests(self) -> list[tuple[str, str]]:
        self._conn.send("requests")
        return self._conn.recv()

    def count(self, method: str, path_regex: str) -> int:
        regex = re.compile(path_regex)
        method = (method or "*").upper()
        return sum(1 for m, p in self.requests if method in ("*", m) and regex.search(p))
