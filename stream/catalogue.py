"""Every worker's own read of the catalogue: uploads (takedowns, new items) and fresh watches.

Two things every worker must know whatever partitions it owns: which items are taken down
(:mod:`stream.takedowns`) and which items are newer than its snapshot, with their first
watchers (:mod:`stream.fresh_items`, for the freshness overlay). Both come from topics read
whole, from the start on every start, by one consumer outside the consumer group (as snapshot
announcements are read, :mod:`stream.announce`) on this module's thread: the upload topic and
the ``fresh-watches`` topic. ``caught_up`` is set once it has read up to the end offsets seen
when it started; requests wait for it after a start, so no answer contains an item taken down
before the worker started. After every poll that changed the new items (and once at the end of
the catch-up, not per poll during it), ``on_fresh`` is called on this thread: the worker
rebuilds its overlays there, never on the event loop.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from stream import metrics
from stream.contract import EventRules, decode_event
from stream.events import EventKind, FreshWatch, InvalidEvent, UploadEvent
from stream.fresh_items import FreshItems
from stream.takedowns import Takedowns
from stream.topics import FRESH_WATCHES
from watchnext.settings import Settings

log = logging.getLogger(__name__)


class CatalogueListener(threading.Thread):
    """Reads every partition of the upload and fresh-watches topics from the start."""

    def __init__(
        self,
        settings: Settings,
        bootstrap: str,
        takedowns: Takedowns,
        fresh: FreshItems | None = None,
        on_fresh: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(name="catalogue", daemon=True)
        self.settings = settings
        self.bootstrap = bootstrap
        self.takedowns = takedowns
        self.fresh = fresh
        self.on_fresh = on_fresh
        self.caught_up = threading.Event()
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            try:
                self._listen()
            except Exception:  # broker restarts etc.: read again from the start
                log.exception("catalogue listener failed; reconnecting in 5 s")
                self.stopped.wait(5.0)

    def _listen(self) -> None:
        from kafka import KafkaConsumer, TopicPartition

        uploads = self.settings.topic(EventKind.UPLOAD.value)
        topics = [uploads]
        if self.fresh is not None:
            topics.append(self.settings.topic(FRESH_WATCHES))
        consumer = KafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=None,
            enable_auto_commit=False,
            fetch_max_wait_ms=100,  # a takedown is applied within a fetch, not a poll period
            **self.settings.kafka_client_config(),
        )
        rules = EventRules.offline()  # the uploads agent dead-letters what is invalid
        try:
            tps = [
                TopicPartition(topic, p)
                for topic in topics
                for p in sorted(consumer.partitions_for_topic(topic) or ())
            ]
            consumer.assign(tps)
            consumer.seek_to_beginning(*tps)
            ends = consumer.end_offsets(tps)
            pending = False
            while not self.stopped.is_set():
                changed = False
                for tp, records in consumer.poll(timeout_ms=200).items():
                    for msg in records:
                        if tp.topic == uploads:
                            changed |= self._upload(msg, rules)
                        else:
                            changed |= self._fresh_watch(msg)
                pending |= changed
                if not self.caught_up.is_set() and all(
                    consumer.position(tp) >= ends[tp] for tp in tps
                ):
                    self.caught_up.set()
                    log.info("catalogue read: %d items down", len(self.takedowns.removed()))
                # while catching up (a whole upload history after a start), one rebuild at the
                # end instead of one per poll; requests wait for the catch-up anyway
                if pending and self.on_fresh is not None and self.caught_up.is_set():
                    self.on_fresh()
                    pending = False
        finally:
            consumer.close()

    def _upload(self, msg: Any, rules: EventRules) -> bool:
        """Apply an upload; True when the new items changed."""
        try:
            upload = decode_event(EventKind.UPLOAD, msg.value, None, now=time.time(), rules=rules)
        except InvalidEvent:
            return False
        assert isinstance(upload, UploadEvent)
        if self.takedowns.apply(upload):
            log.warning(
                "item %d %s", upload.item_id, "taken down" if upload.removed else "restored"
            )
        return self.fresh is not None and not upload.removed and self.fresh.upload(upload)

    def _fresh_watch(self, msg: Any) -> bool:
        """Take a fresh watch a worker published; a malformed one is skipped and counted."""
        try:
            watch = FreshWatch.model_validate_json(msg.value or b"")
        except ValueError:
            metrics.FRESH_WATCHES.labels("invalid").inc()
            return False
        assert self.fresh is not None
        took = self.fresh.watch(watch)
        metrics.FRESH_WATCHES.labels("folded" if took else "known").inc()
        return took

    def stop(self) -> None:
        self.stopped.set()
