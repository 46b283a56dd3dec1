"""The shipped Prometheus alert rules: valid, unit-tested by promtool, the same for k8s, and
about metrics the code really exports."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import yaml

from deploy.prometheus.operator_rules import render
from tests.tools import ensure_tool

PROM = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"


def test_promtool_checks_and_unit_tests_the_rules() -> None:
    promtool = ensure_tool("promtool", "prometheus")
    check = subprocess.run(
        [promtool, "check", "rules", "rules.yml"], cwd=PROM, capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS: 6 rules found" in check.stdout
    tested = subprocess.run(
        [promtool, "test", "rules", "rules_test.yml"], cwd=PROM, capture_output=True, text=True
    )
    print(tested.stdout)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def test_every_alert_has_a_firing_test_case() -> None:
    alerts = {
        r["alert"]
        for g in yaml.safe_load((PROM / "rules.yml").read_text())["groups"]
        for r in g["rules"]
    }
    cases = yaml.safe_load((PROM / "rules_test.yml").read_text())["tests"]
    fired = {t["alertname"] for case in cases for t in case["alert_rule_test"] if t["exp_alerts"]}
    silent = {
        t["alertname"] for case in cases for t in case["alert_rule_test"] if not t["exp_alerts"]
    }
    assert fired == alerts and silent == alerts  # each fires once and stays silent once


def test_the_rules_name_only_metrics_the_code_exports() -> None:
    from prometheus_client import REGISTRY

    import stream.metrics  # noqa: F401 - registers the metrics

    exported = set()
    for family in REGISTRY.collect():
        exported.add(family.name)
        if family.type == "counter":  # a labelled counter with no child yet has no samples
            exported.add(f"{family.name}_total")
        exported.update(s.name for s in family.samples)
    text = (PROM / "rules.yml").read_text()
    used = set(re.findall(r"\bwatchnext_[a-z_]+", text))
    assert used and used <= exported, used - exported


def test_the_kubernetes_rules_are_the_rules_file() -> None:
    committed = (PROM.parents[0] / "k8s" / "alerts.yaml").read_text()
    assert committed == render(), "regenerate: python -m deploy.prometheus.operator_rules"
