"""The request path: fresh user vector → ANN top-K' ∪ item-to-item top-K'' → merge → rank →
top-K (paper Fig. 2: several candidate sources, one ranker).

:class:`Recommender` is pure computation over one user's current state (the value the stream
keeps in RocksDB) and a loaded pair of snapshots; the faust agent in :mod:`stream.app` only
decodes, looks the state up and sends the response. Every response carries the snapshot
versions it was computed with and its per-stage latency.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from model.blend_pages import RETRIEVE_I2I
from model.candidate_blend import Blend, SourceList, merge
from model.candidate_inputs import timeline_from_history, user_attrs, user_vectors
from model.candidate_snapshot import load_candidates
from model.features import member_of, sorted_lookup
from model.item_table import ItemTable, StackedItemTable
from model.item_to_item import ItemToItem, UserScores
from model.ranker_snapshot import load_ranker, snapshot_items
from model.ranking_features import ItemMeta, impression_features
from model.snapshot import is_snapshot_dir
from model.train_candidate import TrainConfig, Trained
from model.train_ranker import TrainedRanker
from serving.index import INDEX_FILE, IndexConfig, ItemIndex
from serving.index_probe import PendingIndex
from serving.overlay import (
    FoldInConfig,
    ItemSpace,
    NewItem,
    Overlay,
    OverlayBuilder,
    context_embedder,
    merge_by_score,
)
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
    i2i: ItemToItem | None = None  # the item-to-item source shipped with the candidates
    vectors: np.ndarray | None = None  # [N, H] item embeddings, row i = candidates.items.ids[i]

    def __post_init__(self) -> None:
        ids = np.asarray(self.candidates.items.ids, dtype=np.int64)
        self._order = np.argsort(ids, kind="stable")
        self._sorted_ids = ids[self._order]
        self.item_table = ItemTable(self.items)  # the ranker's item features, as columns
        self._space: ItemSpace | None = None

    def holds(self, item_id: int) -> bool:
        """Whether the candidate vocabulary (and so the index) has ``item_id``."""
        ids = self._sorted_ids  # on the ingest path, once per applied watch: a scalar search
        at = int(np.searchsorted(ids, item_id))
        return at < len(ids) and int(ids[at]) == item_id

    def item_space(self) -> ItemSpace:
        """The item vectors by id with channel/topic means: what the overlay folds in from
        (built once per snapshot, on first use: the loader thread's, at the swap)."""
        if self._space is None:
            vectors = (
                self.vectors
                if self.vectors is not None
                else self.candidates.model.item_vectors()[1:].detach().numpy()
            )
            self._space = ItemSpace.of(
                np.asarray(self.candidates.items.ids, dtype=np.int64),
                vectors,
                self.item_table,
                context_embedder(self.candidates, self.candidate_cfg),
            )
        return self._space

    def item_scores(self, user: np.ndarray, item_ids: np.ndarray) -> np.ndarray:
        """[C] u·v of ``item_ids`` (the neural source's score, for candidates another source
        nominated); -inf for an id outside the candidate vocabulary."""
        if self.vectors is None or len(self._sorted_ids) == 0 or len(item_ids) == 0:
            return np.full(len(item_ids), -np.inf, dtype=np.float32)
        pos, known = sorted_lookup(self._sorted_ids, item_ids)
        scores = self.vectors[self._order[pos]] @ user
        return np.where(known, scores, -np.inf).astype(np.float32)

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
            ItemToItem.from_tensors(csnap.tensors, str(csnap.meta.get("i2i", "ease"))),
            vectors,
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


def _watch_times(
    logits: np.ndarray, models: ServingModels, ids: np.ndarray, table: Any = None
) -> np.ndarray:
    """[k] the ranker's expected watch seconds for ``logits`` of items ``ids``, each capped at
    its item's duration.

    e^logit × scale (the weighted-LR odds, paper §4.2) approximates E[T](1 + P), well above
    E[T] when the click share P is high, so it goes through the ranker's validation
    calibration (:mod:`model.watch_calibration`); the duration cap is a safety net only.
    """
    seconds = np.asarray(models.ranker.watch_seconds(logits), dtype=np.float64).reshape(-1)
    table = models.item_table if table is None else table
    return np.minimum(seconds, table.columns(ids).duration)


class Recommender:
    """Answers requests from a user's live state with one :class:`ServingModels`.

    ``retrieve`` items come from the ANN index (the neural source) and ``retrieve_i2i`` from
    the item-to-item source when the snapshot ships one; the merge is ranked as one list. With
    ``retrieve_i2i`` 0 a shipped item-to-item source nominates nothing but still gives the ANN's
    items their item-to-item score and rank, the features the ranker was trained with.
    """

    def __init__(self, models: ServingModels, retrieve: int = 150, retrieve_i2i: int = 50) -> None:
        self.models = models
        self.retrieve = retrieve
        self.retrieve_i2i = retrieve_i2i if models.i2i is not None else 0
        # the depth of the item-to-item list whose ranks are ranker features: what it
        # nominates, or (not nominating) the blend the ranker was trained on (model.blend_pages)
        self.rank_i2i = retrieve_i2i or RETRIEVE_I2I
        # items uploaded after this snapshot (serving.overlay), replaced whole by the worker's
        # catalogue thread as uploads and their first watches arrive; None: none
        self.overlay: Overlay | None = None
        self._overlay_builder: OverlayBuilder | None = None

    def update_overlay(self, new_items: Mapping[int, NewItem], cfg: FoldInConfig) -> Overlay:
        """Fold in ``new_items`` and serve the result (one reference replaced: a batch in
        flight finishes on the overlay it read). Called from one thread at a time."""
        if not new_items and self._overlay_builder is None:  # nothing new yet: no item space
            self.overlay = None
            return Overlay(np.zeros(0, np.int64), np.zeros((0, 0), np.float32), self.table)
        if self._overlay_builder is None or self._overlay_builder.cfg != cfg:
            self._overlay_builder = OverlayBuilder(
                self.models.item_space(), self.models.item_table, cfg
            )
        self.overlay = self._overlay_builder.build(new_items)
        return self.overlay

    @property
    def table(self) -> ItemTable | StackedItemTable:
        """The item metadata the ranker reads: the snapshot's, with the overlay's new items."""
        overlay = self.overlay
        return overlay.table if overlay is not None else self.models.item_table

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

    def blends(
        self,
        states: Sequence[UserState | None],
        u: np.ndarray,
        exclude: Sequence[np.ndarray] | None = None,
    ) -> tuple[list[Blend], dict[str, float]]:
        """Every request's merged candidates for user vectors ``u`` [B, H], and the time (ms)
        the ANN search, the item-to-item source and the merge took. No source nominates what
        the user watched, nor the sorted ids of ``exclude[b]`` (the request's ``exclude``,
        items taken down)."""
        m = self.models
        t0 = time.perf_counter()
        watched = [_seen(st) for st in states]
        if exclude is not None:
            watched = [
                np.union1d(w, x) if len(x) else w for w, x in zip(watched, exclude, strict=True)
            ]
        ids, scores = m.index.search(u, self.retrieve + max(len(w) for w in watched))
        overlay = self.overlay  # read once: this batch sees one overlay
        fresh = (
            overlay.search(u, self.retrieve, watched)
            if overlay is not None and len(overlay)
            else None
        )
        ann: list[SourceList] = []
        for b, seen in enumerate(watched):
            row, sc = ids[b], scores[b]
            ok = row >= 0
            if len(seen):
                ok &= ~member_of(row, seen)
            top, top_scores = row[ok][: self.retrieve], sc[ok][: self.retrieve]
            if fresh is not None:  # the new uploads compete for the same K' slots by score
                top, top_scores = merge_by_score(top, top_scores, *fresh[b], self.retrieve)
            ann.append(SourceList(top, top_scores))
        t1 = time.perf_counter()
        i2i: list[UserScores | None] = [None] * len(states)
        if m.i2i is not None:  # scored even when it nominates nothing: its ranker features
            for b, st in enumerate(states):
                if st is not None and st.history:
                    i2i[b] = m.i2i.user_scores([w.item_id for w in st.history])
        t2 = time.perf_counter()
        out = []
        for b in range(len(states)):
            lists = {"candidates": ann[b]}
            fill: dict[str, Callable[[np.ndarray], np.ndarray]] = {
                "candidates": partial(m.item_scores, u[b])
            }
            us = i2i[b]
            if us is not None:
                top_ids, top_scores = us.top(self.rank_i2i, watched[b])
                if self.retrieve_i2i == 0:  # ranks of the ANN's items only, nothing nominated
                    keep = np.flatnonzero(member_of(top_ids, ann[b].ids))
                    lists["i2i"] = SourceList(top_ids[keep], top_scores[keep], keep)
                else:
                    lists["i2i"] = SourceList(top_ids, top_scores)
                fill["i2i"] = us.of
            elif m.i2i is not None:
                fill["i2i"] = _zeros  # no history: every item-to-item score is 0
            out.append(merge(lists, fill))
        t3 = time.perf_counter()
        stages = {
            "retrieve": 1000 * (t1 - t0),
            "i2i": 1000 * (t2 - t1),
            "merge": 1000 * (t3 - t2),
        }
        return out, stages

    def recommend_many(
        self,
        states: Sequence[UserState | None],
        requests: Sequence[RecommendationRequest],
        now: float,
        vectors: Sequence[np.ndarray | None],
        removed: np.ndarray | None = None,
    ) -> list[RecommendationResponse]:
        """Answer B requests at once: the missing user vectors in one forward pass, one index
        search [B, H] → [B, K'], the item-to-item source, the merge, and one ranker forward pass
        over every request's candidates.

        Each response is what :meth:`recommend` alone gives (the index returns its top-K' in
        score order, so each request's cut of the batch's K' is its own top-K'); its latency
        stages are the batch's, plus ``batch`` = B. Never returned: what the user watched, a
        request's ``exclude`` ids and ``removed`` (sorted ids of items taken down).
        """
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
        blends, stages = self.blends(states, u, exclusions(requests, removed))
        return self.rank_blends(
            states, requests, now, blends, {"vector": 1000 * (t1 - t0), **stages}
        )

    def _logits(
        self,
        states: Sequence[UserState | None],
        now: float | Sequence[float],
        blends: Sequence[Blend],
    ) -> tuple[np.ndarray, float]:
        """The ranker's logits of every blend's candidates, concatenated, and the ms it took."""
        m = self.models
        t0 = time.perf_counter()
        nows = [now] * len(blends) if isinstance(now, float | int) else list(now)
        raws = [
            impression_features(st, bl.columns(), self.table, float(t))
            for st, bl, t in zip(states, blends, nows, strict=True)
            if len(bl)
        ]
        flat = m.ranker.logits(raws) if raws else np.zeros(0)
        return flat, 1000 * (time.perf_counter() - t0)

    @staticmethod
    def _tops(
        flat: np.ndarray, requests: Sequence[RecommendationRequest], blends: Sequence[Blend]
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Per request: its blend's slice of the concatenated ``flat`` logits and the order
        of its top-k (best first, ties in merge order)."""
        start = 0
        for request, bl in zip(requests, blends, strict=True):
            logits = flat[start : start + len(bl)]
            start += len(bl)
            yield logits, np.argsort(-logits, kind="stable")[: request.k]

    def ranked_ids(
        self,
        states: Sequence[UserState | None],
        requests: Sequence[RecommendationRequest],
        now: float | Sequence[float],
        blends: Sequence[Blend],
    ) -> list[np.ndarray]:
        """Each request's top-k item ids in the order :meth:`rank_blends` answers them,
        without building response records (an evaluation serving 31k users their top 100
        spent 64 of its 300 s building items it only read the ids of)."""
        flat, _ = self._logits(states, now, blends)
        tops = self._tops(flat, requests, blends)
        return [bl.ids[order] for bl, (_, order) in zip(blends, tops, strict=True)]

    def rank_blends(
        self,
        states: Sequence[UserState | None],
        requests: Sequence[RecommendationRequest],
        now: float | Sequence[float],
        blends: Sequence[Blend],
        stages: dict[str, float],
    ) -> list[RecommendationResponse]:
        """The ranker's part of :meth:`recommend_many`: one forward pass over every request's
        merged candidates (``blends``, from :meth:`blends`), each request's top-k; ``stages``
        are the latencies (ms) so far; ``now`` one time for all or one per request. Public so
        that an evaluation reading each source from the same merge (``serving.system_eval``)
        neither merges twice nor answers one user at a time."""
        m = self.models
        flat, rank_ms = self._logits(states, now, blends)
        latency = {
            **{k: round(v, 3) for k, v in stages.items()},
            "rank": round(rank_ms, 3),
            "compute": round(sum(stages.values()) + rank_ms, 3),
        }
        if len(requests) > 1:
            latency["batch"] = float(len(requests))
        out = []
        tops = self._tops(flat, requests, blends)
        for request, bl, (logits, order) in zip(requests, blends, tops, strict=True):
            watch = _watch_times(logits[order], m, bl.ids[order], self.table).tolist()
            columns = zip(
                bl.ids[order].tolist(), logits[order].tolist(), bl.primary[order].tolist(),
                bl.of_rows(order), strict=True,
            )  # fmt: skip
            items = [
                RecommendedItem(
                    item_id=item,
                    score=round(logit, 6),
                    expected_watch_seconds=round(watch[n], 3),
                    source=bl.source[int(order[n])],
                    candidate_score=round(primary, 6),
                    source_scores={k: round(v, 6) for k, v in scores.items()} or None,
                    source_ranks=ranks or None,
                )
                for n, (item, logit, primary, (scores, ranks)) in enumerate(columns)
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


def exclusions(
    requests: Sequence[RecommendationRequest], removed: np.ndarray | None
) -> list[np.ndarray] | None:
    """Per request, the sorted ids it must never be answered with beyond what the user
    watched: its own ``exclude`` and the items taken down (None when there are none)."""
    if removed is None:
        removed = np.zeros(0, np.int64)
    if not len(removed) and not any(r.exclude for r in requests):
        return None
    return [
        np.union1d(removed, np.asarray(r.exclude, np.int64)) if r.exclude else removed
        for r in requests
    ]


def _seen(state: UserState | None) -> np.ndarray:
    """:meth:`UserState.seen_items` as a sorted array (the request path's membership tests)."""
    seen = state.seen_items() if state is not None else set()
    return np.sort(np.fromiter(seen, np.int64, len(seen)))


def _zeros(ids: np.ndarray) -> np.ndarray:
    return np.zeros(len(ids), dtype=np.float32)
