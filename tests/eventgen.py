"""Test-side names for the seeded event mix and the recomputation (both live in ``stream/``)."""

from __future__ import annotations

from typing import Any

from stream.consistency import Expected, recompute, state_fields
from stream.loadgen import WORDS, make_events


def assert_states_match(states: dict[int, Any], expected: dict[int, Expected]) -> None:
    """Every expected user is present with exactly the recomputed content, and no other."""
    assert set(states) == set(expected), (
        f"users differ: missing {sorted(set(expected) - set(states))[:10]}, "
        f"extra {sorted(set(states) - set(expected))[:10]}"
    )
    for uid, exp in expected.items():
        got = state_fields(states[uid])
        assert exp.matches(got), f"user {uid}: {got} != {exp.fields()}"


__all__ = ["WORDS", "Expected", "assert_states_match", "make_events", "recompute"]
