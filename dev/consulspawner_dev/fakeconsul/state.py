"""The fake agent's state and Consul's rules for changing it.

Everything here is synchronous and guarded by one re-entrant lock, so the HTTP handlers (on the
server's event loop) and the test thread (``advance()``, ``snapshot()``) can both use it. The
state is split the way Consul's source splits its subsystems, one mixin per module:

- :mod:`.clock` - the fake clock, the raft-like index and blocking-query wake-ups;
- :mod:`.agent_catalog` - agent service registration and the catalog;
- :mod:`.health` - checks, reaping and the health views;
- :mod:`.acl_tokens` - ACL tokens and policies; :mod:`.acl_login` - auth methods, binding
  rules, login and logout;
- :mod:`.config_entries` and :mod:`.intentions` - config entries and intentions;
- :mod:`.connect_ca` - the Connect CA.

Errors are raised as :class:`ConsulError` carrying the status code and text Consul would answer.
"""

from __future__ import annotations

import copy
import random  # noqa: F401  (tests patch fakeconsul.state.random.uniform)
import threading
import time
import uuid

from .acl_login import AclLogin
from .acl_tokens import AclTokens
from .agent_catalog import AgentCatalog
from .ca import ConnectCA
from .clock import Clock
from .common import _STATUS_RANK, CONSUL_VERSION, CRITICAL, PASSING, WARNING  # noqa: F401  (re-exported: server, benchmarks)
from .config_entries import ConfigEntries
from .connect_ca import ConnectCAState
from .health import Health
from .intentions import Intentions


class State(Clock, AclTokens, AclLogin, AgentCatalog, Health, ConfigEntries, Intentions, ConnectCAState):
    """All agent, catalog, config-entry, ACL and CA state of one fake Consul agent."""

    def __init__(
        self,
        datacenter: str = "dc1",
        node_name: str = "fake-node",
        acl_master_token: str | None = None,
        default_intention_allow: bool | None = None,
        check_interval_override: float | None = None,
        check_initial_stagger: bool = False,
    ):
        self.lock = threading.RLock()
        self.datacenter = datacenter
        self.node_name = node_name
        self.node_id = str(uuid.uuid4())
        self.acl_enabled = acl_master_token is not None
        self.default_intention_allow = default_intention_allow
        self.check_interval_override = check_interval_override
        self.check_initial_stagger = check_initial_stagger
        self.clock_offset = 0.0
        self._reap_epoch = time.time()
        self._reap_runs = 0
        self.index = 0
        self.table_index: dict[str, int] = {}
        self._waiters: set = set()
        self.services: dict[str, dict] = {}
        self.checks: dict[str, dict] = {}
        self.config_entries: dict[tuple[str, str], dict] = {}
        self.tokens: dict[str, dict] = {}
        self.policies: dict[str, dict] = {}
        self.auth_methods: dict[str, dict] = {}
        self.binding_rules: dict[str, dict] = {}
        self.secret_reads: list[dict] = []  # see AclTokens._disclose
        self._parsed_rules: dict[str, dict] = {}
        self.leaves: dict[str, dict] = {}
        self._bump("nodes")  # the node itself registers first, as the first raft writes do
        self.ca = ConnectCA(self.now(), datacenter)
        self.ca.create_index = self._bump("ca-roots")
        self.inactive_cas: list[ConnectCA] = []
        if self.acl_enabled:
            self._add_builtin_tokens(acl_master_token)

    def snapshot(self) -> dict:
        """Deep copy of the state, in the shape FakeConsul.snapshot() documents."""
        with self.lock:
            return {
                "services": {sid: self._agent_service_view(s) for sid, s in self.services.items()},
                "checks": {cid: self._check_view(c) for cid, c in self.checks.items()},
                "tokens": {a: self._token_view(t) for a, t in self.tokens.items() if not self._token_expired(t)},
                "config_entries": {k: copy.deepcopy(v) for k, v in self.config_entries.items()},
                "index": self.index,
            }
