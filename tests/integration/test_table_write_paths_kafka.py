"""Both table write paths (``WATCHNEXT_BULK_TABLE_WRITES``): faust's per-key path (the default,
which every other broker test runs on) and the experimental bulk writer. For each, the table and
its changelog equal the recomputation, and so does a table rebuilt from that changelog."""

from __future__ import annotations

import pytest

from stream.topics import create_topics
from tests.eventgen import assert_states_match, make_events, recompute
from tests.integration.test_ingest_kafka import run_until_processed, wipe_tables_then_ingest
from tests.streamkit import limits_of, produce, read_changelog, read_rocksdb

pytestmark = pytest.mark.integration


PATHS = {
    "bulk": {"bulk_table_writes": True, "ingest_slice_events": 200, "batch_within_s": 0.005},
    "per-key": {"bulk_table_writes": False, "ingest_slice_events": 2000, "batch_within_s": 0.05},
}


@pytest.mark.parametrize("path", sorted(PATHS))
def test_table_writes_equal_the_recomputation_and_rebuild(
    settings, kafka_bootstrap, tmp_path, path
):
    bulk = settings.model_copy(update=PATHS[path])
    create_topics(bulk, kafka_bootstrap)
    first = make_events(seed=31, users=200, n=3000)
    produce(bulk, kafka_bootstrap, first)
    log = tmp_path / "worker.log"
    text = run_until_processed(bulk, kafka_bootstrap, log)
    from stream.process import metric_value

    batches = metric_value(text, "watchnext_state_write_batches_total")
    assert (batches > 0) == (path == "bulk")
    expected = recompute(first, limits_of(bulk))
    assert_states_match(read_rocksdb(bulk), expected)
    assert_states_match(read_changelog(bulk, kafka_bootstrap), expected)

    second = make_events(seed=32, users=200, n=1000, start=20_000)
    wipe_tables_then_ingest(bulk, kafka_bootstrap, log, first, second)
