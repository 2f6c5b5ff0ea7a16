"""The Grafana dashboard queries only metrics that exist, with label values they can take."""

import json
import re
from pathlib import Path

import jupyterhub.metrics  # noqa: F401  (registers the hub's own metrics, as the hub does)
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from consulspawner import metrics

DASHBOARD = Path(__file__).resolve().parent.parent / "docker" / "stack" / "grafana" / "consulspawner-dashboard.json"
NAME = re.compile(r"\b((?:consulspawner|jupyterhub)_[a-z0-9_]+)(\{[^}]*\})?")
MATCHER = re.compile(r'(\w+)\s*(=|!=|=~|!~)\s*"([^"]*)"')


def exported() -> dict[str, set[tuple[str, str]]]:
    """Every sample name the hub's registry and the janitor's expose, with its label pairs."""
    found: dict[str, set[tuple[str, str]]] = {}
    for registry in (REGISTRY, metrics.janitor_metrics().registry):
        for family in text_string_to_metric_families(generate_latest(registry).decode()):
            for sample in family.samples:
                found.setdefault(sample.name, set()).update(sample.labels.items())
    return found


def queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]


def test_every_queried_metric_exists_with_those_labels():
    # Per-destination series appear once the writer has written an entry, as in a running hub.
    metrics.observe_entry("trino-coordinator", {"Kind": "service-intentions", "Name": "trino-coordinator"})
    known = exported()
    exprs = queries()
    assert len(exprs) >= 10
    used = set()
    for expr in exprs:
        for name, selector in NAME.findall(expr):
            used.add(name)
            assert name in known, f"{name} (in {expr!r}) is not exported"
            for label, op, value in MATCHER.findall(selector or ""):
                assert op == "=", expr
                assert (label, value) in known[name], f"{name} has no {label}={value!r} series"
        for label in re.findall(r"by \(([^)]*)\)", expr):
            for part in label.split(","):
                part = part.strip()
                names = [n for n, _ in NAME.findall(expr)]
                assert part == "le" or any(part in {k for k, _ in known[n]} for n in names), (part, expr)
    # Every metric of ours is on the dashboard (a histogram or counter by any of its sample names).
    ours = {n for n in known if n.startswith("consulspawner_") and not n.endswith("_created")}
    families = {re.sub(r"_(bucket|count|sum)$", "", n) for n in ours}
    shown = {re.sub(r"_(bucket|count|sum)$", "", n) for n in used}
    assert families <= shown, families - shown


def test_the_dashboard_is_importable_json_with_unique_panel_ids():
    dashboard = json.loads(DASHBOARD.read_text())
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert dashboard["uid"] == "consulspawner"
    assert {v["name"] for v in dashboard["templating"]["list"]} == {"datasource"}
