"""Bulk writes to a faust RocksDB table: one write batch and one changelog batch per partition.

**Experimental, off by default** (``WATCHNEXT_BULK_TABLE_WRITES``). It was first turned off
because the kill -9 tests lost one to seven watch events with it in 3 of about 8 runs. That
loss was not in this module: a worker restarted after kill -9 fetched past records it had not
delivered, and faust took the jump as an offset gap and committed over it
(:mod:`stream.faust_fixes`, fix 5); the bulk writer's longer in-flight window only made it
likelier that a skipped record was one whose effect had not reached the changelog. With that
fixed, the kill -9 tests passed 8 of 8 runs with it on, but one fresh-clone run of the
1.5-minute chaos test lost an impression (1 of 6 runs). Its signature matches a search lost on
the per-key path whose cause was found and fixed later (a skip of one record right after a
seek, fix 5 too). With that and the offset-set de-duplication of :mod:`stream.state` in
place, one of three runs of the chaos tests with it on still failed: the 1.5-minute chaos run
lost one watch of one user (and one user's impression counters differed). The per-key path
passed the same tests six times and in CI, so the cause is on this path; it stays off.

faust writes a table value through ``table[key] = value``: a RocksDB put, then one changelog
``FutureMessage`` through its ``ProducerBuffer`` and aiokafka's per-record ``send``, then a
persisted-offset put when that record is acknowledged. py-spy put that path (producer buffer
and aiokafka sender) at a quarter of the worker's event loop under ``bench ingest``.
:class:`BulkTableWriter` does the same work per *slice* of the ingest agent: the slice's values
for one partition go into one RocksDB ``WriteBatch`` and into changelog record batches built
with aiokafka's ``create_batch``/``send_batch`` on faust's own producer, and the partition's
persisted offset is set once, when its batch is acknowledged — what faust's changelog
recovery (``apply_changelog_batch``) does on the reading side.

The invariants faust's table machinery keeps, and how they hold here:

- *Changelog is the truth.* Every value written locally is produced to the table's changelog
  topic, same key, same partition, raw bytes, in write order per partition: a partition's
  deliveries submit their batches strictly one after another (a chain of futures), so two
  slices' values of one key reach the log in the order they were written.
- *Persisted offset never runs ahead.* It is set to the last offset of an acknowledged batch,
  only ever upwards; a restart replays the changelog from there (idempotent: last value wins).
- *Standbys* read the changelog topic as before; nothing else changes for them.
- *Commit after durability.* The returned futures join the delivery barrier
  (:mod:`stream.delivery`), which acks the slice's input only when they succeeded. A failed
  delivery is sent again through :meth:`ChangelogDelivery.resend`, which produces the keys'
  *current* local values, so a retried old batch can never land after a newer value of the
  same key and win on replay.

It relies on faust 0.15.3 internals (the store's ``_db_for_partition`` and ``_key_index``, the
transport producer's aiokafka client); :mod:`stream.faust_fixes` pins that version's sources.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from stream import metrics

log = logging.getLogger(__name__)


class ChangelogDelivery(asyncio.Future):  # type: ignore[type-arg]
    """Done when the broker acknowledged a partition's changelog records of one slice."""

    def __init__(self, writer: BulkTableWriter, partition: int, keys: Sequence[bytes]) -> None:
        super().__init__()
        self.writer = writer
        self.partition = partition
        self.keys = list(keys)
        self.topic = writer.topic

    def resend(self) -> ChangelogDelivery:
        """Produce the current local values of this delivery's keys again."""
        return self.writer.resend(self)


class BulkTableWriter:
    """Writes many values of one faust table (RocksDB store, raw bytes) at once."""

    def __init__(self, app: Any, table: Any) -> None:
        self.app = app
        self.table = table
        self.topic: str = table.changelog_topic.get_topic_name()
        self._tail: dict[int, asyncio.Future[None]] = {}  # partition -> last submission
        self._persisted: dict[int, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()  # referenced until done

    @property
    def store(self) -> Any:
        return self.table.data

    def put_many(self, rows: Iterable[tuple[int, bytes, bytes]]) -> list[ChangelogDelivery]:
        """Write ``(partition, key, value)`` rows locally now; return one delivery per partition.

        Synchronous: the RocksDB writes are done when it returns, so reads of the table see
        them at once; the changelog batches are submitted by a task, in order per partition.
        """
        import rocksdict

        by_partition: dict[int, list[tuple[bytes, bytes]]] = defaultdict(list)
        for partition, key, value in rows:
            by_partition[partition].append((key, value))
        store = self.store
        deliveries = []
        for partition, kvs in by_partition.items():
            batch = rocksdict.WriteBatch(raw_mode=True)
            for key, value in kvs:
                batch.put(key, value)
                store._key_index[key] = partition
            store._db_for_partition(partition).write(batch)
            delivery = ChangelogDelivery(self, partition, [k for k, _ in kvs])
            self._submit(delivery, kvs)
            deliveries.append(delivery)
        metrics.STATE_WRITE_BATCHES.inc(len(deliveries))
        return deliveries

    def resend(self, failed: ChangelogDelivery) -> ChangelogDelivery:
        """A new delivery of ``failed``'s keys with their current local values."""
        db = self.store._db_for_partition(failed.partition)
        kvs = [(k, v) for k in failed.keys if (v := db.get(k)) is not None]
        delivery = ChangelogDelivery(self, failed.partition, [k for k, _ in kvs])
        self._submit(delivery, kvs)
        return delivery

    def _submit(self, delivery: ChangelogDelivery, kvs: list[tuple[bytes, bytes]]) -> None:
        before = self._tail.get(delivery.partition)
        submitted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._tail[delivery.partition] = submitted
        task = asyncio.ensure_future(self._produce(delivery, kvs, before, submitted))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _produce(
        self,
        delivery: ChangelogDelivery,
        kvs: list[tuple[bytes, bytes]],
        before: asyncio.Future[None] | None,
        submitted: asyncio.Future[None],
    ) -> None:
        acks: list[tuple[asyncio.Future[Any], int]] = []
        try:
            if before is not None:
                await asyncio.shield(before)  # the partition's earlier batches go first
            producer = await self._aiokafka()
            i = 0
            while i < len(kvs):
                batch = producer.create_batch()
                n = 0
                while i < len(kvs) and batch.append(key=kvs[i][0], value=kvs[i][1], timestamp=None):
                    i += 1
                    n += 1
                if n == 0:
                    raise ValueError(f"changelog value of {len(kvs[i][1])} bytes fits no batch")
                batch.close()
                acks.append(
                    (await producer.send_batch(batch, self.topic, partition=delivery.partition), n)
                )
        except BaseException as exc:
            if not delivery.done():
                delivery.set_exception(exc if isinstance(exc, Exception) else RuntimeError(exc))
            return
        finally:
            if not submitted.done():
                submitted.set_result(None)
            if self._tail.get(delivery.partition) is submitted:
                del self._tail[delivery.partition]
        try:
            results = await asyncio.gather(*(fut for fut, _ in acks))
        except Exception as exc:
            if not delivery.done():
                delivery.set_exception(exc)
            return
        ends = (md.offset + n - 1 for md, (_, n) in zip(results, acks, strict=True))
        last = max(ends, default=-1)
        if last > self._persisted.get(delivery.partition, -1):
            from faust.types import TP

            self._persisted[delivery.partition] = last
            self.store.set_persisted_offset(TP(self.topic, delivery.partition), last)
        if not delivery.done():
            delivery.set_result(None)

    async def flush(self, timeout_s: float) -> int:
        """Wait (up to ``timeout_s``) for every delivery submitted so far; the number still
        pending after it. Called when partitions are revoked: faust flushes its own producer
        buffer there, and a changelog batch of ours landing after the partition's next owner
        wrote the same key would overwrite that newer value."""
        pending = set(self._tasks)
        if pending:
            await asyncio.wait(pending, timeout=timeout_s)
        return sum(not t.done() for t in pending)

    async def _aiokafka(self) -> Any:
        """faust's own aiokafka producer (started with the app)."""
        producer = self.app.producer
        client = getattr(producer, "_producer", None)
        if client is None:
            await producer.maybe_start()
            client = producer._producer
        return client
