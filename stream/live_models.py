"""The worker's live models: the loaded snapshot pair, per-event vector refresh, answers.

Kept apart from the faust wiring in :mod:`stream.app`: the agents call :meth:`Serving.refresh`
after every ingest batch and :meth:`Serving.answer` for every request.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from stream import metrics
from stream.events import RecommendationRequest, RecommendationResponse
from stream.state import UserState
from watchnext.settings import Settings

log = logging.getLogger(__name__)


class Serving:
    """Loads the newest snapshots once; refreshes user vectors on events; answers requests.

    Without a snapshot it answers every request with an error response (never silence) and
    looks again at most every ``retry_s`` seconds.
    """

    def __init__(self, settings: Settings, retry_s: float = 30.0) -> None:
        from serving.vectors import VectorCache

        self.settings = settings
        self.recommender: Any = None
        self.cache = VectorCache()
        self.retry_s = retry_s
        self._next_try = 0.0

    def ready(self) -> bool:
        if self.recommender is None and time.monotonic() >= self._next_try:
            self._next_try = time.monotonic() + self.retry_s
            try:
                self._load()
            except Exception:  # a corrupt or partial snapshot is refused, never fatal
                log.exception("refusing snapshots under %s", self.settings.snapshot_dir)
                metrics.SNAPSHOT_REFUSED.inc()
        return self.recommender is not None

    def _load(self) -> None:
        from serving.recommend import Recommender, ServingModels, latest_snapshots

        found = latest_snapshots(self.settings.snapshot_dir)
        if found is None:
            return
        models = ServingModels.load(*found)
        self.recommender = Recommender(models, retrieve=self.settings.retrieve_k)
        for kind, version in models.versions.items():
            metrics.SNAPSHOT_INFO.labels(kind, version).set(1)
        metrics.INDEX_ITEMS.set(len(models.index))

    def refresh(self, states: list[UserState], event_ts: list[float]) -> None:
        """Recompute the vectors of users an ingest batch changed (one batched forward pass)."""
        if not states or not self.ready():
            return
        from serving.vectors import fingerprint

        rec = self.recommender
        try:
            vectors = rec.vectors(list(states), [None] * len(states))
        except Exception:  # derived data: a failure must not stop ingest; requests recompute
            log.exception("vector refresh failed for %d users", len(states))
            return
        for st, vec in zip(states, vectors, strict=True):
            self.cache.put(st.user_id, rec.version, fingerprint(st), vec)
        done = time.time()
        for ts in event_ts:
            metrics.EVENT_TO_VECTOR_SECONDS.observe(max(done - ts, 0.0))
        metrics.VECTORS_REFRESHED.inc(len(states))

    def answer(
        self, state: UserState | None, request: RecommendationRequest, now: float
    ) -> RecommendationResponse:
        if not self.ready():
            return RecommendationResponse(
                request_id=request.request_id,
                user_id=request.user_id,
                error=f"no snapshot under {self.settings.snapshot_dir}",
            )
        from serving.vectors import fingerprint

        rec = self.recommender
        started = time.perf_counter()
        vector = None
        own_device = request.context.device in (None, state.device if state else None)
        if state is not None and own_device:
            vector = self.cache.get(request.user_id, rec.version, fingerprint(state))
        metrics.VECTOR_CACHE.labels("hit" if vector is not None else "miss").inc()
        response = rec.recommend(state, request, now, vector)
        response.latency_ms["worker"] = round(1000 * (time.perf_counter() - started), 3)
        return response
