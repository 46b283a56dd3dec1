"""The published JSON Schemas (docs/schemas/) agree with the records the worker accepts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from model.synth import SynthConfig, World
from stream.contract import EventRules, decode_event, decode_request
from stream.events import EventKind
from stream.loadgen import make_events
from stream.schemas import RECORDS, render, schema_of

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = ROOT / "docs" / "schemas"
NOW = 1767225700.0
RULES = EventRules()
KIND_RECORD = {kind: kind.value for kind in EventKind}  # event kind -> record name


def _validator(name: str) -> Draft202012Validator:
    schema = json.loads((SCHEMAS / f"{name}.schema.json").read_text(encoding="utf-8"))
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def test_committed_schemas_are_what_the_records_generate() -> None:
    """`watchnext schema --out docs/schemas` was run after the last change to a record."""
    assert sorted(p.name for p in SCHEMAS.glob("*.schema.json")) == sorted(
        f"{name}.schema.json" for name in RECORDS
    )
    for name in RECORDS:
        committed = (SCHEMAS / f"{name}.schema.json").read_text(encoding="utf-8")
        assert committed == render(schema_of(name)), f"{name}: regenerate docs/schemas"


@pytest.mark.parametrize("name", sorted(RECORDS))
def test_each_example_is_valid_by_its_schema_and_by_the_worker(name: str) -> None:
    pub = RECORDS[name]
    errors = list(_validator(name).iter_errors(pub.example))
    assert not errors, [e.message for e in errors]
    raw = json.dumps(pub.example).encode()
    if name in ("watch", "search", "impression", "profile", "upload"):
        kind = EventKind(name)
        key = str(pub.example["item_id" if kind is EventKind.UPLOAD else "user_id"]).encode()
        decode_event(kind, raw, key, now=NOW, rules=RULES)
    elif name == "request":
        decode_request(raw, str(pub.example["user_id"]).encode(), now=NOW, rules=RULES)
    else:
        pub.record.model_validate_json(raw)


def test_every_generated_event_is_valid_by_its_schema() -> None:
    validators = {name: _validator(name) for name in RECORDS}
    world = World(SynthConfig(seed=5, n_users=40, n_items=60, n_topics=4, sessions_per_user=3))
    events = [*make_events(seed=5, users=40, n=2000), *world.events()]
    seen = set()
    for kind, event in events:
        name = KIND_RECORD[kind]
        doc = json.loads(event.to_json())
        errors = list(validators[name].iter_errors(doc))
        assert not errors, (name, doc, [e.message for e in errors])
        seen.add(name)
    assert seen >= {"watch", "search", "impression", "profile"}


@pytest.mark.parametrize(
    "change",
    [
        {"user_id": "4242"},  # ids are JSON integers
        {"user_id": -1},
        {"item_id": 1.5},
        {"watch_seconds": -3.0},
        {"device": ""},  # a label must not be blank: leave it out instead
        {"device": "tv\u202e"},  # no bidi override
        {"schema_version": 2},
        {"event_id": None},
    ],
)
def test_what_the_schema_refuses_the_worker_refuses(change: dict) -> None:
    doc = {**RECORDS["watch"].example, **change}
    assert list(_validator("watch").iter_errors(doc)), change
    from stream.events import InvalidEvent

    with pytest.raises(InvalidEvent):
        decode_event(EventKind.WATCH, json.dumps(doc).encode(), b"4242", now=NOW, rules=RULES)


def test_the_readme_shows_every_example() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for name, pub in RECORDS.items():
        assert json.dumps(pub.example, separators=(",", ":")) in readme, name


def test_the_schema_command_writes_the_committed_files(tmp_path: Path) -> None:
    from tests.cli import watchnext

    out = watchnext("schema", "--out", str(tmp_path / "schemas"), timeout=120)
    assert out.returncode == 0, out.stderr
    written = sorted((tmp_path / "schemas").glob("*.schema.json"))
    assert [p.name for p in written] == sorted(p.name for p in SCHEMAS.glob("*.schema.json"))
    for path in written:
        assert path.read_text(encoding="utf-8") == (SCHEMAS / path.name).read_text(encoding="utf-8")
    printed = watchnext("schema", timeout=120)
    assert printed.returncode == 0 and set(json.loads(printed.stdout)) == set(RECORDS)
