"""The worker process: recover state, run the faust agents, serve metrics, stop cleanly.

A worker that was killed (``kill -9``, OOM, power loss) may have RocksDB values whose
changelog records never reached Kafka; trusting them would let a replayed event be skipped
as a duplicate while the changelog never learns its effect. So a clean stop leaves a marker
file, and a start without it discards the local tables and rebuilds them from the changelog
(what Kafka Streams does with its checkpoint file). Correctness then rests only on what Kafka
acknowledged, and replays are absorbed by the idempotent state transition.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from stream.app import build_app, table_dir
from stream.health import Readiness, serve
from stream.rebuild import local_partitions, rebuild_before_join
from stream.redact import install as install_redaction
from stream.topics import create_topics
from watchnext.settings import Settings

log = logging.getLogger("watchnext.worker")
CLEAN_MARKER = "CLEAN_SHUTDOWN"


def prepare_data_dir(settings: Settings) -> dict[str, list[int]] | None:
    """Create the data dir; wipe local tables after an unclean stop. Returns the table
    partitions that were wiped (``{table: [partition, ...]}``), None if nothing was."""
    data = settings.data_dir
    data.mkdir(parents=True, exist_ok=True)
    marker = data / CLEAN_MARKER
    tables = table_dir(settings)
    wiped = None
    if tables.exists() and not marker.exists():
        log.warning(
            "unclean shutdown detected: rebuilding local tables in %s from the changelog", tables
        )
        wiped = local_partitions(tables)
        shutil.rmtree(tables)
    marker.unlink(missing_ok=True)
    return wiped


def snapshot_expected(settings: Settings) -> bool:
    """Whether there are snapshots to serve, so ``/ready`` waits for one (see stream.health)."""
    return any(Path(settings.snapshot_dir).glob("candidates-*"))


def run_worker(settings: Settings, bootstrap: str, loglevel: str = "info") -> int:
    """Run until SIGTERM/SIGINT; returns the exit code (0 after a clean stop)."""
    # Before any Kafka client exists: kafka-python logs its config, password included, at DEBUG.
    install_redaction(settings)
    try:
        import mode.loop

        mode.loop.use("uvloop")  # ~17% more events/s than asyncio's loop, measured here
    except ImportError:  # pragma: no cover - uvloop is a dependency, but stay runnable
        pass
    from faust.worker import Worker

    wiped = prepare_data_dir(settings)
    create_topics(settings, bootstrap)
    if wiped and settings.rebuild_before_join:
        # its partitions move to the other workers' standbys now, not after this rebuild
        if settings.worker_id:
            print(f"[worker] left the group first: {leave_group(settings, bootstrap)}", flush=True)
        rebuild_before_join(settings, bootstrap, table_dir(settings), wiped)
    readiness = Readiness(snapshot_expected=snapshot_expected(settings))
    server = serve(
        settings.metrics_port,
        settings.metrics_host,
        timeout_s=settings.http_timeout_s,
        readiness=readiness,
    )
    (settings.data_dir / "metrics.port").write_text(str(server.server_port))
    stream_app = build_app(settings, bootstrap, readiness=readiness)
    print(
        f"[worker] pid {os.getpid()} metrics http://127.0.0.1:{server.server_port}/metrics"
        f" data {settings.data_dir}"
        f"{' (tables rebuilt from changelog)' if wiped is not None else ''}",
        flush=True,
    )
    # Load the newest snapshot pair before joining the group: partitions that come to this
    # worker are then answered at once instead of waiting for a load that competes with table
    # recovery for the CPU (measured in bench chaos: seconds of unanswered requests per join).
    stream_app.serving.check()
    readiness.set_snapshot(stream_app.serving.ready())
    code = 1
    try:
        worker = Worker(stream_app.app, loglevel=loglevel, quiet=True)
        # faust's terminal spinner turns the root logger to DEBUG so it can spin on every log
        # record; with it, aiokafka's per-request debug logging cost ~9% of the worker's CPU.
        worker.spinner = None
        worker.execute_from_commandline()
    except SystemExit as exc:
        code = int(exc.code or 0)
    finally:
        server.shutdown()
        stream_app.serving.stop()  # releases its snapshot lease: retention may delete it now
    undelivered = stream_app.barrier.unacked if stream_app.barrier is not None else 0
    if code == 0 and undelivered:
        # a local table value whose changelog record never reached Kafka must not be trusted
        # by the next start (its input would be skipped as a duplicate): rebuild instead
        log.warning(
            "%d effects were not acknowledged before the stop: the next start rebuilds the "
            "tables from the changelog",
            undelivered,
        )
    if code == 0 and not undelivered:
        Path(settings.data_dir / CLEAN_MARKER).write_text("ok\n")
    if code == 0 and settings.leave_group_on_stop:
        leave_group(settings, bootstrap)
    return code


def leave_group(settings: Settings, bootstrap: str) -> bool:
    """Remove this worker's static member from the consumer group after a clean stop.

    A static member (``group.instance.id``) does not leave the group when it closes: the broker
    keeps its partitions assigned until the session times out, so a worker that is stopped, or
    restarted more slowly than the session timeout, leaves its partitions unserved meanwhile
    (measured: ~13 s of unanswered requests per SIGTERM in ``bench chaos``). Everything is
    committed and flushed at this point, so removing the member is safe: the group rebalances
    at once and the standby replicas take over. Best effort: a failure only costs the timeout.
    """
    from kafka.admin import KafkaAdminClient, MemberToRemove

    from stream.app import group_instance_id

    member = MemberToRemove(group_instance_id=group_instance_id(settings))
    try:
        admin = KafkaAdminClient(
            bootstrap_servers=bootstrap, request_timeout_ms=5000, **settings.kafka_client_config()
        )
        try:
            result = admin.remove_group_members(settings.app_id, [member])
        finally:
            admin.close()
    except Exception as exc:  # broker unreachable, old broker: the session timeout still works
        log.warning("could not leave the consumer group after stopping: %s", exc)
        return False
    ok = all(err.__name__ in ("NoError", "UnknownMemberIdError") for err in result.values())
    if not ok:
        log.warning("leaving the consumer group: %s", result)
    return ok
