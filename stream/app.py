"""The faust application: topics, RocksDB tables and the agents.

One table value per user (``users``, RocksDB via rocksdict, changelog-backed) and one per item
(``items``, from uploads). The user agent reads the watch/search/impression/profile topics as raw
bytes in batches (``stream.take_events``) and works through each batch in slices of
``ingest_slice_events``, yielding to the event loop between them so a request never waits for
more than one slice: per slice it validates, applies the pure transition of
:mod:`stream.state` to states read through the decoded-state cache
(:mod:`stream.state_cache`), writes each touched user once (:mod:`stream.table_writer`: one
RocksDB write batch and one changelog batch per partition) and dead-letters what is invalid.
Vector refresh is queued (:mod:`stream.refresher`), not done inline. The request agent answers
micro-batches (:meth:`stream.request_handler.RequestHandler.handle_many`) and applies each
answered request's impression to the user's state itself.

Delivery is at-least-once with idempotent state: every effect of an input (changelog record,
dead letter, response, impression) is produced without awaiting and its future handed to the
delivery barrier (:mod:`stream.delivery`), which acks the input only once the broker has
acknowledged all of them; faust commits only acked offsets (:mod:`stream.faust_fixes`). Replays
after a crash are absorbed by :func:`stream.state.apply`'s offset bookkeeping.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import socket
import threading
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faust
from faust.streams import _current_event  # the context faust tables read the partition from

from stream import faust_fixes, metrics
from stream.attribution import AttributionMetrics
from stream.catalogue import CatalogueListener
from stream.contract import EventRules, decode_event
from stream.delivery import DeliveryBarrier
from stream.events import (
    USER_EVENT_KINDS,
    EventKind,
    ImpressionEvent,
    InvalidEvent,
    UploadEvent,
)
from stream.faust_fixes import committed_offset, manage_topics
from stream.fresh_items import FreshItems
from stream.health import Readiness
from stream.ingest import Consumed, dead_letter, letter_key, process_batch, reason_class
from stream.live_models import Serving
from stream.refresher import VectorRefresher
from stream.request_handler import APPLIED_HEADER, RequestHandler, RequestRecord
from stream.routing import Forwarder, header_pairs, read_position
from stream.state import Limits, Position, UserState, apply_checked, encode
from stream.state_cache import StateCache
from stream.table_writer import BulkTableWriter
from stream.takedowns import Takedowns
from stream.topics import FRESH_WATCHES
from watchnext.settings import Settings

log = logging.getLogger("watchnext.app")


def _where(ev: Any) -> tuple[str, int, int]:
    return ev.message.topic, ev.message.partition, ev.message.offset


def _position(ev: Any) -> Position:
    """Where ``ev`` is de-duplicated: its origin when it is a forwarded copy
    (:mod:`stream.routing`), else where it was read."""
    msg = ev.message
    return read_position(msg.topic, msg.partition, msg.offset, msg.headers)


def _committed(app: faust.App, ev: Any, position: Position) -> int | None:
    """The committed offset that raises the de-duplication floor of ``position``: the read
    partition's, unless ``position`` is a forwarded copy's origin (another partition, whose
    commits this worker does not see)."""
    msg = ev.message
    if position.topic != msg.topic or position.partition != msg.partition:
        return None
    return committed_offset(app.consumer, msg.tp)


def table_dir(settings: Settings) -> Path:
    """Where faust keeps the RocksDB partitions of our tables (checked in :func:`build_app`)."""
    return Path(settings.data_dir) / "v1" / "tables"


@dataclass
class StreamApp:
    """The faust app and the handles tests and the worker need."""

    app: faust.App
    users: Any  # faust.Table[bytes, bytes]
    items: Any
    settings: Settings
    serving: Serving
    barrier: DeliveryBarrier | None = None


def _bind(event: Any) -> None:
    """Make ``event`` the current event, so table reads/writes use *its* partition.

    faust tables pick the RocksDB partition and the changelog partition from the current event.
    Inside a ``take_events`` batch that is whichever event arrived last, which may belong to
    another partition than the user being written; binding the user's own event first keeps the
    table co-partitioned with its source topics.
    """
    _current_event.set(weakref.ref(event))


async def _wait_for(flag: threading.Event, timeout_s: float) -> bool:
    """Wait (without blocking the event loop) until ``flag`` is set or ``timeout_s`` passed."""
    deadline = time.monotonic() + timeout_s
    while not flag.is_set() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return flag.is_set()


def _applied_at_request(ev: Any) -> bool:
    headers = ev.message.headers
    if not headers:
        return False
    pairs = headers.items() if isinstance(headers, dict) else headers
    return any(tuple(h) == APPLIED_HEADER for h in pairs)


def _track_lag(app: faust.App, events: Any) -> None:
    """Set the consumer-lag gauge for the partitions ``events`` came from.

    Read from faust's monitor (the end offsets its fetcher records), not by asking the
    consumer: calling into the consumer thread from an agent stalled offset commits in tests.
    """
    ends = getattr(app.monitor, "tp_end_offsets", None)
    if not ends:
        return
    last: dict[Any, int] = {}
    for ev in events:
        tp = ev.message.tp
        last[tp] = max(last.get(tp, -1), ev.message.offset)
    for tp, offset in last.items():
        end = ends.get(tp)
        if end is not None:
            metrics.CONSUMER_LAG.labels(tp.topic, str(tp.partition)).set(max(end - offset - 1, 0))


def group_instance_id(settings: Settings) -> str:
    """Stable identity of this worker in the consumer group."""
    if settings.worker_id:
        return settings.worker_id
    digest = hashlib.sha1(str(Path(settings.data_dir).resolve()).encode()).hexdigest()[:10]
    return f"{socket.gethostname()}-{digest}"


def _credentials(settings: Settings) -> Any:
    if settings.kafka_sasl_mechanism:
        return faust.SASLCredentials(
            username=settings.kafka_sasl_username,
            password=(
                settings.kafka_sasl_password.get_secret_value()
                if settings.kafka_sasl_password
                else None
            ),
            mechanism=settings.kafka_sasl_mechanism,
            ssl_context=_ssl_context(settings)
            if "SSL" in settings.kafka_security_protocol
            else None,
        )
    if settings.kafka_security_protocol == "SSL":
        return faust.SSLCredentials(_ssl_context(settings))
    return None


def _ssl_context(settings: Settings) -> Any:
    import ssl

    ctx = ssl.create_default_context(
        cafile=str(settings.kafka_ssl_cafile) if settings.kafka_ssl_cafile else None
    )
    if settings.kafka_ssl_certfile:
        ctx.load_cert_chain(str(settings.kafka_ssl_certfile), str(settings.kafka_ssl_keyfile or ""))
    return ctx


def build_app(
    settings: Settings,
    bootstrap: str,
    worker_name: str | None = None,
    readiness: Readiness | None = None,
) -> StreamApp:
    """Build (but do not start) the faust app from settings.

    ``readiness`` (the worker's ``/ready`` state) is told about rebalances and snapshots.
    """
    faust_fixes.install()  # before the app exists: the delivery barrier relies on them
    worker = worker_name or f"{os.uname().nodename}:{os.getpid()}"
    app = faust.App(
        settings.app_id,
        broker=f"kafka://{bootstrap.replace(',', ';kafka://')}",
        broker_credentials=_credentials(settings),
        store="rocksdb://",
        datadir=str(settings.data_dir),
        web_enabled=False,
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication,
        topic_allow_declare=True,
        consumer_auto_offset_reset="earliest",
        processing_guarantee="at_least_once",
        broker_commit_interval=settings.commit_interval_s,
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=settings.heartbeat_interval_s,
        producer_acks=-1,
        # the largest record we produce is a dead letter; the dead-letter topic accepts as
        # much (stream.topics), so a record the producer takes is one the broker takes
        producer_max_request_size=settings.deadletter_max_message_bytes,
        stream_buffer_maxsize=max(4096, settings.batch_max_events * 2),
        broker_max_poll_records=settings.batch_max_events,
        table_standby_replicas=1,
        # Static membership: a worker restarted after a crash rejoins as the same member and
        # gets its partitions back without a group-wide rebalance (and without a second one
        # when the dead member's session expires).
        consumer_group_instance_id=group_instance_id(settings),
        key_serializer="raw",
        value_serializer="raw",  # tables hold our own JSON bytes (stream.state.encode)
    )
    if Path(app.conf.tabledir).resolve() != table_dir(settings).resolve():
        raise RuntimeError(f"faust keeps tables in {app.conf.tabledir}, not {table_dir(settings)}")
    limits = Limits.of(settings)
    rules = EventRules.of(settings)
    kind_of = {settings.topic(k.value): k for k in EventKind}

    def raw_topic(*names: str) -> Any:
        """A topic of raw bytes: values are our own JSON, decoded and validated by the agents."""
        return app.topic(
            *names, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw"
        )

    user_topic = raw_topic(*(settings.topic(k.value) for k in USER_EVENT_KINDS))
    upload_topic = raw_topic(settings.topic(EventKind.UPLOAD.value))
    deadletters = raw_topic(settings.topic("deadletter"))
    users = app.Table(
        "users",
        key_type=bytes,
        value_type=bytes,
        partitions=settings.partitions,
        help="Per-user state (stream.state.UserState JSON).",
    )
    items = app.Table(
        "items",
        key_type=bytes,
        value_type=bytes,
        partitions=settings.partitions,
        help="Item catalogue from upload events.",
    )

    first_seen = False
    takedowns = Takedowns()
    fresh = FreshItems(settings.overlay_items, settings.overlay_watchers)
    serving = Serving(settings, poll_s=settings.snapshot_poll_s, takedowns=takedowns, fresh=fresh)
    catalogue = CatalogueListener(
        settings,
        bootstrap,
        takedowns,
        fresh if settings.overlay else None,
        serving.refresh_overlay,
    )
    fresh_watches = raw_topic(settings.topic(FRESH_WATCHES))
    barrier = DeliveryBarrier(app, retries=settings.send_retries)
    barrier.watch_table(users)
    barrier.watch_table(items)
    manage_topics([*user_topic.topics, *upload_topic.topics])
    payload_limit = settings.deadletter_payload_bytes

    states = StateCache(settings.state_cache_users)
    refresher = VectorRefresher(serving, settings.refresh_slice_users)
    attribution = AttributionMetrics()  # shown (requests) and attributed (ingest), by version
    slice_events = settings.ingest_slice_events
    writer = BulkTableWriter(app, users) if settings.bulk_table_writes else None
    channels: dict[str, Any] = {}

    def forward_copy(
        topic: str,
        key: bytes,
        value: bytes,
        headers: list[tuple[str, bytes]],
        partition: int,
        timestamp: float | None,
    ) -> Any:
        """Buffer a misrouted record's copy on its key's partition (stream.routing)."""
        channel = channels.get(topic)
        if channel is None:
            channel = channels[topic] = raw_topic(topic)
        return barrier.send(channel, key, value, headers, partition=partition, timestamp=timestamp)

    forwarder = Forwarder(settings.partitions, forward_copy)

    def load_state(ev: Any, user_id: int) -> UserState | None:
        """The user's state under ``ev``'s partition: the decoded cache, else the table."""
        _bind(ev)
        return states.get(ev.message.partition, str(user_id).encode(), users.get)

    def ingest_slice(chunk: Sequence[Any], now: float) -> None:
        """Apply, write and dead-letter one slice of a batch (synchronous: no await)."""
        # records on a partition other than their key's go there (stream.routing), acked
        # with the slice once their copies are acknowledged
        with barrier.effects() as forwards:
            here = forwarder.keep_local(chunk)
        # impressions a request handler already applied (stream.request_handler) are acked
        # with the slice and not applied again
        chunk_todo = [ev for ev in here if not _applied_at_request(ev)]
        if len(chunk_todo) < len(here):
            metrics.EVENTS.labels("impression", "applied_at_request").inc(
                len(here) - len(chunk_todo)
            )
        positions = [_position(ev) for ev in chunk_todo]
        consumed = [
            Consumed(
                kind=kind_of[ev.message.topic],
                key=ev.message.key,
                value=ev.message.value,
                position=position,
                committed=_committed(app, ev, position),
            )
            for ev, position in zip(chunk_todo, positions, strict=True)
        ]
        result = process_batch(
            consumed,
            lambda user_id, index: load_state(chunk_todo[index], user_id),
            limits=limits,
            rules=rules,
            now=now,
            worker=worker,
            payload_limit=payload_limit,
            is_new=(lambda item: not serving.holds(item)) if settings.overlay else None,
        )
        with barrier.effects() as effects:
            rows = []
            for user_id, (state, index) in result.writes.items():
                ev = chunk_todo[index]
                key = str(user_id).encode()
                if writer is not None:
                    rows.append((ev.message.partition, key, encode(state)))
                else:
                    _bind(ev)
                    users[key] = encode(state)
                states.put(ev.message.partition, key, state)
            if rows:
                for delivery in writer.put_many(rows):  # type: ignore[union-attr]
                    barrier.capture(delivery)
            for index, letter in result.dead_letters:
                key = letter_key(chunk_todo[index].message.key)
                barrier.send(deadletters, key, letter.to_json())
            for _, seen in result.fresh:  # every worker's overlay folds these in
                barrier.send(fresh_watches, str(seen.item_id).encode(), seen.to_json())
            metrics.FRESH_WATCHES_SENT.inc(len(result.fresh))
        barrier.track(chunk, [*forwards, *effects])
        refresher.add(
            (
                state,
                [
                    chunk_todo[i].message.timestamp  # seconds
                    for i in result.applied.get(user_id, ())
                    if chunk_todo[i].message.timestamp
                ],
            )
            for user_id, (state, _) in result.writes.items()
        )
        for (kind, outcome), n in result.outcomes.items():
            metrics.EVENTS.labels(kind, outcome).inc(n)
        for (kind, reason), n in result.reasons.items():
            metrics.DEAD_LETTERS.labels(kind, reason).inc(n)
        attribution.attributed(result.attributed, result.attributed_seconds)
        metrics.STATE_WRITES.labels("users").inc(len(result.writes))

    @app.agent(user_topic, name="user-events")
    async def user_events(stream: Any) -> None:
        nonlocal first_seen
        # faust acks these events itself after every batch, also when the agent is cancelled
        # mid-way; those acks are ignored (stream.faust_fixes) and the barrier acks each event
        # once its changelog record and dead letter are acknowledged by the broker
        async for batch in stream.take_events(
            settings.batch_max_events, within=settings.batch_within_s
        ):
            started = time.time()
            if not first_seen:
                first_seen = True
                metrics.FIRST_EVENT_TS.set(started)
            # slices, each acked on its own, with a turn of the event loop between them: a
            # request that arrives meanwhile waits for one slice, not for the whole batch
            for start in range(0, len(batch), slice_events):
                ingest_slice(batch[start : start + slice_events], time.time())
                await asyncio.sleep(0)
            metrics.BATCH_EVENTS.observe(len(batch))
            done = time.time()
            metrics.BATCH_SECONDS.observe(done - started)
            metrics.LAST_BATCH_TS.set(done)
            _track_lag(app, batch)

    request_topic = raw_topic(settings.topic("requests"))
    responses = raw_topic(settings.topic("responses"))
    impressions = raw_topic(settings.topic(EventKind.IMPRESSION.value))
    manage_topics(request_topic.topics)
    outputs = {"responses": responses, "impression": impressions, "deadletter": deadletters}

    # user id -> its request in the batch being answered (-1: the batch's last request)
    batch_events: dict[int, Any] = {}

    def load_user(user_id: int) -> UserState | None:
        # under that request's own event: its partition is the one the user's state lives in
        return load_state(batch_events.get(user_id, batch_events[-1]), user_id)

    def apply_impression(shown: ImpressionEvent, position: Position) -> list[Any]:
        """Apply a request's own impression to its user's state now (same pure ``apply``,
        deduplicated by the request's offset) and return the futures of that write."""
        ev = batch_events.get(shown.user_id, batch_events[-1])
        state = load_state(ev, shown.user_id) or UserState(user_id=shown.user_id)
        new, _ = apply_checked(state, shown, position, limits, _committed(app, ev, position))
        if new is state:  # the request was answered before (redelivered): already applied
            return []
        key = str(shown.user_id).encode()
        states.put(ev.message.partition, key, new)
        metrics.STATE_WRITES.labels("users").inc()
        with barrier.effects() as effects:
            if writer is not None:
                for delivery in writer.put_many([(ev.message.partition, key, encode(new))]):
                    barrier.capture(delivery)
            else:
                _bind(ev)
                users[key] = encode(new)
        return list(effects)

    handler = RequestHandler(
        serving,
        load_user,
        lambda kind, key, value, headers=None, partition=None: barrier.send(
            outputs[kind], key, value, headers, partition=partition
        ),
        rules,
        worker,
        payload_limit,
        apply_impression if settings.impressions_applied_at_request else None,
        response_partitions=settings.partitions,
        attribution=attribution,
    )

    @app.agent(request_topic, name="requests")
    async def requests(stream: Any) -> None:
        # Acked by the barrier once the response (and impression or dead letter) is
        # acknowledged by the broker; faust's own acks on this topic are ignored.
        # Micro-batches: what arrived within ``request_batch_within_s`` is answered together
        # (one vector pass, one index search, one ranker pass), each request acked on its own.
        async for batch in stream.noack().take_events(
            settings.request_batch_max, within=settings.request_batch_within_s
        ):
            now = time.time()
            # requests on a partition other than their user's are forwarded there, answered
            # by that partition's worker (from the user's state), and acked with the copy
            forwarded: dict[int, list[Any]] = {}
            here = []
            for index, ev in enumerate(batch):
                with barrier.effects() as copy:
                    kept = forwarder.keep_local([ev])
                if kept:
                    here.append(ev)
                else:
                    forwarded[index] = list(copy)
            if not here:
                for index, copies in forwarded.items():
                    barrier.track([batch[index]], copies)
                continue
            if not serving.ready():  # a worker that just joined: its first load is under way
                await serving.wait_loaded(settings.snapshot_wait_s)
            if not catalogue.caught_up.is_set():  # no answer with a removed item
                await _wait_for(catalogue.caught_up, settings.snapshot_wait_s)
            batch_events.clear()
            batch_events[-1] = here[-1]  # user ids are >= 0: for a request without a key
            for ev in here:
                key = ev.message.key
                if isinstance(key, bytes) and key.isdigit() and len(key) <= 20:
                    batch_events.setdefault(int(key), ev)  # decode_request checks key == id
            items = [
                RequestRecord(
                    ev.message.key,
                    ev.message.value,
                    _position(ev),
                    ev.message.timestamp or None,
                    header_pairs(ev.message.headers),
                )
                for ev in here
            ]
            try:
                outcomes = handler.handle_many(items, now)
            except Exception:  # RequestHandler never raises; if it did, the requests are not
                # acked: they are answered again after the next rebalance or restart
                log.exception("%d requests from %s[%d]@%d failed", len(here), *_where(here[0]))
                metrics.REQUESTS.labels("error").inc(len(here))
                for index, copies in forwarded.items():
                    barrier.track([batch[index]], copies)
                continue
            finally:
                batch_events.clear()
            metrics.REQUEST_BATCH.observe(len(here))
            answered = iter(outcomes)
            for index, ev in enumerate(batch):  # in offset order, as the barrier acks them
                sent = forwarded.get(index)
                barrier.track([ev], sent if sent is not None else next(answered).futures)
            _track_lag(app, batch)

    def apply_upload(msg: Any, now: float) -> None:
        """Validate one upload and write it to the ``items`` table, or dead-letter it."""
        try:
            upload = decode_event(EventKind.UPLOAD, msg.value, msg.key, now=now, rules=rules)
        except InvalidEvent as exc:
            item = Consumed(
                EventKind.UPLOAD,
                msg.key,
                msg.value,
                Position(msg.topic, msg.partition, msg.offset),
            )
            letter = dead_letter(item, str(exc), now, worker, payload_limit=payload_limit)
            barrier.send(deadletters, letter_key(msg.key), letter.to_json())
            metrics.EVENTS.labels("upload", "dead_letter").inc()
            metrics.DEAD_LETTERS.labels("upload", reason_class(str(exc))).inc()
            return
        assert isinstance(upload, UploadEvent)
        key = str(upload.item_id).encode()
        old = items.get(key)
        # Last writer by event time wins; equal times keep the stored value (so a forwarded
        # copy applied twice changes nothing).
        if old is None or json.loads(old)["ts"] < upload.ts:
            items[key] = upload.to_json()
            metrics.EVENTS.labels("upload", "applied").inc()
        else:
            metrics.EVENTS.labels("upload", "duplicate").inc()

    @app.agent(upload_topic, name="uploads")
    async def uploads(stream: Any) -> None:
        async for ev in stream.events():
            with barrier.effects() as effects:
                if forwarder.keep_local([ev]):  # else forwarded to its item's partition
                    apply_upload(ev.message, time.time())
            barrier.track([ev], effects)

    @app.task
    async def load_snapshots() -> None:
        from stream.announce import AnnouncementListener

        serving.start()  # verification and index loading run on the loader thread
        AnnouncementListener(settings, bootstrap, serving.notify).start()
        catalogue.start()

    @app.task
    async def refresh_vectors() -> None:
        await refresher.run()

    ready = readiness or Readiness()

    async def on_revoked(*_: Any, **__: Any) -> None:
        states.clear()  # a partition may be written elsewhere before it comes back
        refresher.clear()
        ready.rebalance_started()
        if writer is not None:  # as faust flushes its producer buffer before this signal
            left = await writer.flush(settings.session_timeout_s / 2)
            if left:
                log.warning("%d changelog batches still unacknowledged at revocation", left)

    async def on_ready(*_: Any, **__: Any) -> None:
        states.clear()  # and what a slice in flight wrote during the rebalance goes too
        ready.rebalance_completed()

    app.on_partitions_revoked.connect(on_revoked)
    app.on_rebalance_complete.connect(on_ready)

    @app.timer(1.0)
    async def track_snapshot() -> None:
        ready.set_snapshot(serving.ready())

    return StreamApp(
        app=app, users=users, items=items, settings=settings, serving=serving, barrier=barrier
    )
