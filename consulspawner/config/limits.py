"""The traits' side of :data:`settings.LIMITS`: one validator for every limited trait."""

from __future__ import annotations

from traitlets import TraitError

from ..consul import parse_address
from . import settings


def checked(proposal):
    """A ``@validate`` body: the proposed value if it is within its limit in
    :data:`settings.LIMITS`, else a TraitError naming the setting."""
    try:
        settings.check(proposal.trait.name, proposal.value)
    except ValueError as e:
        raise TraitError(f"c.ConsulSpawner.{e}") from e
    return proposal.value


def address(proposal):
    """A ``@validate`` body for a Consul address trait: empty, or one ``parse_address`` takes."""
    if proposal.value:
        try:
            parse_address(proposal.value)
        except ValueError as e:
            raise TraitError(str(e)) from e
    return proposal.value
