"""Offline checks of deploy/: YAML parses, required fields, settings and topics match the code."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from stream.topics import topic_specs
from watchnext.settings import Settings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
ENV_NAME = re.compile(r"WATCHNEXT_[A-Z0-9_]+")


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _k8s() -> list[dict[str, Any]]:
    return [d for p in sorted((DEPLOY / "k8s").glob("*.yaml")) for d in _docs(p)]


def _kind(kind: str) -> list[dict[str, Any]]:
    return [d for d in _k8s() if d["kind"] == kind]


def _settings_env() -> set[str]:
    return {f"WATCHNEXT_{name.upper()}" for name in Settings.model_fields}


def test_every_manifest_parses_and_names_its_kind() -> None:
    for d in _k8s():
        assert {"apiVersion", "kind", "metadata"} <= set(d) or d["kind"] == "Kustomization"
    kustomize = yaml.safe_load((DEPLOY / "k8s" / "kustomization.yaml").read_text())
    files = {p.name for p in (DEPLOY / "k8s").glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomize["resources"]) == files


@pytest.mark.parametrize(
    "path",
    [*sorted((DEPLOY / "k8s").glob("*.yaml")), DEPLOY / "compose" / "docker-compose.yml"],
    ids=lambda p: p.name,
)
def test_environment_variable_names_are_settings(path: Path) -> None:
    used = set(ENV_NAME.findall(path.read_text()))
    unknown = used - _settings_env()
    assert not unknown, f"{path.name} sets variables the settings object ignores: {unknown}"


def test_kafka_topics_match_the_code() -> None:
    config = {
        k: v for cm in _kind("ConfigMap") for k, v in cm["data"].items() if k.startswith("WATCH")
    }
    settings = Settings(
        partitions=int(config["WATCHNEXT_PARTITIONS"]),
        replication=int(config["WATCHNEXT_REPLICATION"]),
        topic_prefix=config["WATCHNEXT_TOPIC_PREFIX"],
    )
    declared = {t["spec"]["topicName"]: t["spec"] for t in _kind("KafkaTopic")}
    wanted = {s.name: s for s in topic_specs(settings)}
    assert set(declared) == set(wanted)
    for name, spec in wanted.items():
        assert declared[name]["partitions"] == spec.partitions, name
        assert declared[name]["replicas"] == settings.replication, name
        assert {k: str(v) for k, v in declared[name]["config"].items()} == spec.configs, name
    for topic in _kind("KafkaTopic"):
        assert topic["metadata"]["labels"]["strimzi.io/cluster"] == "watchnext"


def test_kafka_runs_in_kraft_mode_with_node_pools() -> None:
    (kafka,) = _kind("Kafka")
    assert kafka["metadata"]["annotations"]["strimzi.io/kraft"] == "enabled"
    (pool,) = _kind("KafkaNodePool")
    assert set(pool["spec"]["roles"]) == {"controller", "broker"}
    (cm,) = _kind("ConfigMap")
    assert cm["data"]["WATCHNEXT_KAFKA_BOOTSTRAP"].startswith(kafka["metadata"]["name"])


def test_workers_are_a_statefulset_with_identity_volumes_and_probes() -> None:
    (sts,) = _kind("StatefulSet")
    spec = sts["spec"]
    services = {s["metadata"]["name"]: s for s in _kind("Service")}
    assert services[spec["serviceName"]]["spec"]["clusterIP"] == "None"
    (container,) = spec["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container.get("env", [])}
    assert env["WATCHNEXT_WORKER_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    (cm,) = _kind("ConfigMap")
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts[cm["data"]["WATCHNEXT_DATA_DIR"]]["name"] in {
        t["metadata"]["name"] for t in spec["volumeClaimTemplates"]
    }
    assert mounts[cm["data"]["WATCHNEXT_SNAPSHOT_DIR"]]["readOnly"] is True
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    port = container["ports"][0]["containerPort"]
    assert port == int(cm["data"]["WATCHNEXT_METRICS_PORT"])


def test_retrainer_shares_the_snapshot_volume_and_everything_is_scraped() -> None:
    (deployment,) = _kind("Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"]["type"] == "Recreate"
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["args"][0] == "retrain"
    claims = {
        v["persistentVolumeClaim"]["claimName"]
        for v in deployment["spec"]["template"]["spec"]["volumes"]
    }
    assert "watchnext-snapshots" in claims
    pvcs = {p["metadata"]["name"]: p for p in _kind("PersistentVolumeClaim")}
    assert pvcs["watchnext-snapshots"]["spec"]["accessModes"] == ["ReadWriteMany"]
    (monitor,) = _kind("ServiceMonitor")
    selected = set(monitor["spec"]["selector"]["matchExpressions"][0]["values"])
    labelled = {s["metadata"]["labels"]["app.kubernetes.io/name"] for s in _kind("Service")}
    assert labelled <= selected and all(
        e["port"] == "metrics" for e in monitor["spec"]["endpoints"]
    )


def test_compose_runs_official_kafka_in_kraft_and_the_whole_stack() -> None:
    compose = yaml.safe_load((DEPLOY / "compose" / "docker-compose.yml").read_text())
    services = compose["services"]
    assert services["kafka"]["image"].startswith("apache/kafka:")
    kafka_env = services["kafka"]["environment"]
    assert kafka_env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert {"worker-0", "worker-1", "retrainer", "prometheus", "grafana"} <= set(services)
    workers = [services[n] for n in services if n.startswith("worker-")]
    ids = {w["environment"]["WATCHNEXT_WORKER_ID"] for w in workers}
    assert len(ids) == len(workers)  # static membership needs distinct ids
    assert len({w["volumes"][0] for w in workers}) == len(workers)  # a data volume each
    prom = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = {
        t for job in prom["scrape_configs"] for c in job["static_configs"] for t in c["targets"]
    }
    assert {f"{n}:9108" for n in services if n.startswith("worker-")} <= targets
    for mount in services["grafana"]["volumes"]:
        host = mount.split(":")[0]
        assert (DEPLOY / "compose" / host).resolve().exists(), host
