"""Online attribution counters: what each model version pair showed and what it was watched for.

The request handler counts the items of every page it answers in time (``shown``); the ingest
agent counts every applied watch that carries the ``request_id`` of a page that showed its item
(``attributed``, :func:`stream.state.credited_page`), with its watch seconds. Both are labelled
by the page's candidate and ranker versions, so two versions served side by side (a canary, or
workers before and after a swap) get their own click-through and watch time per 1,000 shown.

Version labels change with every promotion; one worker keeps the series of its
``keep`` most recently used pairs and removes older ones, so a worker that lives through
thousands of retrains does not export thousands of series.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Mapping

from stream import metrics


class AttributionMetrics:
    """The worker's attribution counters with a bounded set of version labels."""

    def __init__(self, keep: int = 16) -> None:
        self.keep = keep
        self._pairs: dict[tuple[str, str], None] = {}  # insertion order: least recent first
        self._lock = threading.Lock()

    def _use(self, candidates: str, ranker: str) -> tuple[str, str]:
        pair = (candidates, ranker)
        with self._lock:
            self._pairs.pop(pair, None)
            self._pairs[pair] = None
            while len(self._pairs) > self.keep:
                old = next(iter(self._pairs))
                del self._pairs[old]
                for counter in (
                    metrics.SHOWN,
                    metrics.ATTRIBUTED_WATCHES,
                    metrics.ATTRIBUTED_WATCH_SECONDS,
                ):
                    with contextlib.suppress(KeyError):
                        counter.remove(*old)
        return pair

    def shown(self, versions: Mapping[str, str], items: int) -> None:
        """``items`` were shown on a page chosen by ``versions`` (the response's)."""
        pair = self._use(versions.get("candidates", "none"), versions.get("ranker", "none"))
        metrics.SHOWN.labels(*pair).inc(items)

    def attributed(
        self,
        watches: Mapping[tuple[str, str], int],
        seconds: Mapping[tuple[str, str], float],
    ) -> None:
        """Credit a batch's attributed watches and their seconds to their pages' versions."""
        for pair, n in watches.items():
            labels = self._use(*pair)
            metrics.ATTRIBUTED_WATCHES.labels(*labels).inc(n)
            metrics.ATTRIBUTED_WATCH_SECONDS.labels(*labels).inc(seconds.get(pair, 0.0))
