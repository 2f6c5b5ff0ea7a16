"""Checks and health: TTL updates, check runs, alias checks, critical-service reaping, health views.

Follows ``agent/agent_endpoint.go`` (``AgentCheckPass``/``Warn``/``Fail``), ``agent/checks/check.go``
(``CheckTTL``, ``CheckTCP``), ``agent/checks/alias.go``, ``agent/agent.go`` (``reapServices``,
``updateTTLCheck``), ``agent/health_endpoint.go`` and ``agent/consul/health_endpoint.go``
(``/v1/health/service``, ``/v1/health/connect``, ``/v1/health/checks``).
"""

from __future__ import annotations

from .acl import (
    ConsulError,
)
from .common import (
    _STATUS_RANK,
    CHECK_REAP_INTERVAL,
    CRITICAL,
    PASSING,
    TCP_DEFAULT_TIMEOUT,
    acl_filtered,
)


class Health:
    """Check status, the periodic pass (runs, aliases, reaping) and the health views."""

    def check_update(self, cid: str, status: str, output: str, secret: str | None) -> None:
        """PUT /v1/agent/check/pass|warn|fail/<id> (agentCheckUpdate + updateTTLCheck)."""
        with self.lock:
            authz = self.resolve(secret)
            chk = self.checks.get(cid)
            if chk is None:
                raise ConsulError(
                    404, f'Unknown check ID "{cid}". Ensure that the check ID is passed, not the check name.'
                )
            if chk["ServiceName"]:
                authz.require(authz.service_write(chk["ServiceName"]), "service", "write", chk["ServiceName"])
            else:
                authz.require(authz.node_write(self.node_name), "node", "write", self.node_name)
            if not chk["_ttl"]:
                raise ConsulError(500, f'CheckID "{cid}" does not have associated TTL')
            chk["_ttl_deadline"] = self.now() + chk["_ttl"]
            self._set_check_status(chk, status, output, self.now())
            self._recompute_aliases()

    def _set_check_status(self, chk: dict, status: str, output: str, when: float) -> bool:
        """local.State.UpdateCheck: record status/output, track when it became critical."""
        if status == CRITICAL:
            if chk["_critical_since"] is None:
                chk["_critical_since"] = when
        else:
            chk["_critical_since"] = None
        if chk["Status"] == status and chk["Output"] == output:
            return False
        chk["Status"] = status
        chk["Output"] = output
        svc = self.services.get(chk["ServiceID"])
        keys = ["checks"] + (self._touch_service(svc) if svc else [])
        chk["ModifyIndex"] = self._bump(*keys)
        return True

    def _recompute_aliases(self) -> None:
        """Alias checks mirror the aggregate health of the aliased local service."""
        for chk in list(self.checks.values()):
            target = chk.get("_alias")
            if not target:
                continue
            if target not in self.services:
                status, output = CRITICAL, f"Service {target} could not be found on node {self.node_name}"
            else:
                statuses = [
                    c["Status"] for c in self.checks.values() if c["ServiceID"] == target and not c.get("_alias")
                ]
                if not statuses:
                    status, output = PASSING, "No checks found."
                else:
                    status = max(statuses, key=lambda s: _STATUS_RANK.get(s, 2))
                    output = "All checks passing." if status == PASSING else f"Aliased service has {status} checks"
            self._set_check_status(chk, status, output, self.now())

    # ------------------------------------------------------------------ periodic pass
    def run_pass(self) -> list[tuple[str, str, float]]:
        """TTL expiry, alias refresh, reaping, leaf renewal and token expiry at the fake clock.

        Returns the TCP checks now due, as (check id, address, timeout), for the caller to dial.
        """
        with self.lock:
            now = self.now()
            for chk in list(self.checks.values()):
                deadline = chk.get("_ttl_deadline")
                if chk["_ttl"] and deadline is not None and now > deadline:
                    # CheckTTL timer fired at the deadline: critical, "TTL expired".
                    chk["_ttl_deadline"] = None
                    self._set_check_status(chk, CRITICAL, "TTL expired", deadline)
            self._recompute_aliases()
            # The reaper runs on its own 30s timer (fake clock), not on every pass.
            runs = int((now - self._reap_epoch) // CHECK_REAP_INTERVAL)
            if runs > self._reap_runs:
                self._reap_runs = runs
                self._reap(self._reap_epoch + runs * CHECK_REAP_INTERVAL)
            for service, leaf in list(self.leaves.items()):
                if now >= leaf["_soft_expiry"]:
                    self._issue_leaf(service)
            expired = [a for a, t in self.tokens.items() if self._token_expired(t)]
            for accessor in expired:
                del self.tokens[accessor]
            if expired:
                self._bump("acl-tokens")
            due = []
            for chk in self.checks.values():
                if chk["_tcp"] and chk["_next_run"] is not None and chk["_next_run"] <= now:
                    interval = self.check_interval_override or chk["_interval"] or 10.0
                    chk["_next_run"] = now + interval
                    timeout = min(chk["_timeout"] or TCP_DEFAULT_TIMEOUT, 5.0)
                    due.append((chk["CheckID"], chk["_tcp"], timeout))
            return due

    def _reap(self, now: float) -> None:
        """agent.reapServicesInternal: remove services critical longer than their deregister time."""
        reaped = set()
        for chk in list(self.checks.values()):
            sid = chk["ServiceID"]
            if not sid or sid in reaped or chk.get("_critical_since") is None or not chk["_deregister"]:
                continue
            # CriticalFor() at the reaper run's time
            if now - chk["_critical_since"] > chk["_deregister"]:
                reaped.add(sid)
                self._remove_service(sid)
        if reaped:
            self._recompute_aliases()

    def set_tcp_result(self, cid: str, ok: bool, output: str) -> None:
        with self.lock:
            chk = self.checks.get(cid)
            if chk is None:
                return
            self._set_check_status(chk, PASSING if ok else CRITICAL, output, self.now())
            self._recompute_aliases()

    def advance(self, seconds: float) -> list[tuple[str, str, float]]:
        with self.lock:
            self.clock_offset += seconds
            return self.run_pass()

    def health_service(
        self, name: str, secret: str | None, passing: bool, tags: list[str], connect: bool = False
    ) -> tuple[int, list]:
        """/v1/health/service/<name> or, with connect=True, /v1/health/connect/<name>."""
        with self.lock:
            authz = self.resolve(secret)
            if connect:
                # Connect-capable instances: proxies for the service, or connect-native instances.
                def matches(svc):
                    if svc.get("Kind") == "connect-proxy":
                        return svc["Proxy"].get("DestinationServiceName") == name
                    return svc["Service"] == name and (svc.get("Connect") or {}).get("Native")

                index = self.idx(f"connect:{name}", "nodes")
                # health_endpoint.go ServiceNodes: a connect query needs service:read on the
                # service whose proxies it finds; without it the answer is empty.
                if not authz.service_read(name):
                    return index, []
            else:

                def matches(svc):
                    return svc["Service"] == name

                index = self.idx(f"service:{name}", "nodes")
            out = []
            removed = False
            for svc in sorted(self.services.values(), key=lambda s: s["ID"]):
                if not matches(svc) or any(t not in svc["Tags"] for t in tags):
                    continue
                if not self._visible(authz, svc):
                    removed = True
                    continue
                checks = [self._serf_check()] + [
                    self._check_view(c) for c in self.checks.values() if c["ServiceID"] == svc["ID"]
                ]
                if passing and any(c["Status"] != PASSING for c in checks):
                    continue
                out.append({"Node": self._node_view(), "Service": self._node_service_view(svc), "Checks": checks})
            return index, acl_filtered(out, removed)

    def health_checks(self, name: str, secret: str | None) -> tuple[int, list]:
        with self.lock:
            authz = self.resolve(secret)
            found = [c for c in sorted(self.checks.values(), key=lambda c: c["CheckID"]) if c["ServiceName"] == name]
            # aclfilter filterHealthChecks: node:read on the check's node AND service:read.
            allowed = authz.service_read(name) and authz.node_read(self.node_name)
            out = [self._check_view(c) for c in found] if allowed else []
            return self.idx(f"service:{name}", "nodes"), acl_filtered(out, len(out) != len(found))
