"""Post events to Kafka with kafka-python: idempotent, acks=all, keyed, rate-limited, with progress.

Used by ``watchnext produce`` (JSONL files and the MovieLens replay), the demo, the benchmarks
and the tests. The idempotent producer (``enable_idempotence``) makes broker-side retries
duplicate-free; whole-file re-runs are absorbed by the worker's event-id window.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from tqdm import tqdm

from stream.events import EventKind, event_key
from watchnext.settings import Settings

Outgoing = tuple[EventKind, bytes | None, bytes]  # (kind, key, value)


def make_producer(settings: Settings, bootstrap: str, **overrides: Any) -> Any:
    """A kafka-python producer with the project's delivery settings."""
    from kafka import KafkaProducer

    cfg: dict[str, Any] = {
        "bootstrap_servers": bootstrap,
        "acks": "all",
        "enable_idempotence": True,
        "linger_ms": 10,
        "batch_size": 256 * 1024,
        "max_request_size": settings.deadletter_max_message_bytes,
        **settings.kafka_client_config(),
    }
    cfg.update(overrides)
    return KafkaProducer(**cfg)


def encode_events(events: Iterable[tuple[EventKind, Any]]) -> Iterator[Outgoing]:
    """Turn typed records into (kind, key, JSON bytes)."""
    for kind, event in events:
        yield kind, event_key(kind, event), event.to_json()


class JsonlError(ValueError):
    """A JSONL file that cannot be sent: ``FILE:LINE: what is wrong and what to do``."""


_KINDS = ", ".join(k.value for k in EventKind)


def _jsonl_line(path: Path, number: int, line: bytes, kind: EventKind | None) -> Outgoing:
    """One line as a message; :class:`JsonlError` when its topic cannot be told."""
    line_kind, value = kind, line
    try:
        obj = json.loads(line)
    except ValueError:
        obj = None
    if isinstance(obj, dict) and "event" in obj and "kind" in obj:
        try:
            line_kind = EventKind(obj["kind"])
        except ValueError:
            raise JsonlError(
                f"{path}:{number}: kind {obj['kind']!r} is not one of {_KINDS}"
            ) from None
        obj = obj["event"]
        value = json.dumps(obj, separators=(",", ":")).encode()
    if line_kind is None:
        raise JsonlError(
            f'{path}:{number}: no kind: write {{"kind": K, "event": {{...}}}} lines '
            f"or give --kind K ({_KINDS}) for a file of bare events"
        )
    key = None
    if isinstance(obj, dict):
        ident = obj.get("item_id" if line_kind is EventKind.UPLOAD else "user_id")
        if isinstance(ident, int) and not isinstance(ident, bool):
            key = str(ident).encode()
    return line_kind, key, value


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    with open(path, "rb") as f:
        for number, line in enumerate(f, 1):
            line = line.rstrip(b"\r\n")
            if line:
                yield number, line


def check_jsonl(path: Path, kind: EventKind | None) -> int:
    """Read the whole file once before anything connects: the number of lines to send, or
    :class:`JsonlError` naming the first line whose topic cannot be told (a missing file is
    one too). Lines that are not valid events are fine here: the worker dead-letters them."""
    if not path.is_file():
        raise JsonlError(f"--jsonl {path}: no such file")
    n = 0
    for number, line in _lines(path):
        _jsonl_line(path, number, line, kind)
        n += 1
    return n


def read_jsonl(path: Path, kind: EventKind | None) -> Iterator[Outgoing]:
    """Lines of a JSONL file as messages, sent as-is so the worker validates them.

    A line is either an event (then ``kind`` names its topic) or ``{"kind": K, "event": {...}}``.
    Lines that are not JSON are still sent (to ``kind``'s topic) and end up dead-lettered there.
    :func:`check_jsonl` finds, before any connection, the lines this would refuse.
    """
    for number, line in _lines(path):
        yield _jsonl_line(path, number, line, kind)


def send_all(
    settings: Settings,
    bootstrap: str,
    messages: Iterable[Outgoing],
    *,
    rate: float | None = None,
    total: int | None = None,
    progress: bool = True,
    desc: str = "produce",
    producer: Any = None,
) -> int:
    """Send messages (optionally at ``rate`` events/s), flush, and return how many were sent.

    Raises the first delivery error after flushing, so a caller never believes lost events sent.
    """
    own = producer is None
    producer = producer or make_producer(settings, bootstrap)
    errors: list[BaseException] = []
    topics = {k: settings.topic(k.value) for k in EventKind}
    n = 0
    start = time.perf_counter()
    bar = tqdm(total=total, desc=desc, unit="ev", disable=not progress, mininterval=0.5)
    try:
        for kind, key, value in messages:
            if rate:
                ahead = n / rate - (time.perf_counter() - start)
                if ahead > 0:
                    time.sleep(ahead)
            fut = producer.send(topics[kind], key=key, value=value)
            fut.add_errback(errors.append)
            n += 1
            if n % 1000 == 0:
                bar.update(1000)
        producer.flush()
        bar.update(n % 1000)
    finally:
        bar.close()
        if own:
            producer.close()
    if errors:
        raise RuntimeError(f"{len(errors)} of {n} events were not delivered: {errors[0]!r}")
    return n
