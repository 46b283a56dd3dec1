"""Seeded Hypothesis fuzzers of the wire contract, run through the entry points the worker uses.

Every fuzzer counts what it fed in :data:`COUNTS` (``tried``, ``rejected``, ``accepted`` and
``crashes``: anything other than a contract rejection that escaped); each test module prints
the running totals when it finishes, visible with ``pytest -s``.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

COUNTS: Counter[str] = Counter()
REASONS: Counter[str] = Counter()
"""Rejections by ``reason_class`` label, to show which rules the fuzzers reached."""


def report(scope: str) -> None:
    """Print the running fuzz totals (called at the end of each fuzz module)."""
    c = COUNTS
    print(
        f"\nfuzz counts after {scope}: inputs tried {c['tried']}, rejected {c['rejected']}, "
        f"accepted {c['accepted']}, crashes {c['crashes']}"
    )
    print("  rejections by label: " + ", ".join(f"{k} {n}" for k, n in REASONS.most_common()))


# --- generated payloads and their mutations (shared by the fuzz modules) -------------------


NOW = 1_800_000_000.0
FUZZ = settings(
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
        HealthCheck.large_base_example,
    ],
)
"""Seeded (derandomized) and free of an example database, so every run tries the same inputs."""

BIDI = "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
_ALLOWED = st.characters(exclude_categories=("Cc", "Cs", "Zl", "Zp"), exclude_characters=BIDI)
labels = st.text(_ALLOWED, min_size=1, max_size=12).filter(lambda s: not s.isspace())
ids = st.text(_ALLOWED, min_size=1, max_size=24).filter(lambda s: not s.isspace())
free_text = st.text(_ALLOWED, max_size=40)
users = st.integers(0, 4)
items = st.integers(0, 2**63 - 1) | st.integers(0, 20)
times = st.floats(0, NOW) | st.integers(0, int(NOW))

HOSTILE_TEXT = [
    "\x00",
    "a\x00b",
    "\ud800",
    "x\udfff",
    "\u202e",
    "ab\u2066c\u2069",
    "\u200fx",
    "a\u2028b",
    "\x1b[2J",
    "\x7f",
    "\x85",
    "",
    " ",
    "\t",
    "\n",
    "e" * 200,
    "\u200d",
    "👨\u200d👩",
    "\ufeff",
]
HUGE = [1e308, -1e308, 10**30, 2**63, 2**64, -1, -0.0, 5e-324, 1e11, 1.7e12, 1.7e15, 1.7e18]
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=8,
)


def _strings(doc: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Paths of every string value in a document (list items and nested objects included)."""
    if isinstance(doc, dict):
        return [p for k, v in doc.items() for p in _strings(v, (*path, k))]
    if isinstance(doc, list):
        return [p for i, v in enumerate(doc) for p in _strings(v, (*path, i))]
    return [path] if isinstance(doc, str) else []


def _numbers(doc: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if isinstance(doc, dict):
        return [p for k, v in doc.items() for p in _numbers(v, (*path, k))]
    if isinstance(doc, list):
        return [p for i, v in enumerate(doc) for p in _numbers(v, (*path, i))]
    return [path] if isinstance(doc, int | float) and not isinstance(doc, bool) else []


def _fields(doc: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if isinstance(doc, dict):
        return [(*path, k) for k in doc] + [
            p for k, v in doc.items() for p in _fields(v, (*path, k))
        ]
    if isinstance(doc, list):
        return [p for i, v in enumerate(doc) for p in _fields(v, (*path, i))]
    return []


def _set(doc: Any, path: tuple[Any, ...], value: Any) -> None:
    for step in path[:-1]:
        doc = doc[step]
    doc[path[-1]] = value


def _delete(doc: Any, path: tuple[Any, ...]) -> None:
    for step in path[:-1]:
        doc = doc[step]
    del doc[path[-1]]


_DURATIONS = ("watch_seconds", "item_duration_seconds", "duration_seconds")
_FIRST_KEY = re.compile(rb'\{\s*"((?:[^"\\]|\\.)*)"\s*:')


@st.composite
def mutated(
    draw: st.DrawFn, doc: dict[str, Any], key: bytes | None
) -> tuple[bytes | None, bytes | None, list[str]]:
    """``doc`` encoded and ``key``, each perhaps mutated; the list names the mutations made
    (empty: the payload is the valid one)."""
    doc = json.loads(json.dumps(doc))  # a deep copy the mutations may change
    ops: list[str] = []
    for _ in range(draw(st.integers(0, 2))):
        op = draw(
            st.sampled_from(["swap", "huge", "ms", "text", "drop", "extra", "version", "bounds"])
        )
        if op == "swap" and (paths := _fields(doc)):
            _set(doc, draw(st.sampled_from(paths)), draw(json_values))
        elif op == "huge" and (paths := _numbers(doc)):
            _set(doc, draw(st.sampled_from(paths)), draw(st.sampled_from(HUGE)))
        elif op == "ms" and "ts" in doc and isinstance(doc["ts"], int | float):
            doc["ts"] = doc["ts"] * draw(st.sampled_from([1000, 1_000_000, 10**9]))
        elif op == "text" and (paths := _strings(doc)):
            text = draw(st.sampled_from(HOSTILE_TEXT) | st.text(max_size=6))
            old = draw(st.sampled_from(paths))
            _set(doc, old, draw(st.sampled_from([text, "ok" + text, text + "ok"])))
        elif op == "drop" and (paths := _fields(doc)):
            _delete(doc, draw(st.sampled_from(paths)))
        elif op == "extra":
            doc[draw(st.text(max_size=6))] = draw(json_values)
        elif op == "bounds" and (names := [n for n in _DURATIONS if n in doc]):
            name = draw(st.sampled_from(names))
            doc[name] = (doc[name] or 1) * draw(st.sampled_from([2, 4, 1000, 10**6]))
        elif op == "version":
            doc["schema_version"] = draw(st.sampled_from([True, 1.0, "1", 2, 0, None, [1]]))
        else:
            continue
        ops.append(op)
    ascii_only = draw(st.booleans())
    if ascii_only:
        raw = json.dumps(doc).encode()
    else:  # raw UTF-8; a lone surrogate then becomes bytes no UTF-8 decoder accepts
        raw = json.dumps(doc, ensure_ascii=False).encode("utf-8", "surrogatepass")
    if draw(st.integers(0, 3)) == 0:
        op = draw(
            st.sampled_from(
                ["flip", "truncate", "deep", "dup", "literal", "utf16", "wrap", "pad", "garbage"]
            )
        )
        ops.append(op)
        if op == "flip" and raw:
            for _ in range(draw(st.integers(1, 3))):
                i = draw(st.integers(0, len(raw) - 1))
                raw = raw[:i] + bytes([raw[i] ^ draw(st.integers(1, 255))]) + raw[i + 1 :]
        elif op == "truncate":
            raw = raw[: draw(st.integers(0, max(len(raw) - 1, 0)))]
        elif op == "deep":
            depth = draw(st.sampled_from([50, 199, 201, 999, 1000, 5000, 100_000]))
            opener, closer = draw(st.sampled_from([(b"[", b"]"), (b'{"a":', b"}")]))
            raw = raw[:-1] + b', "deep": ' + opener * depth + b"1" + closer * depth + b"}"
        elif op == "dup" and (found := list(_FIRST_KEY.finditer(raw))):
            m = draw(st.sampled_from(found))
            value = json.dumps(draw(json_values)).encode()
            raw = (
                raw[: m.start() + 1]
                + b'"'
                + m.group(1)
                + b'": '
                + value
                + b","
                + raw[m.start() + 1 :]
            )
        elif op == "literal":
            lit = draw(st.sampled_from([b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-1e999"]))
            raw = raw[:-1] + b', "n": ' + lit + b"}"
        elif op == "utf16":
            raw = raw.decode("utf-8", "surrogatepass").encode("utf-16", "surrogatepass")
        elif op == "wrap":
            raw = draw(st.sampled_from([b"[" + raw + b"]", b'"x"', b"null", b"1", b"", None]))
        elif op == "pad":
            raw = raw[:-1] + b', "pad": "' + b"x" * draw(st.sampled_from([70_000, 1 << 20])) + b'"}'
        elif op == "garbage":
            raw = draw(st.binary(max_size=200))
    if draw(st.integers(0, 4)) == 0:
        ops.append("key")
        key = draw(
            st.sampled_from(
                [None, b"", b"x", b"-1", b"0" + (key or b""), (key or b"") + b" ", b"\xff"]
            )
            | st.binary(max_size=12)
        )
    return raw, key, ops
