"""Shared fixtures: one real Apache Kafka broker per test run, isolated settings per test.

The broker is started through the same code as ``watchnext kafka up`` (deploy/kafka/runner.py),
on free loopback ports with a fresh data directory, and stopped at the end of the session. With
``WATCHNEXT_KAFKA_BOOTSTRAP`` set, that cluster is used instead and nothing is started. Each test
gets its own topic prefix and faust app id, so tests never see each other's data.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from watchnext.settings import Settings


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Bootstrap servers of the broker the tests use (started here unless configured)."""
    configured = os.environ.get("WATCHNEXT_KAFKA_BOOTSTRAP")
    if configured:
        yield configured
        return
    from deploy.kafka import runner

    data_dir = tmp_path_factory.mktemp("kafka")
    info = runner.start(Settings(), data_dir=data_dir, fresh=True)
    try:
        yield info.bootstrap
    finally:
        runner.stop(data_dir)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Settings isolated to this test: unique topics, app id (consumer group) and data dir."""
    tag = uuid.uuid4().hex[:8]
    return Settings(
        topic_prefix=f"t{tag}.",
        app_id=f"wn-test-{tag}",
        data_dir=tmp_path / "worker",
        metrics_port=0,
        partitions=4,
        commit_interval_s=0.5,
    )
