"""Traits of lifetimes: check TTL, deregistration, token rotation and intention lifetimes, the keeper's
interval, the orphan sweep's delay."""

from __future__ import annotations

from traitlets import Float, HasTraits, Int, validate

from .. import identity
from .limits import checked
from .settings import default as setting


class LifetimeConfig(HasTraits):
    """How long things live in Consul and how often the keeper refreshes them."""

    check_ttl = Int(
        setting("check_ttl"),
        help="""TTL (s) of the server's Consul check; the keeper passes it every keeper_interval.

        Keep it at least twice keeper_interval, so one missed round does not flap it.

            c.ConsulSpawner.check_ttl = 90
        """,
    ).tag(config=True)

    deregister_critical_after = Int(
        setting("deregister_critical_after"),
        help="""Seconds a critical check may last before the Consul agent deregisters the service
        (Consul's minimum: 60). Bounds how long a dead hub's services outlive it.

            c.ConsulSpawner.deregister_critical_after = 300
        """,
    ).tag(config=True)

    token_rotation_margin = Int(
        0,
        help="""Replace a server's token (a new login, the sidecar restarted with it) this many
        seconds before it expires. A token lives as long as the auth method's MaxTokenTTL
        (Consul cannot extend one). 0 (default): a tenth of that lifetime, or a minute when that
        leaves a third of it.

            c.ConsulSpawner.token_rotation_margin = 600
        """,
    ).tag(config=True)

    def _rotation_margin(self, token_lifetime: float) -> float:
        return self.token_rotation_margin or identity.rotation_margin(token_lifetime)

    intention_ttl = Int(
        setting("intention_ttl"),
        help="""Lifetime (s) written into each intention; the keeper extends it at half-life.

        Intentions have no expiry in Consul: the janitor removes ours once this has passed.

            c.ConsulSpawner.intention_ttl = 900
        """,
    ).tag(config=True)

    keeper_interval = Float(
        15.0,
        help="""Seconds between two rounds of a running server's keeper: it passes the TTL
        check, restores a registration Consul lost, extends the intentions at half-life, rotates
        the token when due, and takes the server down if its sidecar stays dead. poll() does
        none of this: it only reads.

            c.ConsulSpawner.keeper_interval = 10
        """,
    ).tag(config=True)

    orphan_sweep_delay = Float(
        60.0,
        help="""Seconds after hub start before it revokes what it owns in Consul but no server
        of its own holds (left by a hub killed mid-spawn, say), and removes such sidecar
        containers. The delay lets the hub restore its running servers first. 0 disables it;
        the janitor still cleans these after its grace period.

            c.ConsulSpawner.orphan_sweep_delay = 120
        """,
    ).tag(config=True)

    def lifetime_problem(self) -> str:
        """Why these lifetimes cannot work together ("" when they can): the keeper must come
        round at least twice within the check TTL (one missed round must not make the check
        critical) and within the intentions' half-life, when it extends them. Checked at each
        start, as traits may be set in any order."""
        for name, ttl in (("check_ttl", self.check_ttl), ("intention_ttl", self.intention_ttl)):
            if self.keeper_interval > ttl / 2:
                interval = self.keeper_interval
                return f"c.ConsulSpawner.keeper_interval ({interval:g} s) must be at most half of {name} ({ttl} s)"
        return ""

    @validate(
        "check_ttl",
        "deregister_critical_after",
        "token_rotation_margin",
        "intention_ttl",
        "keeper_interval",
    )
    def _valid_lifetime(self, proposal):
        return checked(proposal)
