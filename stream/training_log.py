"""The retrainer's compact, checkpointed copy of the event topics.

The retrainer is not a faust worker: it reads every event topic with kafka-python from its own
checkpoint (per topic-partition next offset, no consumer group), keeps what is valid as JSON lines
in numbered segment files, and only then moves the checkpoint. The order is what makes it safe to
kill at any point:

1. read up to the end offsets observed at the start of the catch-up;
2. write the records into ``seg-<n>.jsonl.tmp``, fsync, rename to ``seg-<n>.jsonl``;
3. write ``checkpoint.json`` the same way (temporary file, fsync, rename).

A kill between 2 and 3 leaves a segment whose records will be read again into the next segment;
:meth:`TrainingLog.events` drops such duplicates by event identity, so resuming changes nothing.
Invalid records are skipped here (the workers already dead-letter them with the reason).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import replace
from math import inf
from pathlib import Path
from typing import Any

from stream.contract import EventRules, decode_event
from stream.events import USER_EVENT_KINDS, EventKind, InvalidEvent
from stream.routing import forwarded_elsewhere
from watchnext.settings import Settings

CHECKPOINT = "checkpoint.json"
KINDS = (*USER_EVENT_KINDS, EventKind.UPLOAD)


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    tmp.rename(path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def identity(kind: EventKind, event: Any) -> tuple[Any, ...]:
    """What makes two records the same event (replays and re-reads are dropped on it)."""
    if kind is EventKind.UPLOAD:
        return (kind.value, event.item_id, event.ts)
    if kind is EventKind.PROFILE and getattr(event, "event_id", None) is None:
        return (kind.value, event.user_id, event.ts)
    return (kind.value, event.event_id)


class TrainingLog:
    """Segments of valid events under ``root`` plus the offsets they cover."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def offsets(self) -> dict[str, int]:
        """``topic/partition`` -> next offset to read."""
        path = self.root / CHECKPOINT
        return json.loads(path.read_text())["offsets"] if path.exists() else {}

    def segments(self) -> list[Path]:
        return sorted(self.root.glob("seg-*.jsonl"))

    def catch_up(self, settings: Settings, bootstrap: str, progress: bool = False) -> int:
        """Append every record since the checkpoint to a new segment; returns records added."""
        from kafka import KafkaConsumer, TopicPartition

        consumer = KafkaConsumer(
            bootstrap_servers=bootstrap,
            group_id=None,
            enable_auto_commit=False,
            max_partition_fetch_bytes=4 * 1024 * 1024,
            **settings.kafka_client_config(),
        )
        try:
            offsets = self.offsets()
            kind_of = {settings.topic(k.value): k for k in KINDS}
            tps = [
                TopicPartition(t, p)
                for t in kind_of
                for p in sorted(consumer.partitions_for_topic(t) or ())
            ]
            if not tps:
                return 0
            consumer.assign(tps)
            ends = consumer.end_offsets(tps)
            todo = {}
            for tp in tps:
                start = offsets.get(f"{tp.topic}/{tp.partition}", 0)
                if start < ends[tp]:
                    consumer.seek(tp, start)
                    todo[tp] = ends[tp]
                else:
                    consumer.pause(tp)
            lines: list[bytes] = []
            new_offsets = dict(offsets)
            # The worker's own rules: what it dead-letters must not become training data.
            rules = EventRules.of(settings)
            parts = settings.partitions  # as the workers route (stream.routing)
            while todo:
                for tp, records in consumer.poll(timeout_ms=1000, max_records=20_000).items():
                    if tp not in todo:
                        continue
                    for msg in records:
                        if msg.offset >= todo[tp]:
                            break
                        kind = kind_of[msg.topic]
                        if forwarded_elsewhere(msg.key, tp.partition, parts, msg.headers):
                            # a worker forwards it to its key's partition: the copy is logged
                            new_offsets[f"{tp.topic}/{tp.partition}"] = msg.offset + 1
                            continue
                        try:
                            event = decode_event(
                                kind, msg.value, msg.key, now=time.time(), rules=rules
                            )
                        except InvalidEvent:
                            pass  # the workers dead-letter it with the reason
                        else:
                            doc = {"k": kind.value, "v": json.loads(event.to_json())}
                            lines.append(json.dumps(doc).encode() + b"\n")
                        new_offsets[f"{tp.topic}/{tp.partition}"] = msg.offset + 1
                    if new_offsets.get(f"{tp.topic}/{tp.partition}", 0) >= todo[tp]:
                        del todo[tp]
                        consumer.pause(tp)
                if progress:
                    print(f"\r  training log: {len(lines):,} new events", end="", flush=True)
            if progress:
                print(flush=True)
            if lines:
                n = len(self.segments()) + 1
                _atomic_write(self.root / f"seg-{n:06d}.jsonl", b"".join(lines))
            _atomic_write(self.root / CHECKPOINT, json.dumps({"offsets": new_offsets}).encode())
            return len(lines)
        finally:
            consumer.close()

    def events(self) -> Iterator[tuple[EventKind, Any]]:
        """Every distinct event in the log, in log order."""
        seen: set[tuple[Any, ...]] = set()
        # These records passed catch_up under the worker's rules (whatever its bounds were):
        # read them back with no key, at any age, and without bounds of their own.
        offline = replace(
            EventRules.offline(), max_watch_ratio=inf, max_watch_seconds=inf, max_duration_s=inf
        )
        for seg in self.segments():
            with open(seg, "rb") as f:
                for line in f:
                    doc = json.loads(line)
                    kind = EventKind(doc["k"])
                    raw = json.dumps(doc["v"]).encode()
                    try:
                        event = decode_event(kind, raw, None, now=time.time(), rules=offline)
                    except InvalidEvent:  # kept under an older, laxer contract:
                        continue  # catch_up would skip it today
                    key = identity(kind, event)
                    if key not in seen:
                        seen.add(key)
                        yield kind, event
