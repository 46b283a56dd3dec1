"""Snapshot announcements on the ``model-updates`` topic (publisher and worker-side listener).

An announcement only names a snapshot pair; it never carries weights. Every worker must hear
every announcement, so the listener is not a member of the worker's consumer group: it reads the
single partition from its end with kafka-python, on its own thread, and only wakes the loader
thread (:meth:`stream.live_models.Serving.notify`), which then verifies whatever is in the shared
snapshot directory exactly as a periodic check would. A malformed announcement is logged and
ignored: the loader's periodic poll is the fallback, so nothing depends on it.

An announcement moves workers forward only: one naming a pair older than the served one is
refused unless it carries ``"rollback": true``, so a late or replayed announcement cannot
quietly take a fleet back to an old model, and going back is always a deliberate act.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from stream import metrics as worker_metrics
from watchnext.settings import Settings

log = logging.getLogger(__name__)
TOPIC_KIND = "model-updates"
MAX_BYTES = 16 * 1024
# versions name directories: letters, digits, dot, dash, underscore; never a path
VERSION = re.compile(r"(?!\.)[A-Za-z0-9._-]{1,128}")


@dataclass(frozen=True)
class Announcement:
    """A parsed announcement: the pair's versions by kind, and whether going back is intended.

    ``rollback`` lets the pair be older than the one a worker serves; a worker that rolls back
    stops moving forward on its own until the next announcement (see
    :class:`stream.live_models.Serving`).
    """

    versions: Mapping[str, str] = field(default_factory=dict)
    rollback: bool = False


def announcement(
    versions: Mapping[str, str], metrics: dict[str, Any] | None = None, rollback: bool = False
) -> bytes:
    """The record a publisher sends: the snapshot versions of the pair, and why.

    ``rollback=True`` only when the pair is deliberately older than what workers serve.
    """
    doc: dict[str, Any] = {"versions": dict(versions), "metrics": metrics or {}, "ts": time.time()}
    if rollback:
        doc["rollback"] = True
    return json.dumps(doc, sort_keys=True).encode()


def publish(settings: Settings, bootstrap: str, record: bytes) -> None:
    """Send one announcement and wait until the broker has it."""
    from stream.producer import make_producer

    producer = make_producer(settings, bootstrap, linger_ms=0)
    try:
        producer.send(settings.topic(TOPIC_KIND), key=b"snapshot", value=record).get(timeout=30)
    finally:
        producer.close()


def parse(raw: bytes | None) -> Announcement:
    """A valid announcement's versions and rollback flag; raises ValueError otherwise."""
    if raw is None or len(raw) > MAX_BYTES:
        raise ValueError("empty or oversized announcement")
    try:
        doc = json.loads(raw)
    except RecursionError:
        raise ValueError("announcement nested too deeply") from None
    versions = doc.get("versions") if isinstance(doc, dict) else None
    if not isinstance(versions, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and VERSION.fullmatch(v)
        for k, v in versions.items()
    ):
        raise ValueError("announcement without a versions object of plain version strings")
    rollback = doc.get("rollback", False)
    if not isinstance(rollback, bool):  # "false" is truthy: only a JSON boolean means it
        raise ValueError(f"announcement rollback flag {rollback!r} is not a boolean")
    return Announcement(dict(versions), rollback)


class AnnouncementListener(threading.Thread):
    """Calls ``on_announce(announcement)`` for every valid announcement made after it started."""

    def __init__(
        self, settings: Settings, bootstrap: str, on_announce: Callable[[Announcement], None]
    ) -> None:
        super().__init__(name="snapshot-announcements", daemon=True)
        self.settings = settings
        self.bootstrap = bootstrap
        self.on_announce = on_announce
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            try:
                self._listen()
            except Exception:  # broker restarts etc.: the loader's poll covers the gap
                log.exception("announcement listener failed; reconnecting in 5 s")
                self.stopped.wait(5.0)

    def _listen(self) -> None:
        from kafka import KafkaConsumer, TopicPartition

        consumer = KafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=None,
            enable_auto_commit=False,
            **self.settings.kafka_client_config(),
        )
        try:
            tp = TopicPartition(self.settings.topic(TOPIC_KIND), 0)
            consumer.assign([tp])
            consumer.seek_to_end(tp)
            while not self.stopped.is_set():
                for records in consumer.poll(timeout_ms=500).values():
                    for msg in records:
                        try:
                            announced = parse(msg.value)
                        except ValueError as exc:
                            log.warning("ignoring announcement at offset %d: %s", msg.offset, exc)
                            worker_metrics.ANNOUNCEMENTS_REFUSED.labels("invalid").inc()
                            continue
                        log.warning(
                            "snapshot announced: %s%s",
                            dict(announced.versions),
                            " (rollback)" if announced.rollback else "",
                        )
                        self.on_announce(announced)
        finally:
            consumer.close()

    def stop(self) -> None:
        self.stopped.set()
