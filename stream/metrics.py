"""Prometheus metric declarations of the stream worker (base units in names).

Declared once at module level (the only module-level globals the project allows); step names
used as label values are stable, so dashboards and alerts can rely on them.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

EVENTS = Counter(
    "watchnext_events_total",
    "Events consumed, by topic kind and outcome (applied, duplicate, dead_letter).",
    ["kind", "outcome"],
)
DEAD_LETTERS = Counter(
    "watchnext_dead_letters_total",
    "Inputs sent to the dead-letter topic, by topic kind and reason class.",
    ["kind", "reason"],
)
BATCH_EVENTS = Histogram(
    "watchnext_ingest_batch_events",
    "Events per ingest batch.",
    buckets=(1, 10, 50, 100, 250, 500, 1000, 2000, 5000),
)
BATCH_SECONDS = Histogram(
    "watchnext_ingest_batch_seconds",
    "Wall time to validate, apply and write one ingest batch.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
)
STATE_WRITES = Counter(
    "watchnext_state_writes_total", "User-state values written (one per user per batch).", ["table"]
)
STATE_WRITE_BATCHES = Counter(
    "watchnext_state_write_batches_total",
    "Bulk user-state writes: one RocksDB write batch + changelog batch per partition and slice.",
)
FIRST_EVENT_TS = Gauge(
    "watchnext_ingest_first_event_timestamp_seconds",
    "Wall clock when this worker processed its first event (for throughput measurement).",
)
LAST_BATCH_TS = Gauge(
    "watchnext_ingest_last_batch_timestamp_seconds",
    "Wall clock when this worker finished its latest batch.",
)
MISROUTED = Counter(
    "watchnext_misrouted_total",
    "Keyed records read on a partition other than their key's murmur2 partition and forwarded "
    "there (a producer with another partitioner, e.g. librdkafka's default), by topic.",
    ["topic"],
)
ITEMS_TAKEN_DOWN = Gauge(
    "watchnext_items_taken_down",
    "Items taken down (an upload with removed: true) and excluded from every answer.",
)
READY = Gauge("watchnext_worker_ready", "1 once table recovery finished and streams run.")
REQUESTS = Counter(
    "watchnext_requests_total",
    "Recommendation requests answered, by outcome (ok, error, invalid).",
    ["outcome"],
)
REQUEST_SECONDS = Histogram(
    "watchnext_request_seconds",
    "In-worker time from consuming a request to handing its response to the producer.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
)
SNAPSHOT_INFO = Gauge(
    "watchnext_snapshot_info",
    "1 for the snapshot version being served, by kind.",
    ["kind", "version"],
)
CANARY_INFO = Gauge(
    "watchnext_canary_info",
    "The canary snapshot pair this worker serves, by kind and version (value: its user share).",
    ["kind", "version"],
)
SNAPSHOT_AGE = Gauge(
    "watchnext_snapshot_age_seconds",
    "Seconds since the served snapshot of each kind was created (computed at scrape time).",
    ["kind"],
)
INDEX_ITEMS = Gauge("watchnext_index_items", "Items in the ANN index being served.")
EVENT_TO_VECTOR_SECONDS = Histogram(
    "watchnext_event_to_vector_seconds",
    "From an event's Kafka timestamp to its user's refreshed vector.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
VECTORS_REFRESHED = Counter(
    "watchnext_vectors_refreshed_total", "User vectors recomputed after events."
)
REQUEST_BATCH = Histogram(
    "watchnext_request_batch_size",
    "Requests answered together in one micro-batch.",
    buckets=(1, 2, 4, 8, 16, 32, 64),
)
STATE_CACHE = Counter(
    "watchnext_state_cache_total",
    "User-state reads answered from the decoded-state cache (hit) or the table (miss).",
    ["outcome"],
)
VECTOR_CACHE = Counter(
    "watchnext_vector_cache_total",
    "Requests served with the refreshed vector (hit) or a recomputed one (miss).",
    ["outcome"],
)
SNAPSHOT_REFUSED = Counter(
    "watchnext_snapshot_refused_total", "Snapshot loads refused (corrupt, partial, incompatible)."
)
SNAPSHOT_SWAPS = Counter(
    "watchnext_snapshot_swaps_total", "Snapshot pairs verified, loaded and swapped in."
)
SNAPSHOT_LOAD_SECONDS = Histogram(
    "watchnext_snapshot_load_seconds",
    "Loader-thread time to verify a snapshot pair and load or build its index.",
    buckets=(0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 60.0, 120.0, 300.0),
)
CONSUMER_LAG = Gauge(
    "watchnext_consumer_lag_messages",
    "Messages between this worker's position and the partition's end, per assigned partition.",
    ["topic", "partition"],
)
ANNOUNCE_TO_SERVE_SECONDS = Histogram(
    "watchnext_announce_to_serve_seconds",
    "From a snapshot announcement on the model-updates topic to serving that snapshot.",
    buckets=(0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 60.0, 120.0),
)
RETRAIN_RUNS = Counter(
    "watchnext_retrain_runs_total",
    "Retrainer cycles by outcome (promoted, rejected, undecided, nothing_new, no_data, failed).",
    ["outcome"],
)
RETRAIN_LAST_SUCCESS_TS = Gauge(
    "watchnext_retrain_last_success_timestamp_seconds",
    "When the retrainer last finished a cycle without failing (any outcome but failed).",
)
RETRAIN_LAST_PROMOTION_TS = Gauge(
    "watchnext_retrain_last_promotion_timestamp_seconds",
    "When the retrainer last promoted and announced a snapshot pair.",
)
SEND_FAILURES = Counter(
    "watchnext_send_failures_total",
    "Records the worker produced that the broker did not acknowledge (each try counts), by topic.",
    ["topic"],
)
PARTITIONS_STOPPED = Gauge(
    "watchnext_partitions_stopped",
    "Input partitions this worker stopped consuming because an effect could not be delivered.",
)
OFFSET_GAPS = Counter(
    "watchnext_offset_gaps_total",
    "Jumps in fetched offsets that faust treats as absent records, by topic.",
    ["topic"],
)
FETCH_REWINDS = Counter(
    "watchnext_fetch_rewinds_total",
    "Partitions rewound because fetched records were dropped before delivery, by topic.",
    ["topic"],
)
UNACKED_EFFECTS = Gauge(
    "watchnext_unacked_effects",
    "Records produced by the worker still waiting for the broker's acknowledgement.",
)
ANNOUNCEMENTS_REFUSED = Counter(
    "watchnext_announcements_refused_total",
    "Snapshot announcements not acted on, by reason (invalid, incomplete, older).",
    ["reason"],
)
SHOWN = Counter(
    "watchnext_shown_total",
    "Items shown (answered in time, impression recorded), by the model versions that chose them.",
    ["candidates", "ranker"],
)
ATTRIBUTED_WATCHES = Counter(
    "watchnext_attributed_watches_total",
    "Watches carrying the request_id of a page that showed the item, by that page's versions.",
    ["candidates", "ranker"],
)
ATTRIBUTED_WATCH_SECONDS = Counter(
    "watchnext_attributed_watch_seconds_total",
    "Watch seconds of the attributed watches, by the versions of the page they came from.",
    ["candidates", "ranker"],
)
FRESH_WATCHES = Counter(
    "watchnext_fresh_watches_total",
    "Fresh watches read by this worker (folded: a new first watcher; known: already counted or "
    "past the cap; invalid: malformed).",
    ["outcome"],
)
FRESH_WATCHES_SENT = Counter(
    "watchnext_fresh_watches_sent_total",
    "Watches of items the served snapshot does not hold, published for every worker's overlay.",
)
OVERLAY_ITEMS = Gauge(
    "watchnext_overlay_items",
    "Items in the served freshness overlay (uploaded after the snapshot), and of them watched.",
    ["kind"],
)
OVERLAY_BUILD_SECONDS = Histogram(
    "watchnext_overlay_build_seconds",
    "Time to rebuild the freshness overlay after new uploads or watches.",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
