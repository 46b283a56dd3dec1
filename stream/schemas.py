"""JSON Schemas of every record on watchnext's topics, generated from the typed records.

Teams producing events or consuming responses from another language get one JSON Schema
(draft 2020-12) per record, written by ``watchnext schema --out DIR`` and committed under
``docs/schemas/``. They are generated from the pydantic records of :mod:`stream.events`, so
they cannot drift from what the worker accepts; a contract test checks the committed files
against a fresh generation, and validates the examples below and the synthetic generator's
events against them.

A schema covers the value's JSON. The rest of the contract is in the ``x-watchnext`` block of
each schema (the topic, the Kafka key, units) and in :mod:`stream.contract`, which the worker
enforces on top: no duplicate JSON keys, a size limit, timestamps in seconds and not too far in
the future, and the key equal to the record's id.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple

from stream.events import (
    DeadLetter,
    ImpressionEvent,
    ProfileEvent,
    RecommendationRequest,
    RecommendationResponse,
    SearchEvent,
    UploadEvent,
    WatchEvent,
    _Record,
)

DIALECT = "https://json-schema.org/draft/2020-12/schema"
SCHEMA_BASE_URI = "https://watchnext.dev/schemas/v1/"


class Published(NamedTuple):
    """One record as published: the topic it goes on, its key, and an example value."""

    record: type[_Record]
    topic: str  # the logical topic (Settings.topic(name) gives the Kafka topic)
    key: str  # what the Kafka key must be
    example: dict[str, Any]


_USER_KEY = "the decimal user_id as UTF-8 bytes (user 4242 -> b'4242'), murmur2-partitioned"
RECORDS: dict[str, Published] = {
    "watch": Published(
        WatchEvent,
        "watch",
        _USER_KEY,
        {
            "schema_version": 1,
            "event_id": "w-7f3a9c",
            "user_id": 4242,
            "item_id": 1017,
            "ts": 1767225600.5,
            "watch_seconds": 312.0,
            "item_duration_seconds": 600.0,
            "device": "tv",
            "country": "DE",
            "request_id": "r-19e2",
        },
    ),
    "search": Published(
        SearchEvent,
        "search",
        _USER_KEY,
        {
            "schema_version": 1,
            "event_id": "s-55d0",
            "user_id": 4242,
            "query": "sourdough starter",
            "ts": 1767225610.0,
            "device": "web",
        },
    ),
    "impression": Published(
        ImpressionEvent,
        "impression",
        _USER_KEY,
        {
            "schema_version": 1,
            "event_id": "imp-r-19e2",
            "user_id": 4242,
            "request_id": "r-19e2",
            "items": [
                {
                    "item_id": 1017,
                    "position": 0,
                    "source": "candidates+i2i",
                    "score": 3.2,
                    "source_scores": {"candidates": 3.2, "i2i": 0.41},
                    "source_ranks": {"candidates": 4, "i2i": 0},
                },
                {"item_id": 88, "position": 1},
            ],
            "ts": 1767225590.0,
        },
    ),
    "profile": Published(
        ProfileEvent,
        "profile",
        _USER_KEY,
        {
            "schema_version": 1,
            "user_id": 4242,
            "ts": 1767225000.0,
            "event_id": "p-4242-3",
            "age": 34,
            "gender": "F",
            "zip": "10115",
            "region": "BE",
            "occupation": "engineer",
        },
    ),
    "upload": Published(
        UploadEvent,
        "upload",
        "the decimal item_id as UTF-8 bytes (item 1017 -> b'1017')",
        {
            "schema_version": 1,
            "item_id": 1017,
            "ts": 1767220000.0,
            "duration_seconds": 600.0,
            "channel": "bakery-tv",
            "title": "Sourdough in 10 minutes",
            "tags": ["cooking", "bread"],
        },
    ),
    "request": Published(
        RecommendationRequest,
        "requests",
        _USER_KEY,
        {
            "schema_version": 1,
            "request_id": "r-19e2",
            "user_id": 4242,
            "k": 10,
            "context": {"device": "tv", "country": "DE", "ts": 1767225589.0},
            "sent_ts": 1767225589.2,
            "exclude": [88, 2001],
            "deadline_ms": 250,
            "reply_partition": 2,
        },
    ),
    "response": Published(
        RecommendationResponse,
        "responses",
        "the request_id as UTF-8 bytes",
        {
            "schema_version": 1,
            "request_id": "r-19e2",
            "user_id": 4242,
            "items": [
                {
                    "item_id": 1017,
                    "score": 1.9,
                    "expected_watch_seconds": 311.5,
                    "source": "candidates+i2i",
                    "candidate_score": 3.2,
                    "source_scores": {"candidates": 3.2, "i2i": 0.41},
                    "source_ranks": {"candidates": 4, "i2i": 0},
                }
            ],
            "model_versions": {"candidates": "20261201T120000Z", "ranker": "20261201T120000Z"},
            "latency_ms": {
                "vector": 1.1,
                "retrieve": 1.2,
                "i2i": 0.3,
                "merge": 0.4,
                "rank": 0.8,
                "compute": 3.8,
            },
            "expired": False,
        },
    ),
    "deadletter": Published(
        DeadLetter,
        "deadletter",
        "the source record's key (its sha256 when longer than 1 KiB), or none",
        {
            "schema_version": 1,
            "source_topic": "watchnext.watch",
            "partition": 3,
            "offset": 12345,
            "key_b64": "NDI0Mg==",
            "raw_b64": "eyJ0cyI6MTc2NzIyNTYwMDAwMH0=",
            "error": "ts 1767225600000 looks like milliseconds: seconds expected (Unix epoch "
            "seconds, fractions allowed)",
            "ts": 1767225601.0,
            "worker": "worker-0",
            "raw_bytes": 20,
            "raw_truncated": False,
        },
    ),
}

_UNITS = "timestamps (ts, sent_ts, context.ts) are Unix epoch seconds (fractions allowed); "
_UNITS += "durations are seconds (a request's deadline_ms: milliseconds after sent_ts, else "
_UNITS += "after the record's Kafka timestamp); ids are JSON integers in 0..2^63-1, not strings"


def schema_of(name: str) -> dict[str, Any]:
    """The JSON Schema of record ``name`` (a key of :data:`RECORDS`)."""
    pub = RECORDS[name]
    schema = pub.record.model_json_schema(mode="validation")
    return {
        "$schema": DIALECT,
        "$id": f"{SCHEMA_BASE_URI}{name}.schema.json",
        **schema,
        "description": " ".join((pub.record.__doc__ or "").split()),
        "examples": [pub.example],
        "x-watchnext": {"topic": pub.topic, "key": pub.key, "units": _UNITS},
    }


def render(schema: dict[str, Any]) -> str:
    """The committed text of a schema: sorted keys, two-space indent, a final newline."""
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write_schemas(out: Path) -> list[Path]:
    """Write ``<name>.schema.json`` for every record into ``out``; the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in RECORDS:
        path = out / f"{name}.schema.json"
        path.write_text(render(schema_of(name)), encoding="utf-8")
        paths.append(path)
    return paths
