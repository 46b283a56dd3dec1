"""Read a py-spy flame graph (SVG) back as numbers: the share of samples under named frames.

py-spy writes each frame as an SVG rect with its sample interval (``fg:x``, ``fg:w``) and a
title ``function (file:line) (N samples, P%)``. A frame's inclusive share is the union of the
intervals of every rect whose title matches, so a function that recurses or appears under
several callers is counted once per sample. Used to put the README's "where the microseconds
go" table next to the committed flame graphs instead of reading them by eye.
"""

from __future__ import annotations

import html
import re
from collections.abc import Mapping
from pathlib import Path

_RECT = re.compile(r'<title>([^<]*)</title><rect [^>]*fg:x="(\d+)" fg:w="(\d+)"')
_SAMPLES = re.compile(r" \(\d[\d,]* samples?, [\d.]+%\)$")


def frames(svg: Path) -> list[tuple[str, int, int]]:
    """(title without the sample count, first sample, sample count) of every rect."""
    text = Path(svg).read_text(errors="replace")
    return [(_SAMPLES.sub("", html.unescape(t)), int(x), int(w)) for t, x, w in _RECT.findall(text)]


def _union(intervals: list[tuple[int, int]]) -> int:
    total, end = 0, -1
    for start, stop in sorted(intervals):
        if stop <= end:
            continue
        total += stop - max(start, end)
        end = stop
    return total


def shares(svg: Path, patterns: Mapping[str, str], within: str | None = None) -> dict[str, float]:
    """Share (0..1) of samples under frames matching each regex of ``patterns``.

    ``within``: a regex for the frames to normalise by (e.g. the event-loop thread); default
    every sample.
    """
    rects = frames(svg)
    if not rects:
        return {name: 0.0 for name in patterns}
    if within is None:
        base = max(x + w for _, x, w in rects)
        scope: list[tuple[int, int]] = [(0, base)]
    else:
        scope = [(x, x + w) for t, x, w in rects if re.search(within, t)]
        base = _union(scope)
    out = {}
    for name, pattern in patterns.items():
        rx = re.compile(pattern)
        hits = [(x, x + w) for t, x, w in rects if rx.search(t)]
        clipped = [(max(a, s), min(b, e)) for a, b in hits for s, e in scope if a < e and b > s]
        out[name] = _union(clipped) / base if base else 0.0
    return out


# Where an event's time goes on the worker's event-loop thread (uvloop's ``Loop__run``), by
# the frames that own it. Patterns match function names of this project, faust and aiokafka;
# each share is inclusive (a frame's callees count under it), so rows under one parent nest.
INGEST_ROWS: dict[str, str] = {
    "ingest agent body (ours)": r"^(build_app\.<locals>\.)?(ingest_slice|user_events) \(stream",
    "  load state (cache / RocksDB get + decode)": r"load_state \(stream/app|<locals>\.load \(",
    "  validate event (contract)": r"^decode_event \(stream",
    "  apply (pure transition)": r"^apply_checked \(stream",
    "  encode state": r"^encode \(stream/state",
    "  table write (faust per key | bulk)": r"ManagedUserDict.__setitem__|put_many \(stream",
    "  delivery barrier": r"DeliveryBarrier\.(track|_settle|_complete)",
    "faust: fetch → conductor → streams": r"_drain_messages \(faust",
    "produce: faust buffer / bulk writer → aiokafka": (
        r"ProducerBuffer\._handle_pending|BulkTableWriter\._produce|aiokafka/producer"
    ),
    "aiokafka consumer (fetch)": r"aiokafka/consumer",
    "vector refresh": r"Serving\.refresh",
    "request handling": r"RequestHandler\.handle",
    "getpid (asyncio loop checks)": r"^getpid",
    "idle (epoll wait)": r"uv__io_poll|epoll_pwait",
}
LOOP_THREAD = r"^Loop__run "


def per_event_us(svg: Path, events_per_s: float, rows: Mapping[str, str] = INGEST_ROWS) -> dict:
    """µs per event of each row, from its share of the event-loop thread's samples and the
    worker's measured rate in the same (profiled) run."""
    per_event = 1e6 / events_per_s
    return {k: round(v * per_event, 1) for k, v in shares(svg, rows, within=LOOP_THREAD).items()}


if __name__ == "__main__":  # python -m watchnext.bench.profile SVG EVENTS_PER_S
    import sys

    for name, us in per_event_us(Path(sys.argv[1]), float(sys.argv[2])).items():
        print(f"{us:8.1f} µs  {name}")
