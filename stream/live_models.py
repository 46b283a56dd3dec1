"""The worker's live models: the served snapshot pair, per-event vector refresh, answers.

Kept apart from the faust wiring in :mod:`stream.app`: the agents call :meth:`Serving.refresh`
after every ingest batch and :meth:`Serving.answer` for every request.

Snapshots are loaded by a loader thread, never on the event loop: it verifies the newest
complete candidate + ranker pair (checksummed manifests), loads or builds its ANN index, and
only then replaces the one reference :attr:`Serving.recommender`. A request reads that
reference once, so a request in flight finishes on the version it started with; user vectors
are cached per version, so a vector computed by an older version is recomputed before use.
A snapshot that fails verification is refused (log line + metric) and the current one keeps
serving.

Which pair is wanted: the poll only ever moves forward, to a pair newer (by directory mtime)
than the served one; an announcement names a pair, which is refused if it is older (by the
snapshots' manifest creation times) than the served one, unless it is flagged ``rollback``.
After a rollback the poll is suspended: the newest pair on disk is the one rolled back from,
and moving to it on the next poll would undo the rollback. The next announcement that swaps
the worker to another pair without the flag resumes polling.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from serving.traffic_split import in_canary
from stream import metrics
from stream.announce import VERSION, Announcement
from stream.events import RecommendationRequest, RecommendationResponse
from stream.fresh_items import FreshItems
from stream.state import UserState
from stream.takedowns import Takedowns
from watchnext.settings import Settings

log = logging.getLogger(__name__)
KINDS = ("candidates", "ranker")
T = TypeVar("T")


def _age(created: float) -> float:
    """Seconds since ``created``, when Prometheus scrapes the gauge."""
    return time.time() - created


def _by_recommender(
    pick: Callable[[int], Any], items: list[T], user_of: Callable[[T], int]
) -> list[tuple[Any, list[T]]]:
    """``items`` grouped by the Recommender that serves their user, in first-seen order."""
    groups: dict[int, tuple[Any, list[T]]] = {}
    for item in items:
        rec = pick(user_of(item))
        groups.setdefault(id(rec), (rec, []))[1].append(item)
    return list(groups.values())


def _mtime(pair: tuple[Path, Path]) -> float:
    return max(d.lstat().st_mtime for d in pair)  # the directories' own times, never a target's


class Serving:
    """Holds the served snapshot pair and swaps in newer ones from a loader thread.

    Without a snapshot it answers every request with an error response (never silence).
    A refused pair is tried again only after ``retry_s`` seconds (it may have been repaired).
    An announcement flagged ``rollback`` is served even if older, and pins it: the poll stays
    suspended until a later announcement without the flag swaps in another pair.
    """

    def __init__(
        self,
        settings: Settings,
        retry_s: float = 30.0,
        poll_s: float = 5.0,
        takedowns: Takedowns | None = None,
        fresh: FreshItems | None = None,
    ) -> None:
        """``takedowns``: the items no answer may contain (:mod:`stream.takedowns`);
        ``fresh``: the items newer than the snapshot, for the overlay (:mod:`stream.fresh_items`;
        None: no overlay)."""
        from serving.vectors import VectorCache

        self.settings = settings
        self.takedowns = takedowns
        self.fresh = fresh if settings.overlay else None
        self._overlay_lock = threading.Lock()  # the catalogue and the loader thread build
        self.recommender: Any = None
        # the canary pair's Recommender (settings.canary_version), serving canary_share of users
        self.canary: Any = None
        self._canary_refused: tuple[str, float] | None = None  # (version, when) last refusal
        self.cache = VectorCache()
        self.retry_s = retry_s
        self.poll_s = poll_s
        self._serving_key: tuple[str, str] | None = None
        self._serving_mtime = float("-inf")
        self._serving_created: dict[str, float] = {}  # kind -> served snapshot's creation time
        self._poll_suspended = False  # after a rollback, until the next announcement swaps
        self._wanted: Announcement | None = None  # the last announcement, not yet looked at
        self._first_look = threading.Event()  # the loader thread has looked at least once
        self._refused: dict[tuple[str, str], float] = {}
        self._announced: dict[tuple[tuple[str, str], ...], float] = {}
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()  # one load at a time
        self._thread: threading.Thread | None = None
        from model.snapshot_store import worker_name

        self.worker = worker_name(settings.app_id)  # this worker's lease on what it serves
        self._lease_written = float("-inf")

    # --- loading ------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the loader thread (idempotent): first load now, then every ``poll_s``."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="snapshot-loader", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._serving_key is not None:
            from model.snapshot_store import drop_lease

            try:
                drop_lease(self.snapshot_dir, self.worker, self.settings.snapshot_lease_dir)
            except OSError:  # it expires on its own after snapshot_lease_s
                log.warning("could not drop this worker's snapshot lease", exc_info=True)

    def _refresh_lease(self, force: bool = False) -> None:
        """Tell retention what this worker serves: on every swap, else every quarter lease."""
        rec = self.recommender
        if rec is None or self._stop.is_set():
            return
        now = time.time()
        if not force and now - self._lease_written < self.settings.snapshot_lease_s / 4:
            return
        from model.snapshot_store import write_lease

        try:
            canary = self.canary.models.versions if self.canary is not None else None
            write_lease(
                self.snapshot_dir,
                self.worker,
                rec.models.versions,
                canary,
                now=now,
                where=self.settings.snapshot_lease_dir,
            )
            self._lease_written = now
        except OSError:  # a read-only or full volume must not stop serving
            log.warning("could not write this worker's snapshot lease", exc_info=True)

    def notify(self, announced: Announcement | Mapping[str, str] | None = None) -> None:
        """A snapshot pair was announced: look now instead of at the next poll.

        Takes the listener's :class:`~stream.announce.Announcement`, or plain versions (an
        announcement without the rollback flag).
        """
        if announced is not None and not isinstance(announced, Announcement):
            announced = Announcement(dict(announced))
        if announced is not None and announced.versions:
            self._announced[tuple(sorted(announced.versions.items()))] = time.time()
            self._wanted = announced
        self._wake.set()

    def _take_announcement(self) -> tuple[Announcement, tuple[Path, Path]] | None:
        """The last announcement and its pair's directories, if both are complete (consumed once).

        Versions name directories directly under the snapshot root, never a path, and a
        symlink in place of a snapshot directory is not followed.
        """
        from model.snapshot import is_snapshot_dir

        wanted, self._wanted = self._wanted, None
        if wanted is None:
            return None
        versions = wanted.versions
        if not set(KINDS) <= set(versions) or not all(
            VERSION.fullmatch(versions[k]) for k in KINDS
        ):
            log.warning(
                "ignoring announcement %s: no plain candidates and ranker versions", versions
            )
            metrics.ANNOUNCEMENTS_REFUSED.labels("invalid").inc()
            return None
        root = self.snapshot_dir
        pair = (
            root / f"candidates-{versions['candidates']}",
            root / f"ranker-{versions['ranker']}",
        )
        if not all(is_snapshot_dir(d) for d in pair):
            log.warning("announced pair %s not complete under %s; polling instead", versions, root)
            metrics.ANNOUNCEMENTS_REFUSED.labels("incomplete").inc()
            return None
        return wanted, pair

    def _older_than_served(self, pair: tuple[Path, Path]) -> list[str]:
        """The kinds in ``pair`` whose snapshot was created before the served one of that kind.

        A snapshot whose manifest cannot be read is not judged here: loading refuses it.
        """
        from model.snapshot import SnapshotError, snapshot_created

        older = []
        for kind, d in zip(KINDS, pair, strict=True):
            served = self._serving_created.get(kind)
            try:
                if served is not None and snapshot_created(d) < served:
                    older.append(kind)
            except SnapshotError:
                pass
        return older

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.check()
                self.check_canary()
                self._refresh_lease()
            except Exception:  # the loader must outlive any one bad directory
                log.exception("snapshot check failed")
            self._first_look.set()
            self._wake.wait(self.poll_s)
            self._wake.clear()

    def check(self) -> bool:
        """Load and swap in the newest complete pair if it is new; True when it swapped.

        Safe to call from any thread; blocking (verification, index load), so the worker only
        calls it from the loader thread.
        """
        if self._wanted is None and not any(self.snapshot_dir.glob("candidates-*")):
            return False  # nothing to load: do not even import torch (a GIL-bound import)
        from serving.recommend import Recommender, ServingModels, latest_snapshots

        with self._lock:
            taken = self._take_announcement()
            rollback = False
            found: tuple[Path, Path] | None
            if taken is not None:
                wanted, found = taken
                rollback = wanted.rollback
                older = self._older_than_served(found)
                if older and not rollback:
                    log.error(
                        "refusing announced pair %s: its %s older than the served %s; "
                        "announce it with rollback=true to go back on purpose",
                        dict(wanted.versions),
                        " and ".join(older) + (" is" if len(older) == 1 else " are"),
                        self._serving_key,
                    )
                    metrics.ANNOUNCEMENTS_REFUSED.labels("older").inc()
                    self._announced.pop(tuple(sorted(wanted.versions.items())), None)
                    return False
            else:  # a poll: only ever move to a pair newer than the served one
                if self._poll_suspended:
                    return False  # rolled back on purpose: wait for the next announcement
                found = latest_snapshots(self.settings.snapshot_dir)
                if found is None or _mtime(found) <= self._serving_mtime:
                    return False
            key = (found[0].name, found[1].name)
            if key == self._serving_key:
                return False
            refused_at = self._refused.get(key)
            if refused_at is not None and time.monotonic() - refused_at < self.retry_s:
                return False
            started = time.perf_counter()
            try:
                import torch

                torch.set_num_threads(self.settings.torch_threads)
                models = ServingModels.load(*found)
            except Exception as exc:  # corrupt, partial, tampered or incompatible: refuse
                log.error(
                    "refusing snapshot pair %s + %s: %s: %s",
                    found[0],
                    found[1],
                    type(exc).__name__,
                    exc,
                )
                self._refused[key] = time.monotonic()
                metrics.SNAPSHOT_REFUSED.inc()
                return False
            self._refused.pop(key, None)
            old = self.recommender
            rec = Recommender(
                models, retrieve=self.settings.retrieve_k, retrieve_i2i=self.settings.retrieve_i2i
            )
            if self.fresh is not None:  # what it now holds leaves the overlay; the rest stays
                self.fresh.forget(models.holds)
                self._build_overlay_safely(rec)
            self.recommender = rec  # the swap
            self._serving_key = key
            self._serving_mtime = max(self._serving_mtime, _mtime(found))
            self._serving_created = dict(models.created)
            if taken is not None:  # an announcement decides whether the poll may move us on
                self._poll_suspended = rollback
            if old is not None:
                for kind, version in old.models.versions.items():
                    if models.versions.get(kind) != version:
                        metrics.SNAPSHOT_INFO.remove(kind, version)
            for kind, version in models.versions.items():
                metrics.SNAPSHOT_INFO.labels(kind, version).set(1)
            for kind, created in models.created.items():
                metrics.SNAPSHOT_AGE.labels(kind).set_function(partial(_age, created))
            metrics.INDEX_ITEMS.set(len(models.index))
            metrics.SNAPSHOT_SWAPS.inc()
            metrics.SNAPSHOT_LOAD_SECONDS.observe(time.perf_counter() - started)
            announced = self._announced.pop(tuple(sorted(models.versions.items())), None)
            if announced is not None:
                metrics.ANNOUNCE_TO_SERVE_SECONDS.observe(time.time() - announced)
            self._refresh_lease(force=True)
            log.warning(
                "serving snapshots %s%s (%d items in the %s index, %s, loaded in %.1fs)",
                models.versions,
                " (rolled back: polling suspended until the next announcement)" if rollback else "",
                len(models.index),
                "exact" if models.index.exact else "IVF",
                models.index.origin,
                time.perf_counter() - started,
            )
            return True

    def check_canary(self) -> bool:
        """Load the configured canary pair when it is not loaded yet; True when it swapped in.

        The canary is a pair by version (``WATCHNEXT_CANARY_VERSION``), verified like any
        other; one that is missing or fails verification is logged and counted, the users of
        its share are served by the newest pair meanwhile, and it is tried again after
        ``retry_s``.
        """
        version, share = self.settings.canary_version, self.settings.canary_share
        if version is None or share <= 0.0:
            return False
        if self.canary is not None and self.canary.models.versions.get("candidates") == version:
            return False
        refused = self._canary_refused
        if refused and refused[0] == version and time.monotonic() - refused[1] < self.retry_s:
            return False
        from model.snapshot_store import pair_dirs
        from serving.recommend import Recommender, ServingModels

        try:
            models = ServingModels.load(*pair_dirs(self.snapshot_dir, version))
        except Exception as exc:  # missing, partial or tampered: the newest pair serves all
            log.error("refusing canary pair %s: %s: %s", version, type(exc).__name__, exc)
            self._canary_refused = (version, time.monotonic())
            metrics.SNAPSHOT_REFUSED.inc()
            return False
        canary = Recommender(
            models, retrieve=self.settings.retrieve_k, retrieve_i2i=self.settings.retrieve_i2i
        )
        if self.fresh is not None:
            self._build_overlay_safely(canary)
        self.canary = canary
        for kind, v in models.versions.items():
            metrics.CANARY_INFO.labels(kind, v).set(share)
        self._refresh_lease(force=True)
        log.warning("serving canary %s to %.1f%% of users", models.versions, 100 * share)
        return True

    def fold_in_config(self) -> Any:
        from serving.overlay import FoldInConfig

        return FoldInConfig(
            prior_weight=self.settings.overlay_prior_weight,
            max_watchers=self.settings.overlay_watchers,
            boost=self.settings.overlay_boost,
        )

    def _build_overlay(self, rec: Any) -> None:
        """Rebuild ``rec``'s overlay from the new items now known (any thread; one at a time)."""
        if self.fresh is None:
            return
        started = time.perf_counter()
        with self._overlay_lock:
            overlay = rec.update_overlay(self.fresh.items(), self.fold_in_config())
        metrics.OVERLAY_BUILD_SECONDS.observe(time.perf_counter() - started)
        if rec is self.recommender or self.recommender is None:
            metrics.OVERLAY_ITEMS.labels("items").set(len(overlay))
            metrics.OVERLAY_ITEMS.labels("watched").set(overlay.watched)

    def _build_overlay_safely(self, rec: Any) -> None:
        """The overlay is derived data: a failure to build it never stops a swap or serving
        (the pair serves with its previous overlay, or none)."""
        try:
            self._build_overlay(rec)
        except Exception:
            log.exception("overlay rebuild failed")

    def refresh_overlay(self) -> None:
        """New uploads or first watchers arrived: rebuild the served pairs' overlays (called
        on the catalogue thread after each poll that changed them)."""
        for rec in (self.recommender, self.canary):
            if rec is not None:
                self._build_overlay_safely(rec)

    def holds(self, item_id: int) -> bool:
        """Whether the served snapshot has ``item_id`` (no snapshot: it holds nothing new to
        fold in either, so True: nothing is published for it)."""
        rec = self.recommender
        return rec is None or rec.models.holds(item_id)

    def recommender_for(self, user_id: int) -> Any:
        """The Recommender that serves ``user_id``: the canary for its share of users (when it
        is loaded), else the newest pair."""
        canary = self.canary
        if canary is not None and in_canary(user_id, self.settings.canary_share):
            return canary
        return self.recommender

    def ready(self) -> bool:
        return self.recommender is not None

    async def wait_loaded(self, timeout_s: float) -> bool:
        """Wait (without blocking the event loop) until a pair is served; True when it is.

        A worker that joins or restarts gets request partitions before its loader thread has
        verified and loaded the snapshot pair (seconds at 1M items); answering those requests
        with "no snapshot" would fail them for nothing. Waits only while the loader's first
        look is still running: once it has looked and found nothing (or refused what it found),
        requests are answered at once, with the error.
        """
        deadline = time.monotonic() + timeout_s
        while self.recommender is None and not self._first_look.is_set():
            if time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.05)
        return self.recommender is not None

    @property
    def snapshot_dir(self) -> Path:
        return Path(self.settings.snapshot_dir)

    # --- serving ------------------------------------------------------------------------------

    def refresh(self, states: list[UserState], event_ts: list[float]) -> None:
        """Recompute the vectors of users whose state changed what their vector depends on
        (one batched forward pass per served pair). A change the vector does not depend on —
        an impression, a duplicate's offset bookkeeping — keeps the cached vector: it is still
        current."""
        if not states or self.recommender is None:
            return
        from serving.vectors import fingerprint

        refreshed = 0
        for rec, group in _by_recommender(self.recommender_for, states, lambda st: st.user_id):
            stale = [
                (st, fp)
                for st in group
                if self.cache.get(st.user_id, rec.version, fp := fingerprint(st)) is None
            ]
            if not stale:
                continue
            try:
                vectors = rec.vectors([st for st, _ in stale], [None] * len(stale))
            except Exception:  # derived data: a failure must not stop ingest; requests recompute
                log.exception("vector refresh failed for %d users", len(stale))
                continue
            for (st, fp), vec in zip(stale, vectors, strict=True):
                self.cache.put(st.user_id, rec.version, fp, vec)
            refreshed += len(stale)
        done = time.time()
        for ts in event_ts:
            metrics.EVENT_TO_VECTOR_SECONDS.observe(max(done - ts, 0.0))
        metrics.VECTORS_REFRESHED.inc(refreshed)

    def answer(
        self, state: UserState | None, request: RecommendationRequest, now: float
    ) -> RecommendationResponse:
        return self.answer_many([state], [request], now)[0]

    def answer_many(
        self,
        states: list[UserState | None],
        requests: list[RecommendationRequest],
        now: float,
    ) -> list[RecommendationResponse]:
        """Answer a micro-batch of requests; each request on one snapshot pair, read once: the
        canary for its share of users, else the newest pair (one pass per pair)."""
        if self.canary is None:
            return self._answer_with(self.recommender, states, requests, now)
        out: list[RecommendationResponse | None] = [None] * len(requests)
        for rec, group in _by_recommender(
            self.recommender_for, list(range(len(requests))), lambda i: requests[i].user_id
        ):
            answers = self._answer_with(
                rec, [states[i] for i in group], [requests[i] for i in group], now
            )
            for i, answer in zip(group, answers, strict=True):
                out[i] = answer
        return [r for r in out if r is not None]

    def _answer_with(
        self,
        rec: Any,
        states: list[UserState | None],
        requests: list[RecommendationRequest],
        now: float,
    ) -> list[RecommendationResponse]:
        """Answer requests with the Recommender ``rec`` (None: no snapshot yet, an error)."""
        if rec is None:
            return [
                RecommendationResponse(
                    request_id=r.request_id,
                    user_id=r.user_id,
                    error=f"no snapshot loaded yet from {self.settings.snapshot_dir}",
                )
                for r in requests
            ]
        from serving.vectors import fingerprint

        started = time.perf_counter()
        vectors: list[Any] = []
        keep: list[tuple[int, Any] | None] = []  # what a computed vector may be cached under
        for state, request in zip(states, requests, strict=True):
            vector = None
            own_device = request.context.device in (None, state.device if state else None)
            fp = fingerprint(state) if state is not None and own_device else None
            if fp is not None:
                vector = self.cache.get(request.user_id, rec.version, fp)
            metrics.VECTOR_CACHE.labels("hit" if vector is not None else "miss").inc()
            vectors.append(vector)
            keep.append(None if fp is None else (request.user_id, fp))
        missing = [i for i, v in enumerate(vectors) if v is None]
        if missing:
            # computed here, in one pass, and cached: the refresher (which may not have reached
            # this user yet) then finds it current, and the user's next request hits
            fresh = rec.vectors([states[i] for i in missing], [requests[i] for i in missing])
            for i, vec in zip(missing, fresh, strict=True):
                vectors[i] = vec
                if keep[i] is not None:
                    self.cache.put(keep[i][0], rec.version, keep[i][1], vec)
        vector_ms = 1000 * (time.perf_counter() - started)
        removed = self.takedowns.removed() if self.takedowns is not None else None
        responses = rec.recommend_many(states, requests, now, vectors, removed)
        worker_ms = round(1000 * (time.perf_counter() - started), 3)
        for response in responses:
            lat = response.latency_ms
            lat["vector"] = round(lat.get("vector", 0.0) + vector_ms, 3)
            lat["compute"] = round(lat.get("compute", 0.0) + vector_ms, 3)
            lat["worker"] = worker_ms
        return responses
