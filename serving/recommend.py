"""The request path: fresh user vector → ANN top-K' → filter → rank → top-K (paper Fig. 2).

:class:`Recommender` is pure computation over one user's current state (the value the stream
keeps in RocksDB) and a loaded pair of snapshots; the faust agent in :mod:`stream.app` only
decodes, looks the state up and sends the response. Every response carries the snapshot
versions it was computed with and its per-stage latency.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from model.candidate_inputs import timeline_from_history, user_attrs, user_vectors
from model.candidate_snapshot import load_candidates
from model.ranker_snapshot import load_ranker, snapshot_items
from model.ranking_features import Candidate, ItemMeta, impression_features
from model.snapshot import is_snapshot_dir
from model.train_candidate import TrainConfig, Trained
from model.train_ranker import TrainedRanker
from serving.index import INDEX_FILE, IndexConfig, ItemIndex
from serving.index_probe import PendingIndex
from stream.events import RecommendationRequest, RecommendationResponse, RecommendedItem
from stream.state import UserState


@dataclass
class ServingModels:
    """One consistent pair of snapshots, with the index built over its item embeddings."""

    versions: dict[str, str]
    candidates: Trained
    candidate_cfg: TrainConfig
    ranker: TrainedRanker
    items: dict[int, ItemMeta]
    index: ItemIndex
    created: dict[str, float] = field(default_factory=dict)  # kind -> snapshot creation time

    @classmethod
    def load(
        cls, candidate_dir: Path, ranker_dir: Path, index_config: IndexConfig | None = None
    ) -> ServingModels:
        """Verify both snapshots (checksummed manifests, safetensors) and load the index.

        The shipped index is used only if it survives :class:`serving.index_probe.PendingIndex`
        (structure check, then a probe in a child process, run while the ranker loads);
        otherwise it is rebuilt from the checksummed item embeddings, which
        :func:`load_candidates` has matched to the model.
        """
        cands, csnap = load_candidates(candidate_dir)
        ids = np.asarray(cands.items.ids, dtype=np.int64)
        vectors = csnap.tensors["item_embeddings"].numpy()
        if vectors.shape != (len(ids), cands.model.config.out_dim):
            raise ValueError(
                f"{candidate_dir}: item_embeddings {tuple(vectors.shape)}, expected "
                f"{(len(ids), cands.model.config.out_dim)} (vocabulary × out_dim)"
            )
        pending = PendingIndex(csnap.extras.get(INDEX_FILE), vectors, ids, index_config)
        ranker, rsnap = load_ranker(ranker_dir)  # while the shipped index is being probed
        tc = {
            k: v for k, v in csnap.meta["train_config"].items() if k in TrainConfig.__annotations__
        }
        index = pending.get()
        return cls(
            {"candidates": csnap.version, "ranker": rsnap.version},
            cands,
            TrainConfig(**tc),
            ranker,
            snapshot_items(rsnap),
            index,
            {"candidates": csnap.created, "ranker": rsnap.created},
        )


def index_extras(trained: Trained, config: IndexConfig | None = None) -> dict[str, bytes]:
    """The ANN index over ``trained``'s item table, as a snapshot extra file.

    Built by whoever exports the snapshot (trainer, retrainer), so the minute-long IVF build
    for a million items happens once, not on every worker at every swap.
    """
    vectors = trained.model.item_vectors()[1:].detach().numpy()
    index = ItemIndex(vectors, np.asarray(trained.items.ids, dtype=np.int64), config)
    return {INDEX_FILE: index.to_bytes()}


def latest_snapshots(root: Path) -> tuple[Path, Path] | None:
    """The newest complete candidate and ranker snapshot directories under ``root``.

    A symlink in place of a snapshot directory is skipped, never followed: the loader serves
    only snapshots written under the root, and ordering by a link's target would let anyone
    who can create a link choose what is "newest".
    """

    def newest(kind: str) -> Path | None:
        dirs = sorted(
            (d for d in Path(root).glob(f"{kind}-*") if is_snapshot_dir(d)),
            key=lambda d: (d.lstat().st_mtime, d.name),  # same-second copies: by name
        )
        return dirs[-1] if dirs else None

    c, r = newest("candidates"), newest("ranker")
    return (c, r) if c is not None and r is not None else None


def _attrs(state: UserState | None, request: RecommendationRequest | None) -> dict[str, Any]:
    device = request.context.device if request is not None else None
    return user_attrs(
        state.profile if state is not None else None,
        device or (state.device if state else None),
    )


def _watch_time(logit: float, models: ServingModels, item_id: int) -> float:
    """e^logit × scale (the weighted-LR odds, paper §4.2), capped at the item's duration.

    The odds approximate E[T](1 + P): close to E[T] when clicks are rare, above it when they
    are not (MovieLens "watches" are near-certain), so a single viewing's bound is applied.
    """
    seconds = float(np.exp(logit) * models.ranker.scale)
    meta = models.items.get(item_id)
    if meta is not None and meta.duration is not None:
        seconds = min(seconds, float(meta.duration))
    return seconds


class Recommender:
    """Answers requests from a user's live state with one :class:`ServingModels`."""

    def __init__(self, models: ServingModels, retrieve: int = 200) -> None:
        self.models = models
        self.retrieve = retrieve

    @property
    def version(self) -> str:
        """The candidate snapshot version user vectors belong to."""
        return self.models.versions["candidates"]

    def vectors(
        self, states: list[UserState | None], requests: list[RecommendationRequest | None]
    ) -> np.ndarray:
        """[B, H] user vectors of a batch of users (request context where given)."""
        tls = []
        attrs = []
        for st, req in zip(states, requests, strict=True):
            history = st.history if st is not None else ()
            tokens = st.search_tokens if st is not None else ()
            uid = st.user_id if st is not None else (req.user_id if req is not None else 0)
            tls.append(timeline_from_history(uid, history, tokens) if history or tokens else None)
            attrs.append(_attrs(st, req))
        m = self.models
        return user_vectors(m.candidates, tls, attrs, m.candidate_cfg).numpy()

    def recommend(
        self,
        state: UserState | None,
        request: RecommendationRequest,
        now: float,
        vector: np.ndarray | None = None,
    ) -> RecommendationResponse:
        """Answer ``request``; ``vector`` is the user's refreshed vector when one is current."""
        return self.recommend_many([state], [request], now, [vector])[0]

    def recommend_many(
        self,
        states: Sequence[UserState | None],
        requests: Sequence[RecommendationRequest],
        now: float,
        vectors: Sequence[np.ndarray | None],
    ) -> list[RecommendationResponse]:
        """Answer B requests at once: the missing user vectors in one forward pass, one index
        search [B, H] → [B, K'], and one ranker forward pass over every request's candidates.

        Each response is what :meth:`recommend` alone gives (the index returns its top-K' in
        score order, so each request's cut of the batch's K' is its own top-K'); its latency
        stages are the batch's, plus ``batch`` = B.
        """
        m = self.models
        t0 = time.perf_counter()
        need = [i for i, v in enumerate(vectors) if v is None]
        fresh = (
            self.vectors([states[i] for i in need], [requests[i] for i in need])
            if need
            else np.zeros((0, 0), dtype=np.float32)
        )
        rows: list[np.ndarray] = []
        it = iter(fresh)
        for v in vectors:
            rows.append(np.asarray(next(it) if v is None else v, dtype=np.float32).reshape(-1))
        u = np.stack(rows)
        t1 = time.perf_counter()
        watched = [{w.item_id for w in st.history} if st is not None else set() for st in states]
        ids, scores = m.index.search(u, self.retrieve + max(len(w) for w in watched))
        cands = [
            [
                Candidate(int(i), "candidates", float(s))
                for i, s in zip(ids[b], scores[b], strict=True)
                if i >= 0 and int(i) not in watched[b]
            ][: self.retrieve]
            for b in range(len(requests))
        ]
        t2 = time.perf_counter()
        raws = [
            impression_features(st, c, m.items, now)
            for st, c in zip(states, cands, strict=True)
            if c
        ]
        flat = m.ranker.logits(raws) if raws else np.zeros(0)
        t3 = time.perf_counter()
        latency = {
            "vector": round(1000 * (t1 - t0), 3),
            "retrieve": round(1000 * (t2 - t1), 3),
            "rank": round(1000 * (t3 - t2), 3),
            "compute": round(1000 * (t3 - t0), 3),
        }
        if len(requests) > 1:
            latency["batch"] = float(len(requests))
        out = []
        start = 0
        for request, c in zip(requests, cands, strict=True):
            logits = flat[start : start + len(c)]
            start += len(c)
            order = np.argsort(-logits, kind="stable")[: request.k]
            items = [
                RecommendedItem(
                    item_id=c[j].item_id,
                    score=round(float(logits[j]), 6),
                    expected_watch_seconds=round(_watch_time(logits[j], m, c[j].item_id), 3),
                    source=c[j].source,
                    candidate_score=round(c[j].score, 6),
                )
                for j in order
            ]
            out.append(
                RecommendationResponse(
                    request_id=request.request_id,
                    user_id=request.user_id,
                    items=items,
                    model_versions=dict(m.versions),
                    latency_ms=dict(latency),
                )
            )
        return out
