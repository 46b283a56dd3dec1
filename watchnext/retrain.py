"""``watchnext retrain``: learn from the newest events, promote only if not worse, announce.

One cycle (:func:`retrain_once`):

1. **Catch up** the training log (:mod:`stream.training_log`) from its checkpoint.
2. **Data**: per-user timelines (watches by second, tokenized searches), profiles and devices as
   context, the catalogue from uploads, ranking pages from impressions joined with the watches
   that carry their ``request_id``.
3. **Held-out window**: the watches after the current snapshot's training window when at least
   ``min_holdout_users`` users watched there items the current model can score (data it has
   never seen), else the newest ``holdout_fraction`` of watch time. The gate
   (:mod:`model.promotion_gate`) trains the new recipe, warm-started from the current snapshot,
   on everything before the window and compares per-user recall@50 of the window's watches of
   items both models can score (watched items excluded), paired, with the current snapshot's;
   the share of hold-out watches neither could compare (new items) is reported apart.
4. **Decide**: fewer than ``min_holdout_users`` comparable users → ``undecided``, the served
   pair stays (a first cycle, with nothing served, promotes). Else reject only when the new
   model is measurably worse (the 95 % interval of the paired recall difference lies below
   ``-tolerance``), else promote; then train on everything (warm start
   again: vocabularies grow, existing rows keep their values), write the candidate snapshot with
   its ANN index and a ranker snapshot, each atomically, and announce the pair on
   ``model-updates``. The ranker is retrained when the log has enough impressions and ships
   only if its validation loss is within ``ranker_tolerance`` of the served ranker's on the same
   pages; else the served weights ship again with the grown catalogue.

Every outcome is appended to ``history.jsonl`` with its metrics and counted in
``watchnext_retrain_runs_total{outcome}``.
"""

from __future__ import annotations

import json
import logging
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from model.candidate_snapshot import export_candidates, load_candidates
from model.event_timelines import timeline_from_events
from model.examples import UserContext
from model.item_to_item import fit_item_to_item
from model.promotion_gate import (
    holdout,
    judge_candidates,
    judge_ranker,
    per_user_recall,
    ranker_loss,
    split_window,
)
from model.protocol import UserTimeline
from model.ranker_snapshot import export_ranker, load_ranker, snapshot_items
from model.ranking_data import PageSet, item_meta, pages_from_events
from model.ranking_features import ItemMeta
from model.shipped import PROJECT_BEST
from model.snapshot_store import pair_version, retain
from model.train_candidate import TrainConfig, Trained, fit
from model.train_ranker import RankerTrainConfig, fit_ranker
from serving.recommend import index_extras, latest_snapshots
from stream import metrics
from stream.announce import announcement, publish
from stream.events import (
    EventKind,
    UploadEvent,
)
from stream.state import Limits
from stream.training_log import TrainingLog
from watchnext.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetrainConfig:
    """What one cycle trains and how strict the promotion gate is."""

    epochs: int = 12
    tolerance: float = 0.01  # recall@50 the new model may measurably lose and still be promoted
    holdout_fraction: float = 0.1
    min_holdout_users: int = 20  # fewer comparable hold-out users: undecided, served pair kept
    ranker_tolerance: float = 0.02  # share of the served ranker's validation loss it may lose
    min_ranker_rows: int = 2_000  # fewer impression rows: keep the current ranker's weights
    k: int = 50
    seed: int = 0
    progress: bool = True


@dataclass
class Outcome:
    """One cycle's result, as logged."""

    outcome: str  # promoted | rejected | nothing_new | no_data
    events: int
    new_events: int
    metrics: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0


@dataclass
class LogData:
    """The training log as model inputs."""

    timelines: dict[int, UserTimeline]
    context: UserContext
    items: dict[int, ItemMeta]
    user_events: dict[int, list[tuple[EventKind, Any]]]


def log_data(events: list[tuple[EventKind, Any]]) -> LogData:
    """Group the log's events per user (time order) and build timelines and context."""
    per_user: dict[int, list[tuple[EventKind, Any]]] = defaultdict(list)
    items: dict[int, ItemMeta] = {}
    uploads = sorted(
        (e for k, e in events if k is EventKind.UPLOAD and isinstance(e, UploadEvent)),
        key=lambda e: e.ts,
    )
    for u in uploads:  # the newest upload of an item wins, as in the workers' items table
        items[u.item_id] = item_meta(u)
    for kind, e in events:
        if kind is not EventKind.UPLOAD:
            per_user[e.user_id].append((kind, e))
    timelines: dict[int, UserTimeline] = {}
    attrs: dict[int, dict[str, Any]] = {}
    for user, evs in per_user.items():
        evs.sort(key=lambda ke: ke[1].ts)
        timeline, attrs[user] = timeline_from_events(user, (e for _, e in evs))
        if timeline is not None:
            timelines[user] = timeline
    return LogData(timelines, UserContext.build(attrs), items, dict(per_user))


def _current(settings: Settings) -> tuple[Trained, Any, Any, Any] | None:
    found = latest_snapshots(settings.snapshot_dir)
    if found is None:
        return None
    cands, csnap = load_candidates(found[0])
    ranker, rsnap = load_ranker(found[1])
    return cands, csnap, ranker, rsnap


def retrain_once(settings: Settings, bootstrap: str, cfg: RetrainConfig | None = None) -> Outcome:
    """One cycle; see the module docstring."""
    cfg = cfg or RetrainConfig()
    started = time.perf_counter()
    root = Path(settings.retrain_dir)
    training_log = TrainingLog(root / "log")
    new_events = training_log.catch_up(settings, bootstrap, progress=cfg.progress)
    state_path = root / "state.json"
    state = json.loads(state_path.read_text()) if state_path.exists() else {}
    events = list(training_log.events())
    outcome = Outcome("nothing_new", len(events), new_events)
    if state.get("events_trained") == len(events):
        return _record(root, outcome, started)
    data = log_data(events)
    if not data.timelines:
        outcome.outcome = "no_data"
        return _record(root, outcome, started)
    current = _current(settings)
    train_cfg = replace(PROJECT_BEST.train, epochs=cfg.epochs, seed=cfg.seed, progress=False)
    if current is not None:
        train_cfg = TrainConfig(
            **{
                k: v
                for k, v in current[1].meta["train_config"].items()
                if k in TrainConfig.__annotations__
            }
        )
        train_cfg = replace(train_cfg, epochs=cfg.epochs, seed=cfg.seed, progress=False)
    warm = current[0] if current is not None else None

    # --- the gate: new recipe vs current snapshot on a window neither was trained on ----------
    watch_ts = np.array([s for t in data.timelines.values() for s in t.seconds])
    cut = float(np.quantile(watch_ts, 1 - cfg.holdout_fraction))
    warm_ids = set(warm.items.ids) if warm is not None else None
    if warm is not None and warm_ids is not None:
        history, targets = split_window(data.timelines, warm.window_end + 1e-6)
        if len(holdout(targets, warm_ids, warm_ids).comparable) >= cfg.min_holdout_users:
            cut = warm.window_end + 1e-6
    history, targets = split_window(data.timelines, cut)
    outcome.metrics.update(holdout_users=len(targets), cut=cut)
    if warm is None or warm_ids is None:
        outcome.metrics["gate"] = "first snapshot pair: nothing served to compare with"
    else:
        # the new vocabulary holds every served item (warm start) and more, so the comparable
        # users are known before the trial is trained: no trial for a window that cannot decide
        if len(holdout(targets, warm_ids, warm_ids).comparable) < cfg.min_holdout_users:
            return _undecided(root, state, state_path, outcome, started, cfg, len(events))
        trial = fit(history, data.context, PROJECT_BEST.model, train_cfg, warm=warm)
        window = holdout(targets, set(trial.items.ids), warm_ids)
        outcome.metrics.update(window.coverage())
        users = data.context.users
        new = per_user_recall(trial, train_cfg, history, window.comparable, users, cfg.k)
        cur = per_user_recall(warm, train_cfg, history, window.comparable, users, cfg.k)
        verdict = judge_candidates(new, cur, cfg.tolerance, cfg.min_holdout_users)
        outcome.metrics.update(
            {
                f"{name}_at_{cfg.k}" if name.endswith("_recall") else name: value
                for name, value in verdict.metrics.items()
            }
        )
        if verdict.decision == "undecided":
            return _undecided(root, state, state_path, outcome, started, cfg, len(events))
        if verdict.decision == "reject":
            outcome.outcome = "rejected"
            state["events_trained"] = len(events)
            _write_state(state_path, state)
            return _record(root, outcome, started)

    # --- promote: train on everything, write both snapshots, announce -------------------------
    final = fit(data.timelines, data.context, PROJECT_BEST.model, train_cfg, warm=warm)
    cand_dir = export_candidates(
        final,
        Path(settings.snapshot_dir),
        train_cfg,
        {"retrain": outcome.metrics},
        extras=index_extras(final),
        item_to_item=fit_item_to_item(data.timelines),
    )
    items = dict(snapshot_items(current[3])) if current is not None else {}
    items.update(data.items)
    pages = PageSet()
    limits = Limits()
    for evs in data.user_events.values():
        pages.pages.extend(pages_from_events(evs, items, limits))
    if pages.rows() >= cfg.min_ranker_rows:
        train_pages, val_pages = pages.split_by_time(0.1)
        ranker = fit_ranker(train_pages, RankerTrainConfig(seed=cfg.seed), val_pages)
        served_loss = ranker_loss(current[2], val_pages) if current is not None else None
        ship, figures = judge_ranker(
            ranker_loss(ranker, val_pages), served_loss, cfg.ranker_tolerance
        )
        outcome.metrics.update(figures)
        if ship or current is None:
            outcome.metrics["ranker"] = f"retrained on {pages.rows()} impression rows"
        else:
            ranker = current[2]
            outcome.metrics["ranker"] = (
                "kept weights: the retrained ranker's validation loss is worse than the served's"
            )
    elif current is not None:
        ranker = current[2]
        outcome.metrics["ranker"] = f"kept weights ({pages.rows()} impression rows < minimum)"
    else:
        raise RuntimeError("no ranker snapshot to keep and too few impressions to train one")
    rank_dir = export_ranker(
        ranker,
        Path(settings.snapshot_dir),
        {"retrain": True},
        items=items,
        version=pair_version(cand_dir),
    )
    outcome.versions = {
        "candidates": cand_dir.name.removeprefix("candidates-"),
        "ranker": rank_dir.name.removeprefix("ranker-"),
    }
    outcome.outcome = "promoted"
    publish(settings, bootstrap, announcement(outcome.versions, outcome.metrics))
    metrics.RETRAIN_LAST_PROMOTION_TS.set(time.time())
    try:  # housekeeping: a failure here must not turn a published promotion into "failed"
        deleted = retain(
            Path(settings.snapshot_dir),
            settings.snapshot_keep,
            settings.snapshot_lease_s,
            where=settings.snapshot_lease_dir,
        )
    except OSError:
        log.exception("snapshot retention failed; the next promotion tries again")
        deleted = []
    if deleted:
        outcome.metrics["retention_deleted"] = [s.path.name for s in deleted]
    state["events_trained"] = len(events)
    _write_state(state_path, state)
    return _record(root, outcome, started)


def _undecided(
    root: Path,
    state: dict[str, Any],
    state_path: Path,
    outcome: Outcome,
    started: float,
    cfg: RetrainConfig,
    events: int,
) -> Outcome:
    """Too few comparable hold-out users: keep the served pair, say so, and wait for new events
    (the same log would give the same window)."""
    outcome.outcome = "undecided"
    outcome.metrics["gate"] = (
        f"fewer than {cfg.min_holdout_users} hold-out users watched items both models can "
        "score: kept the served pair"
    )
    state["events_trained"] = events
    _write_state(state_path, state)
    return _record(root, outcome, started)


def _write_state(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(state))
    tmp.rename(path)


def _record(root: Path, outcome: Outcome, started: float) -> Outcome:
    outcome.seconds = round(time.perf_counter() - started, 2)
    metrics.RETRAIN_RUNS.labels(outcome.outcome).inc()
    metrics.RETRAIN_LAST_SUCCESS_TS.set(time.time())
    with open(root / "history.jsonl", "a") as f:
        f.write(json.dumps({"ts": time.time(), **asdict(outcome)}) + "\n")
    log.warning("retrain: %s", json.dumps(asdict(outcome)))
    print(
        f"[retrain] {outcome.outcome}: {outcome.new_events} new / {outcome.events} events, "
        f"{outcome.metrics}, {outcome.seconds}s",
        flush=True,
    )
    return outcome


def run_retrainer(
    settings: Settings, bootstrap: str, every_s: float | None, cfg: RetrainConfig
) -> int:
    """``--once`` (every_s None) or a cycle every ``every_s`` seconds until interrupted."""
    while True:
        try:
            retrain_once(settings, bootstrap, cfg)
        except Exception:  # a failed cycle is logged and counted; the next one tries again
            log.exception("retrain cycle failed")
            metrics.RETRAIN_RUNS.labels("failed").inc()
            if every_s is None:
                return 1
        if every_s is None:
            return 0
        time.sleep(every_s)
