"""Connect CA state: roots, rotation and leaf certificates.

Follows ``agent/connect_ca_endpoint.go``, ``agent/consul/connect_ca_endpoint.go`` (``ConnectCA.Roots``),
``agent/consul/leader_connect_ca.go`` (rotation, keeping the old root while cross-signing),
``agent/leafcert/`` (leaf cache, renewal between 60% and 90% of the lifetime) and
``agent/connect/ca/provider_consul.go`` (the built-in provider; certificates in ``ca.py``).
"""

from __future__ import annotations

import random

from .ca import ConnectCA
from .common import (
    _strip_private,
)


class ConnectCAState:
    """The active CA, the inactive roots still trusted, and issued leaves."""

    # ------------------------------------------------------------------ Connect CA
    def ca_roots(self) -> tuple[int, dict]:
        with self.lock:
            index = self.idx("ca-roots")
            return index, self.ca.roots_body(self.inactive_cas)

    def rotate_ca(self, keep_old: bool = True) -> str:
        """A new active root in the same trust domain, as a CA configuration change does
        (agent/consul/leader_connect_ca.go ``UpdateConfiguration``); returns its root ID.

        ``keep_old``: the old root stays in ``Roots`` with ``Active: false`` and cross-signs the
        new one (its certificate becomes the new root's ``IntermediateCerts``, appended to every
        leaf). Without it the old roots are gone at once, as after pruning, and nothing chains
        to them any more.

        Every cached leaf is re-issued under the new root and its index bumped, waking the
        blocking leaf queries; the agent's leaf manager does this on seeing the new active root
        (agent/leafcert/generate.go ``attemptLeafRefresh``: ``activeRootHasKey`` is false), after
        a random delay of up to ``caChangeJitterWindow`` (30 s) that the fake leaves out.
        """
        with self.lock:
            old = self.ca
            new = ConnectCA(self.now(), self.datacenter, cluster_id=old.cluster_id, root_serial=old.root_serial + 1)
            if keep_old:
                new.intermediate_pems = [old.cross_sign(new, self.now())]
                old.rotated_out_at = self.now()
                self.inactive_cas.append(old)
            else:
                self.inactive_cas = []
            self.ca = new
            new.create_index = self._bump("ca-roots")
            for service in list(self.leaves):
                self._issue_leaf(service)
            self.notify()
            return new.root_id

    def _issue_leaf(self, service: str) -> dict:
        idx = self._bump(f"leaf:{service}")
        leaf = self.ca.issue_leaf(service, self.now(), idx)
        life = leaf["_valid_before"] - leaf["_valid_after"]
        # leafcert: renew at a random point between 60% and 90% of the lifetime.
        leaf["_soft_expiry"] = leaf["_valid_after"] + life * random.uniform(0.6, 0.9)
        self.leaves[service] = leaf
        return leaf

    def leaf(self, service: str, secret: str | None, revalidate: bool) -> tuple[int, dict]:
        with self.lock:
            authz = self.resolve(secret)
            authz.require(authz.service_write(service), "service", "write", service)
            leaf = self.leaves.get(service)
            if leaf is None or (revalidate and self.now() >= leaf["_soft_expiry"]):
                leaf = self._issue_leaf(service)
            return leaf["ModifyIndex"], _strip_private(leaf)
