"""Helpers shared by integration and chaos tests: run a worker, produce, wait, read back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from stream.events import USER_EVENT_KINDS, EventKind
from stream.lag import wait_caught_up
from stream.producer import encode_events, send_all
from stream.readback import read_changelog, read_rocksdb
from stream.state import Limits
from watchnext.settings import Settings


def with_snapshots(
    settings: Settings,
    bootstrap: str,
    root: Path,
    *,
    seed: int,
    users: int,
    items: int,
    per_user: tuple[int, int],
    epochs: int,
) -> Settings:
    """``settings`` serving a snapshot pair trained on a small random ``ratings.csv`` under
    ``root``, with the topics created: the setup of every broker test that asks the worker."""
    from stream.topics import create_topics
    from tests.mldata import write_ratings_csv
    from watchnext.train import run_train

    write_ratings_csv(root / "ml", seed=seed, users=users, items=items, per_user=per_user)
    settings = settings.model_copy(update={"snapshot_dir": root / "snap"})
    run_train(root / "ml", settings.snapshot_dir, epochs=epochs)
    create_topics(settings, bootstrap)
    return settings


def limits_of(settings: Settings) -> Limits:
    return Limits.of(settings)


def produce(
    settings: Settings, bootstrap: str, events: list[tuple[EventKind, Any]], **kw: Any
) -> int:
    return send_all(settings, bootstrap, encode_events(events), progress=False, **kw)


def user_topics(settings: Settings) -> list[str]:
    return [settings.topic(k.value) for k in USER_EVENT_KINDS]


def wait_processed(settings: Settings, bootstrap: str, timeout_s: float = 180) -> None:
    wait_caught_up(settings, bootstrap, settings.app_id, user_topics(settings), timeout_s=timeout_s)


__all__ = [
    "limits_of",
    "produce",
    "read_changelog",
    "read_rocksdb",
    "user_topics",
    "wait_processed",
    "with_snapshots",
]
