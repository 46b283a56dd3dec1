"""One typed settings object for every watchnext process.

Values come from (highest first) explicit keyword overrides (CLI flags), environment variables
prefixed ``WATCHNEXT_`` and the defaults below. Every component receives this object; nothing
reads the environment on its own, so a worker, the retrainer and the tests agree on topic names,
partition counts and data directories by construction.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]


def _default_home() -> Path:
    return Path.home() / ".cache" / "watchnext"


class Settings(BaseSettings):
    """Configuration shared by producers, workers, benchmarks and the retrainer.

    Attributes are documented inline; each maps to ``WATCHNEXT_<NAME>`` in the environment.
    """

    model_config = SettingsConfigDict(env_prefix="WATCHNEXT_", extra="ignore")

    # --- Kafka connection -------------------------------------------------------------------
    kafka_bootstrap: str | None = Field(
        default=None,
        description="Bootstrap servers (host:port,...). Unset: commands start a local broker.",
    )
    kafka_security_protocol: SecurityProtocol = "PLAINTEXT"
    kafka_sasl_mechanism: SaslMechanism | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: Path | None = None
    kafka_ssl_certfile: Path | None = None
    kafka_ssl_keyfile: Path | None = None
    connect_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="How long a command waits to reach the configured cluster before it "
        "gives up with a one-line error (workers and the retrainer keep retrying).",
    )

    # --- Local development broker -----------------------------------------------------------
    kafka_version: str = Field(default="4.1.1", description="Apache Kafka broker version.")
    kafka_home: Path = Field(
        default_factory=lambda: _default_home() / "kafka",
        description="Cache of broker jars resolved by Maven (outside the repository).",
    )
    kafka_data_dir: Path = Field(
        default_factory=lambda: _default_home() / "kafka-data",
        description="Log dirs, pid/state file and kafka.log of the local broker.",
    )
    kafka_heap: str = "768m"

    # --- Topics -----------------------------------------------------------------------------
    topic_prefix: str = "watchnext."
    partitions: int = Field(default=4, ge=1)
    replication: int = Field(default=1, ge=1)
    # Dead letters carry the raw payload (base64) plus metadata, so they may be larger than the
    # event that caused them; the topic allows more than the broker's 1 MB default.
    deadletter_max_message_bytes: int = 8 * 1024 * 1024

    # --- Worker -----------------------------------------------------------------------------
    app_id: str = "watchnext"
    data_dir: Path = Field(
        default_factory=lambda: _default_home() / "worker",
        description="RocksDB tables and the worker's clean-shutdown marker.",
    )
    worker_id: str | None = Field(
        default=None,
        description="Static group membership id (stable per worker, e.g. the StatefulSet pod "
        "name); default: host name + data dir.",
    )
    metrics_port: int = Field(default=9108, ge=0, description="Prometheus /metrics; 0 = any free.")
    metrics_host: str = Field(
        default="127.0.0.1",
        description="Address the /metrics and /ready endpoint binds; loopback for local runs, "
        "0.0.0.0 in a pod so Prometheus and the kubelet can reach it.",
    )
    http_timeout_s: float = Field(
        default=5.0, gt=0, description="Socket timeout of one /metrics or /ready connection."
    )
    batch_max_events: int = Field(default=2000, ge=1)
    batch_within_s: float = Field(
        default=0.05,
        gt=0,
        description="Longest wait for an ingest batch to fill: at light load it is part of "
        "every event's latency (5 ms: 10-14 ms p50 event->vector at 5 events/s instead of "
        "33 ms; measured with bulk table writes, with which 0.005 goes).",
    )
    request_batch_max: int = Field(
        default=32,
        ge=1,
        description="Requests answered together in one micro-batch (one vector pass, one "
        "index search, one ranker pass).",
    )
    request_batch_within_s: float = Field(
        default=0.002,
        gt=0,
        description="Longest wait for a request micro-batch to fill: added to a request's "
        "latency only when requests arrive slower than one per this interval.",
    )
    impressions_applied_at_request: bool = Field(
        default=True,
        description="The request handler applies the impression it records to the user's "
        "state itself and publishes it marked as applied, instead of the ingest path applying "
        "it when it comes back from Kafka.",
    )
    ingest_slice_events: int = Field(
        default=2000,
        ge=1,
        description="Events the ingest agent applies before it yields to the event loop, so a "
        "request waits behind at most one slice of ingest work. 200 with bulk table writes; "
        "with faust's per-key writes small slices cost a third of the ingest rate (2,119 vs "
        "3,065 events/s), so the default is one slice per batch.",
    )
    refresh_slice_users: int = Field(
        default=64,
        ge=1,
        description="Users whose vectors one refresh forward pass recomputes before yielding; "
        "users updated again meanwhile are refreshed once, with their newest state.",
    )
    bulk_table_writes: bool = Field(
        default=False,
        description="Experimental: write each ingest slice's user states as one RocksDB write "
        "batch and one changelog batch per partition (stream.table_writer) instead of faust's "
        "per-key path; goes with ingest_slice_events 200 and batch_within_s 0.005. Off by "
        "default: after the offset-set de-duplication, one of three runs of the chaos tests "
        "with it lost a watch (the per-key path: no loss in six runs and CI; issue 14 notes).",
    )
    state_cache_users: int = Field(
        default=50_000,
        ge=0,
        description="Decoded user states kept in memory (write-through, emptied on "
        "rebalance); 0 disables. A capped state is ~30 KB of Python objects.",
    )
    commit_interval_s: float = Field(default=1.0, gt=0)
    # A worker that died (kill -9) holds its partitions until the broker expires its session;
    # 10 s bounds that outage while tolerating GC pauses (broker minimum is 6 s).
    session_timeout_s: float = Field(default=10.0, ge=6)
    heartbeat_interval_s: float = Field(default=3.0, gt=0)
    send_retries: int = Field(
        default=5,
        ge=1,
        description="Tries of a produced record (changelog, dead letter, response) before the "
        "worker stops consuming its input partition; retried slowly after that.",
    )
    rebuild_before_join: bool = Field(
        default=True,
        description="After an unclean stop (kill -9, OOM): remove this worker's static member "
        "from the group at start, so its partitions move to the others' standbys at once, and "
        "rebuild the table partitions it held from the changelog before joining "
        "(stream.rebuild). Off: it rejoins at once, gets its partitions back and they wait "
        "while faust rebuilds them.",
    )
    leave_group_on_stop: bool = Field(
        default=True,
        description="After a clean stop, remove this static member from the group so its "
        "partitions move to the others at once (standbys take over) instead of after the "
        "session timeout. Off: a restart within the session timeout gets its partitions "
        "back without a rebalance, at the price of them waiting meanwhile.",
    )

    # --- Serving ----------------------------------------------------------------------------
    snapshot_dir: Path = Field(
        default_factory=lambda: _default_home() / "snapshots",
        description="Root of candidate-*/ranker-* snapshot directories the worker serves.",
    )
    retrieve_k: int = Field(
        default=150,
        ge=1,
        description="ANN candidates ranked per request (150 + 50 i2i: chosen on validation).",
    )
    retrieve_i2i: int = Field(
        default=50,
        ge=0,
        description=(
            "Item-to-item candidates merged with the ANN ones per request (0: the ANN's only, "
            "still scored and ranked by the item-to-item source for the ranker's features)."
        ),
    )
    retrain_dir: Path = Field(
        default_factory=lambda: _default_home() / "retrain",
        description="Retrainer training log, checkpoint and history.",
    )
    snapshot_keep: int = Field(
        default=5,
        ge=1,
        description="Retention: snapshots of each kind kept after a promotion (pinned, served "
        "and canary ones are kept besides).",
    )
    snapshot_lease_s: float = Field(
        default=600.0,
        gt=0,
        description="A worker's lease on what it serves counts as live for this long after its "
        "last refresh (every snapshot poll); retention never deletes a live lease's snapshots.",
    )
    canary_version: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}$",
        description="A snapshot pair version (watchnext snapshots list) served to "
        "WATCHNEXT_CANARY_SHARE of users instead of the newest pair, so online attribution "
        "compares the two; kept by retention while a worker serves it.",
    )
    canary_share: float = Field(
        default=0.0,
        ge=0.0,
        le=1.0,
        description="Share of users (a stable hash of the user id) served by the canary pair.",
    )
    overlay: bool = Field(
        default=True,
        description="Serve items uploaded after the snapshot from the freshness overlay "
        "(serving.overlay), folded in from their first watchers and channel, without a retrain.",
    )
    overlay_items: int = Field(
        default=20_000, ge=1, description="New items each worker keeps for the overlay."
    )
    overlay_watchers: int = Field(
        default=50, ge=1, description="First watchers of a new item folded into its vector."
    )
    overlay_prior_weight: float = Field(
        default=0.5,
        ge=0,
        description="Watchers the channel/topic prior of a new item counts as (fold-in λ).",
    )
    overlay_boost: float = Field(
        default=4.0,
        gt=0,
        description="Multiplies a folded vector's norm (new uploads are in their popularity "
        "spike); chosen on the validation window of `watchnext eval freshness`.",
    )
    snapshot_lease_dir: Path | None = Field(
        default=None,
        description="Where workers record what they serve (default <snapshot dir>/.leases); "
        "set it to a writable volume when the snapshot volume is mounted read-only.",
    )
    snapshot_poll_s: float = Field(
        default=5.0,
        gt=0,
        description="How often a worker looks for a newer snapshot pair without an announcement.",
    )
    snapshot_wait_s: float = Field(
        default=60.0,
        ge=0,
        description="How long a request waits for a worker that is still loading its first "
        "snapshot pair (a restarted or new worker) before it is answered with an error.",
    )
    torch_threads: int = Field(
        default=1,
        ge=1,
        description="Intra-op threads per worker: one request is too small to split, and the "
        "event loop, the loader thread and the broker client need the other cores.",
    )

    # --- Per-user state bounds --------------------------------------------------------------
    history_length: int = Field(default=50, ge=1, description="Watches kept per user.")
    watched_items: int = Field(
        default=500,
        ge=1,
        description="Distinct watched item ids kept per user, never recommended again.",
    )
    search_tokens: int = Field(default=50, ge=1, description="Search tokens kept per user.")
    impression_items: int = Field(default=200, ge=1, description="Items with counters per user.")
    dedup_window: int = Field(
        default=32, ge=0, description="Recent event ids kept per user and event kind."
    )
    attribution_pages: int = Field(
        default=16,
        ge=0,
        description="Recent answered pages (request id, model versions, items) kept per user, "
        "so a watch carrying a request id is credited to the models that chose it.",
    )
    attribution_items: int = Field(
        default=50, ge=1, description="Top items of each kept page a watch can be credited to."
    )

    # --- Validation -------------------------------------------------------------------------
    max_event_bytes: int = Field(default=64 * 1024, ge=256)
    max_future_skew_s: float = Field(default=300.0, ge=0)
    max_watch_ratio: float = Field(
        default=3.0,
        gt=0,
        description="watch_seconds may be at most this multiple of item_duration_seconds "
        "(when the event carries it): rewinds and replays, not a broken player clock.",
    )
    max_watch_seconds: float = Field(
        default=86_400.0, gt=0, description="Absolute cap on one watch event's watch_seconds."
    )
    max_item_duration_s: float = Field(
        default=86_400.0, gt=0, description="Largest item duration accepted (uploads, watches)."
    )
    deadletter_payload_bytes: int = Field(
        default=64 * 1024,
        ge=256,
        description="Larger payloads (and keys) are kept in a dead letter as this many leading "
        "bytes plus their length and sha256, so a dead letter always fits its topic.",
    )

    # --- Data -------------------------------------------------------------------------------
    movielens_dir: Path = Field(
        default_factory=lambda: Path(__file__).resolve().parents[1].parent / "shared/data/ml-100k",
        description="MovieLens-100K directory (u.data, u.user, u.item).",
    )

    def topic(self, name: str) -> str:
        """Full topic name for a logical topic (``watch`` -> ``watchnext.watch``)."""
        return f"{self.topic_prefix}{name}"

    def kafka_client_config(self) -> dict[str, object]:
        """Security options in kafka-python / aiokafka keyword form (same names in both)."""
        cfg: dict[str, object] = {"security_protocol": self.kafka_security_protocol}
        if self.kafka_sasl_mechanism:
            cfg["sasl_mechanism"] = self.kafka_sasl_mechanism
            cfg["sasl_plain_username"] = self.kafka_sasl_username
            if self.kafka_sasl_password is not None:
                cfg["sasl_plain_password"] = self.kafka_sasl_password.get_secret_value()
        if self.kafka_ssl_cafile:
            cfg["ssl_cafile"] = str(self.kafka_ssl_cafile)
        if self.kafka_ssl_certfile:
            cfg["ssl_certfile"] = str(self.kafka_ssl_certfile)
        if self.kafka_ssl_keyfile:
            cfg["ssl_keyfile"] = str(self.kafka_ssl_keyfile)
        return cfg


def settings_problem(exc: Exception, flags: dict[str, str] | None = None) -> str:
    """One line naming what is wrong in a settings ``ValidationError``: the environment
    variable (or the flag, for fields ``flags`` maps to one), the value, and the rule."""
    errors = getattr(exc, "errors", None)
    if errors is None:
        return str(exc).splitlines()[0]
    found = errors()
    first = found[0]
    field = str(first["loc"][0]) if first.get("loc") else "?"
    where = (flags or {}).get(field, f"WATCHNEXT_{field.upper()}")
    more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
    return f"{where}={first.get('input')!r}: {first['msg']}; fix or unset it{more}"


def settings_env(settings: Settings) -> dict[str, str]:
    """``WATCHNEXT_*`` variables that reproduce ``settings`` in a child process."""
    env: dict[str, str] = {}
    for name, value in settings.model_dump().items():
        if value is None:
            continue
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        env[f"WATCHNEXT_{name.upper()}"] = str(value)
    return env
