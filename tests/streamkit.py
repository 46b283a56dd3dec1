"""Helpers shared by integration and chaos tests: run a worker, produce, wait, read back."""

from __future__ import annotations

from typing import Any

from stream.events import USER_EVENT_KINDS, EventKind
from stream.lag import wait_caught_up
from stream.producer import encode_events, send_all
from stream.readback import read_changelog, read_rocksdb
from stream.state import Limits
from watchnext.settings import Settings


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
]
