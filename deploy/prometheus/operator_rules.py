"""deploy/k8s/alerts.yaml from deploy/prometheus/rules.yml: one set of alert rules, two forms.

Plain Prometheus (compose) reads ``rules.yml``; the Prometheus Operator (Kubernetes) wants the
same groups inside a ``PrometheusRule``. ``python -m deploy.prometheus.operator_rules`` prints
the manifest; a contract test fails when the committed one differs from what this renders.
"""

from __future__ import annotations

from pathlib import Path

import yaml

RULES = Path(__file__).with_name("rules.yml")
HEADER = (
    "# The alert rules of deploy/prometheus/rules.yml for the Prometheus Operator (same groups;\n"
    "# tests/contract/test_alert_rules.py keeps the two equal). Edit rules.yml, then regenerate:\n"
    "# python -m deploy.prometheus.operator_rules > deploy/k8s/alerts.yaml\n"
)


def render(rules: Path = RULES) -> str:
    """The PrometheusRule manifest holding ``rules``' groups."""
    groups = yaml.safe_load(rules.read_text())["groups"]
    doc = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "watchnext", "labels": {"app.kubernetes.io/part-of": "watchnext"}},
        "spec": {"groups": groups},
    }
    return HEADER + yaml.safe_dump(doc, sort_keys=False, width=100)


if __name__ == "__main__":
    print(render(), end="")
