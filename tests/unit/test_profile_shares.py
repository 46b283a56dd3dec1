"""Reading a py-spy flame graph back as shares of samples (the README's profile tables)."""

from __future__ import annotations

from pathlib import Path

import pytest

from watchnext.bench.profile import frames, per_event_us, shares


def _rect(title: str, x: int, w: int, y: int) -> str:
    return (
        f'<g><title>{title} ({w} samples, 1.00%)</title><rect x="0%" y="{y}" width="1%" '
        f'height="15" fill="red" fg:x="{x}" fg:w="{w}"/></g>'
    )


@pytest.fixture
def svg(tmp_path: Path) -> Path:
    # all(100) -> Loop__run (80) -> agent (50) -> apply (20), apply again under it (10);
    # the other 20 samples are another thread
    body = "".join(
        [
            _rect("all", 0, 100, 0),
            _rect("Loop__run (loop.c:1)", 0, 80, 16),
            _rect("ingest_slice (stream/app.py:1)", 0, 50, 32),
            _rect("apply_checked (stream/state.py:1)", 10, 20, 48),
            _rect("apply_checked (stream/state.py:1)", 15, 10, 64),  # recursion: counted once
            _rect("uv__io_poll (linux.c:1)", 60, 20, 32),
            _rect("Thread.run (threading.py:1)", 80, 20, 16),
        ]
    )
    path = tmp_path / "p.svg"
    path.write_text(f"<svg>{body}</svg>")
    return path


def test_frames_are_read_with_their_sample_intervals(svg: Path) -> None:
    assert ("ingest_slice (stream/app.py:1)", 0, 50) in frames(svg)


def test_shares_count_each_sample_once_and_normalise_by_scope(svg: Path) -> None:
    whole = shares(svg, {"apply": r"^apply_checked"})
    assert whole["apply"] == pytest.approx(0.20)
    loop = shares(svg, {"apply": r"^apply_checked", "idle": r"uv__io_poll"}, within=r"^Loop__run ")
    assert loop == pytest.approx({"apply": 20 / 80, "idle": 20 / 80})


def test_per_event_microseconds_scale_shares_by_the_measured_rate(svg: Path) -> None:
    us = per_event_us(svg, 1000.0, {"body": r"^ingest_slice \(stream"})
    assert us == {"body": pytest.approx(1e6 / 1000 * 50 / 80, abs=0.1)}
