"""The provisioned Grafana dashboard only queries metrics the worker exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml
from prometheus_client import REGISTRY

import stream.metrics  # noqa: F401  (registers the worker's metrics)

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy/grafana/dashboards/watchnext.json"


def _exported() -> set[str]:
    names: set[str] = set()
    for family in REGISTRY.collect():
        names.add(family.name)
        names.update(s.name for s in family.samples)
        # labelled series appear with their first observation; the names are fixed by type
        if family.type == "counter":
            names.add(f"{family.name}_total")
        if family.type == "histogram":
            names.update({f"{family.name}_bucket", f"{family.name}_sum", f"{family.name}_count"})
    return names


def test_every_dashboard_metric_is_exported() -> None:
    doc = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in doc["panels"] for t in p["targets"]]
    queried = {m for e in exprs for m in re.findall(r"\bwatchnext_[a-z0-9_]+", e)}
    assert len(queried) >= 8
    missing = queried - _exported()
    assert not missing, f"dashboard queries metrics the worker does not export: {missing}"


def test_provisioning_points_at_the_dashboard_folder() -> None:
    root = DASHBOARD.parents[1] / "provisioning"
    prov = yaml.safe_load((root / "dashboards/watchnext.yaml").read_text())
    assert prov["providers"][0]["options"]["path"].endswith("dashboards")
    ds = yaml.safe_load((root / "datasources/prometheus.yaml").read_text())
    assert ds["datasources"][0]["uid"] == "prometheus"
    panels = json.loads(DASHBOARD.read_text())["panels"]
    assert {p["datasource"]["uid"] for p in panels} == {"prometheus"}
