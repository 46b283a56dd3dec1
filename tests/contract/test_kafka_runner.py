"""The local-broker runner as ``watchnext kafka up|status|down`` uses it, on a real broker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from deploy.kafka import runner
from watchnext.settings import Settings

pytestmark = pytest.mark.integration


def wn(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "watchnext", *args],
        capture_output=True,
        text=True,
        timeout=180,
        env={k: v for k, v in os.environ.items() if k != "WATCHNEXT_KAFKA_BOOTSTRAP"},
    )


def test_up_status_down_round_trip(tmp_path: Path) -> None:
    data = tmp_path / "kafka"
    port = runner.free_port()
    up = wn("kafka", "up", "--data-dir", str(data), "--port", str(port), "--fresh")
    assert up.returncode == 0, up.stderr
    assert f"bootstrap 127.0.0.1:{port}" in up.stdout
    try:
        status = wn("kafka", "status", "--data-dir", str(data))
        assert status.returncode == 0 and f"127.0.0.1:{port}" in status.stdout
        again = wn("kafka", "up", "--data-dir", str(data))  # idempotent: reuses the running broker
        assert f"127.0.0.1:{port}" in again.stdout
        assert (data / "kafka.log").stat().st_size > 0
    finally:
        down = wn("kafka", "down", "--data-dir", str(data))
    assert down.returncode == 0 and "stopped" in down.stdout
    assert wn("kafka", "status", "--data-dir", str(data)).returncode == 1


def test_never_touches_a_process_it_did_not_start(tmp_path: Path) -> None:
    """A state file naming a foreign pid (here: this test process) is not acted upon."""
    data = tmp_path / "kafka"
    data.mkdir()
    fake = runner.BrokerInfo(
        pid=os.getpid(),
        bootstrap="127.0.0.1:1",
        port=1,
        controller_port=2,
        data_dir=str(data),
        log_file=str(data / "kafka.log"),
        version="x",
    )
    (data / runner.STATE_FILE).write_text(json.dumps(fake.__dict__))
    assert runner.status(data) is None
    assert runner.stop(data) is False  # and we are still alive to assert it


def test_ensure_kafka_uses_the_configured_cluster_without_starting_one(
    kafka_bootstrap: str,
) -> None:
    settings = Settings(kafka_bootstrap=kafka_bootstrap, kafka_data_dir=Path("/nonexistent"))
    with runner.ensure_kafka(settings) as bootstrap:
        assert bootstrap == kafka_bootstrap


def test_cluster_ids_never_look_like_options() -> None:
    """Regression: an id starting with '-' broke `kafka-storage format` (CI, 1 start in 64)."""
    ids = [runner.cluster_id() for _ in range(5000)]
    assert not any(i.startswith("-") for i in ids)
    assert len(set(ids)) == len(ids) and all(len(i) == 22 for i in ids)
