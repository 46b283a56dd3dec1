"""Rebuild a killed worker's local tables from their changelogs *before* it joins the group.

A worker that did not stop cleanly cannot trust its RocksDB values (one may hold an effect whose
changelog record never reached Kafka), so its tables are discarded and rebuilt from the
changelog (:mod:`stream.worker`). Left to faust, that rebuild happens *after* the worker has
rejoined: static membership hands it its partitions back at once, and they wait unanswered
while faust's recovery reads every changelog partition from offset 0 (~25–30 s at ~90k
records in ``bench chaos``, growing with the state).

So an unclean start first removes the dead process's static member from the group — the other
workers take its partitions over from their standby replicas within one rebalance — then
rebuilds the partitions it held from the changelog, exactly as faust's recovery would
(``RocksDBStore.apply_changelog_batch``: the latest value per key, tombstones deleted, the
persisted offset set to the last record applied), and only then joins. faust's recovery then
reads only the changelog's tail past that offset. Correctness is unchanged: the tables hold
what the changelog holds, as after faust's own rebuild.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from faust.stores.rocksdb import RocksDBOptions
from faust.stores.rocksdb import Store as RocksDBStore

log = logging.getLogger(__name__)

_PARTITION_DB = re.compile(r"^(?P<table>.+)-(?P<partition>\d+)\.db$")


def local_partitions(tables: Path) -> dict[str, list[int]]:
    """The table partitions a worker holds locally (active or standby): ``{table: [p, ...]}``,
    from faust's RocksDB directory names (``<table>-<partition>.db``)."""
    found: dict[str, list[int]] = {}
    if not tables.is_dir():
        return found
    for path in sorted(tables.iterdir()):
        m = _PARTITION_DB.match(path.name)
        if m and path.is_dir():
            found.setdefault(m["table"], []).append(int(m["partition"]))
    return {table: sorted(parts) for table, parts in found.items()}


def rebuild_partitions(
    tables: Path,
    partitions: dict[str, list[int]],
    changelog: Callable[[str], str],
    consumer: Any,
    open_db: Callable[[Path], Any],
    progress: Callable[[str], None] = print,
    timeout_s: float = 600.0,
) -> dict[str, int]:
    """Write each listed partition's changelog into a fresh RocksDB; records read per table.

    ``consumer`` is a kafka-python ``KafkaConsumer`` without a group; ``changelog(table)`` names
    a table's changelog topic; ``open_db(path)`` opens a RocksDB in faust's raw mode.
    """
    import rocksdict

    from stream.readback import read_partition

    counts: dict[str, int] = {}
    deadline = time.monotonic() + timeout_s
    for table, parts in partitions.items():
        topic = changelog(table)
        counts[table] = 0
        for p in parts:
            started = time.monotonic()
            db = open_db(tables / f"{table}-{p}.db")
            n, last = 0, None
            try:
                for chunk in read_partition(consumer, topic, p, deadline, max_records=10_000):
                    batch = rocksdict.WriteBatch(raw_mode=True)
                    for rec in chunk:
                        if rec.key is None:
                            continue
                        if rec.value is None:
                            batch.delete(rec.key)
                        else:
                            batch.put(rec.key, rec.value)
                        last = rec.offset
                        n += 1
                    db.write(batch)
                if last is not None:  # what faust's recovery reads from next time
                    db.put(RocksDBStore.offset_key, str(last).encode())
            finally:
                db.close()
            counts[table] += n
            progress(
                f"[rebuild] {topic}[{p}]: {n} records, last offset {'-' if last is None else last}"
                f" in {time.monotonic() - started:.1f}s"
            )
    return counts


def rebuild_before_join(
    settings: Any, bootstrap: str, tables: Path, held: dict[str, list[int]]
) -> dict[str, int] | None:
    """Rebuild ``held`` from the changelogs into ``tables`` (records per table), or None when
    that failed: faust's own recovery then reads what is missing from offset 0."""
    from kafka import KafkaConsumer

    from stream.readback import changelog_topic

    tables.mkdir(parents=True, exist_ok=True)
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        group_id=None,
        **settings.kafka_client_config(),
    )
    started = time.monotonic()
    try:
        counts = rebuild_partitions(
            tables,
            held,
            lambda table: changelog_topic(settings, table),
            consumer,
            RocksDBOptions().open,
            progress=lambda line: print(line, flush=True),
        )
    except Exception as exc:
        log.warning("rebuilding the tables before joining failed (%s): faust recovers them", exc)
        return None
    finally:
        consumer.close()
    print(
        f"[rebuild] {sum(counts.values())} changelog records in "
        f"{time.monotonic() - started:.1f}s before joining",
        flush=True,
    )
    return counts
