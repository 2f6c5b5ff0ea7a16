"""The proxy: its registration, certificates, intentions and protocol followed with blocking
queries, listeners opened to match, and the lifecycle (start, stop, status).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

from .admin import _AdminServer, _bind_admin
from .agent import BLOCKING_WAIT, Agent, ConsulHTTPError, ProxyError, TokenRefused, _check_refused
from .authorization import Authorizer
from .certificates import Material, build_material
from .http_path import HTTPPath
from .ready import DEFAULT_ADMIN_SOCKET
from .relay import Inbound, Listener, ListenerSpec, Relay, listener_specs

log = logging.getLogger("connectproxy")

DEFAULT_REAUTHORIZE_INTERVAL = 5.0
DEFAULT_DRAIN_TIME = 600.0  # Envoy's --drain-time-s default (source/server/options_impl.cc)


class ConnectProxy(Relay, HTTPPath, Authorizer):
    """A Connect sidecar proxy for one registered ``connect-proxy`` service (see the package docstring)."""

    def __init__(
        self,
        agent: Agent,
        proxy_id: str,
        admin_socket: str | None = DEFAULT_ADMIN_SOCKET,
        reauthorize_interval: float = DEFAULT_REAUTHORIZE_INTERVAL,
        drain_time: float = DEFAULT_DRAIN_TIME,
        blocking_wait: float = BLOCKING_WAIT,
    ):
        self.agent = agent
        self.proxy_id = proxy_id
        self.admin_socket = admin_socket
        self.reauthorize_interval = reauthorize_interval
        self.drain_time = drain_time
        self.blocking_wait = blocking_wait
        self.state = "PRE_INITIALIZING"
        self.exit_code = 0
        self.stopped = threading.Event()
        self._done = threading.Event()
        self._lock = threading.RLock()
        self._reauth_now = threading.Event()
        self.registration: dict = {}
        self.service = ""
        self.self_uri = ""
        self.material: Material | None = None
        self._leaf: dict | None = None
        self._roots: dict | None = None
        self.intentions: list[dict] = []
        self.default_allow = False
        self._proto_sources: dict[str, str | None] = {"registration": None, "service": None, "proxy": None}
        self.listeners: dict[ListenerSpec, Listener] = {}
        self.inbound: set[Inbound] = set()
        self._admin: _AdminServer | None = None
        self.counters = {
            "authorize": 0,
            "denied_connections": 0,
            "drained": 0,
            "closed_on_reauthorize": 0,
            "denied_requests": 0,
        }

    # ------------------------------------------------------------------ lifecycle
    def start(self, timeout: float = 60.0) -> ConnectProxy:
        """Load everything, bind, start the watches; ready when this returns. ProxyError otherwise."""
        try:
            if self.admin_socket:
                admin = self._admin = _bind_admin(self.admin_socket, self)
                threading.Thread(target=admin.serve_forever, args=(0.1,), name="admin", daemon=True).start()
            self.state = "INITIALIZING"
            registration, content_hash = self._wait_for_registration(timeout)
            self._set_registration(registration)
            roots, roots_index, _ = self.agent.blocking("/v1/agent/connect/ca/roots", None)
            leaf, leaf_index, _ = self.agent.blocking(self._leaf_path(), None)
            if not roots or not leaf:
                raise ProxyError("the agent has no Connect CA roots or leaf certificate for " + self.service)
            self._set_certs(leaf=leaf, roots=roots)
            ixns, ixn_index, headers = self.agent.blocking(self._intentions_path(), None, query=self._intentions_q())
            self._set_intentions(ixns, headers)
            sd, sd_index, _ = self.agent.blocking(f"/v1/config/service-defaults/{self._q(self.service)}", None)
            pd, pd_index, _ = self.agent.blocking("/v1/config/proxy-defaults/global", None)
            self._set_protocol("service", (sd or {}).get("Protocol"))
            self._set_protocol("proxy", ((pd or {}).get("Config") or {}).get("protocol"))
            self._apply_listeners(registration, strict=True)
            if self.stopped.is_set():
                raise ProxyError("stopped while starting")
        except ConsulHTTPError as e:
            self.stop()
            _check_refused(e)
            raise ProxyError(f"Consul agent error: {e}") from None
        except OSError as e:
            self.stop()
            raise ProxyError(str(e)) from None
        except BaseException:
            self.stop()
            raise
        watches = [
            ("registration", self._watch_registration, content_hash),
            ("roots", self._watch_roots, roots_index),
            ("leaf", self._watch_leaf, leaf_index),
            ("intentions", self._watch_intentions, ixn_index),
            ("service-defaults", self._watch_service_defaults, sd_index),
            ("proxy-defaults", self._watch_proxy_defaults, pd_index),
        ]
        for name, fn, index in watches:
            threading.Thread(target=self._watch_loop, args=(name, fn, index), name=f"watch-{name}", daemon=True).start()
        threading.Thread(target=self._reauthorize_loop, name="reauthorize", daemon=True).start()
        self.state = "LIVE"
        log.info(
            "proxy %s for %s is LIVE: %s",
            self.proxy_id,
            self.service,
            ", ".join(f"{s.kind} {s.destination or self.service} on {s.host}:{s.port}" for s in self.listeners),
        )
        return self

    def stop(self, exit_code: int | None = None) -> None:
        """Close listeners, connections and the admin socket (idempotent, any thread)."""
        with self._lock:
            first = not self.stopped.is_set()
            if first and exit_code is not None:
                self.exit_code = exit_code
            self.state = "DRAINING" if self.state == "LIVE" else self.state
            self.stopped.set()
        self._reauth_now.set()
        if not first:
            self._done.wait(30)
            return
        try:
            with self._lock:
                for listener in self.listeners.values():
                    listener.close()
                self.listeners.clear()
                conns, self.inbound = list(self.inbound), set()
            for conn in conns:
                conn.close()
            admin, self._admin = self._admin, None
            if admin is not None:
                admin.shutdown()
                admin.server_close()
                with contextlib.suppress(OSError):
                    os.unlink(self.admin_socket)
        finally:
            self._done.set()

    def wait(self) -> int:
        """Block until stop() has finished; the exit status (0, or 1 after a fatal error)."""
        self._done.wait()
        return self.exit_code

    def status(self) -> dict:
        with self._lock:
            material = self.material
            return {
                "state": self.state,
                "proxy_id": self.proxy_id,
                "service": self.service,
                "protocol": self.protocol,
                "active_root_id": material.active_root_id if material else "",
                "leaf_serial": material.leaf.get("SerialNumber", "") if material else "",
                "leaf_index": material.leaf.get("ModifyIndex", 0) if material else 0,
                "listeners": [
                    {"kind": s.kind, "host": s.host, "port": s.port, "destination": s.destination}
                    for s in self.listeners
                ],
                "open_inbound": len(self.inbound),
                "draining": sum(1 for c in self.inbound if c.draining),
                "intentions": len(self.intentions),
                "default_allow": self.default_allow,
                "counters": dict(self.counters),
            }

    # ------------------------------------------------------------------ configuration
    @staticmethod
    def _q(name: str) -> str:
        return urllib.parse.quote(name, safe="")

    def _leaf_path(self) -> str:
        return f"/v1/agent/connect/ca/leaf/{self._q(self.service)}"

    @staticmethod
    def _intentions_path() -> str:
        return "/v1/connect/intentions/match"

    def _intentions_q(self) -> dict:
        return {"by": "destination", "name": self.service}

    @property
    def protocol(self) -> str:
        for source in ("registration", "service", "proxy"):
            value = self._proto_sources.get(source)
            if value:
                return str(value).lower()
        return "tcp"

    def _set_protocol(self, source: str, value) -> None:
        before = self.protocol
        self._proto_sources[source] = value or None
        if self.protocol != before:
            log.info("protocol of %s is now %s", self.service, self.protocol)
            self._reauth_now.set()  # connections opened in the other mode get closed

    def _wait_for_registration(self, timeout: float) -> tuple[dict, str]:
        deadline = time.monotonic() + timeout
        delay = 0.1
        path = f"/v1/agent/service/{self._q(self.proxy_id)}"
        while True:
            try:
                body, headers = self.agent.call("GET", path)
                lowered = {k.lower(): v for k, v in headers.items()}
                return body, lowered.get("x-consul-contenthash") or body.get("ContentHash", "")
            except ConsulHTTPError as e:
                _check_refused(e)
                if e.status != 404:
                    raise
                last = f"{self.proxy_id} is not registered"
            except OSError as e:
                last = str(e)
            if time.monotonic() >= deadline or self.stopped.is_set():
                raise ProxyError(f"no registration {self.proxy_id} within {timeout:g}s: {last}")
            log.info("waiting for %s (%s)", self.proxy_id, last)
            self.stopped.wait(delay)
            delay = min(delay * 2, 2.0)

    def _set_registration(self, registration: dict) -> None:
        if registration.get("Kind") != "connect-proxy":
            raise ProxyError(f"{self.proxy_id} is not a connect-proxy service (Kind {registration.get('Kind')!r})")
        proxy = registration.get("Proxy") or {}
        service = proxy.get("DestinationServiceName") or ""
        if not service:
            raise ProxyError(f"{self.proxy_id} has no Proxy.DestinationServiceName")
        if self.service and service != self.service:
            log.error("registration now names %s instead of %s; ignoring the change", service, self.service)
            return
        with self._lock:
            self.registration = registration
            self.service = service
        self._set_protocol("registration", (proxy.get("Config") or {}).get("protocol"))

    def _set_certs(self, leaf: dict | None = None, roots: dict | None = None) -> None:
        with self._lock:
            self._leaf = leaf or self._leaf
            self._roots = roots or self._roots
            material = build_material(self._leaf, self._roots)
            self.material = material
            self.self_uri = material.leaf.get("ServiceURI") or ""
        log.info("certificates: leaf %s, active root %s", material.leaf.get("SerialNumber"), material.active_root_id)

    def _set_intentions(self, body, headers: dict) -> None:
        policy = (headers.get("x-consul-default-acl-policy") or "").lower()
        with self._lock:
            self.intentions = list((body or {}).get(self.service) or [])
            if policy in ("allow", "deny"):
                self.default_allow = policy == "allow"
        self._reauth_now.set()

    def _apply_listeners(self, registration: dict, strict: bool) -> None:
        wanted = listener_specs(registration)
        with self._lock:
            if self.stopped.is_set():
                return
            for spec in set(self.listeners) - wanted:
                self.listeners.pop(spec).close()
                log.info("closed %s listener %s:%d", spec.kind, spec.host, spec.port)
            for spec in sorted(wanted - set(self.listeners), key=lambda s: (s.kind, s.port)):
                handle = self._handle_inbound if spec.kind == "public" else self._handle_outbound
                try:
                    self.listeners[spec] = Listener(spec, handle)
                except ProxyError:
                    if strict:
                        raise
                    log.exception("listener not opened (will retry on the next registration change)")

    # ------------------------------------------------------------------ watches
    def _watch_loop(self, name: str, fn, index) -> None:
        delay = 0.5
        while not self.stopped.is_set():
            started = time.monotonic()
            try:
                new_index = fn(index)
            except TokenRefused as e:
                log.error("%s; stopping", e)
                self.stop(exit_code=1)
                return
            except Exception as e:  # keep serving the last known state
                if self.stopped.is_set():
                    return
                log.warning("watch %s: %s (retrying in %.1fs)", name, e, delay)
                self.stopped.wait(delay)
                delay = min(delay * 2, 10.0)
                continue
            delay = 0.5
            if new_index == index and time.monotonic() - started < 0.05:
                self.stopped.wait(0.5)  # an agent that does not block: never spin
            index = new_index

    def _watch_registration(self, content_hash: str) -> str:
        path = f"/v1/agent/service/{self._q(self.proxy_id)}"
        query = {"hash": content_hash, "wait": f"{int(self.blocking_wait)}s"} if content_hash else None
        try:
            body, headers = self.agent.call("GET", path, query, timeout=10 + self.blocking_wait * 1.1)
        except ConsulHTTPError as e:
            _check_refused(e)
            if e.status == 404:
                log.warning("registration %s is gone; keeping the current listeners", self.proxy_id)
                self.stopped.wait(self.blocking_wait / 6)
                return content_hash
            raise
        new_hash = {k.lower(): v for k, v in headers.items()}.get("x-consul-contenthash") or ""
        if new_hash and new_hash != content_hash and not self.stopped.is_set():
            log.info("registration %s changed", self.proxy_id)
            self._set_registration(body)
            self._apply_listeners(body, strict=False)
        return new_hash or content_hash

    def _watch_roots(self, index: int) -> int:
        body, new_index, _ = self.agent.blocking("/v1/agent/connect/ca/roots", index, self.blocking_wait)
        if body and new_index != index and not self.stopped.is_set():
            self._set_certs(roots=body)
        return new_index

    def _watch_leaf(self, index: int) -> int:
        body, new_index, _ = self.agent.blocking(self._leaf_path(), index, self.blocking_wait)
        if body and new_index != index and not self.stopped.is_set():
            self._set_certs(leaf=body)
        return new_index

    def _watch_intentions(self, index: int) -> int:
        body, new_index, headers = self.agent.blocking(
            self._intentions_path(), index, self.blocking_wait, query=self._intentions_q()
        )
        if new_index != index and not self.stopped.is_set():
            self._set_intentions(body, headers)
        return new_index

    def _watch_service_defaults(self, index: int) -> int:
        path = f"/v1/config/service-defaults/{self._q(self.service)}"
        body, new_index, _ = self.agent.blocking(path, index, self.blocking_wait)
        self._set_protocol("service", (body or {}).get("Protocol"))
        return new_index

    def _watch_proxy_defaults(self, index: int) -> int:
        body, new_index, _ = self.agent.blocking("/v1/config/proxy-defaults/global", index, self.blocking_wait)
        self._set_protocol("proxy", ((body or {}).get("Config") or {}).get("protocol"))
        return new_index

    # ------------------------------------------------------------------ authorization
