"""The ``watchnext`` command: one entry point, a subcommand per job a user runs.

Errors a user can fix are printed as one line that says what to do (exit code 2), not as a
traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from watchnext.cli_parser import build_parser as build_command_parser
from watchnext.cli_parser import fail
from watchnext.settings import Settings, settings_problem


def _settings(args: argparse.Namespace) -> Settings:
    overrides = {}
    if getattr(args, "bootstrap", None):
        overrides["kafka_bootstrap"] = args.bootstrap
    return Settings(**overrides)


def cmd_kafka(args: argparse.Namespace) -> int:
    from deploy.kafka import runner

    settings = _settings(args)
    data_dir = Path(args.data_dir) if args.data_dir else settings.kafka_data_dir
    if args.action == "up":
        info = runner.start(settings, port=args.port, data_dir=data_dir, fresh=args.fresh)
        print(f"bootstrap {info.bootstrap}  (pid {info.pid}, log {info.log_file})")
        print(f"export WATCHNEXT_KAFKA_BOOTSTRAP={info.bootstrap}")
    elif args.action == "down":
        print("stopped" if runner.stop(data_dir) else f"no broker of ours runs on {data_dir}")
    else:
        found = runner.status(data_dir)
        if found is None:
            print(f"not running (data dir {data_dir})")
            return 1
        print(
            f"running: bootstrap {found.bootstrap} pid {found.pid} "
            f"Kafka {found.version} log {found.log_file}"
        )
    return 0


def cmd_topics(args: argparse.Namespace) -> int:
    from stream.topics import create_topics, topic_specs

    settings = _settings(args)
    with _cluster(settings) as bootstrap:
        created = create_topics(settings, bootstrap)
    for spec in topic_specs(settings):
        mark = "created" if spec.name in created else "exists"
        print(f"{spec.name:32s} partitions={spec.partitions} {mark}")
    return 0


def cmd_produce(args: argparse.Namespace) -> int:
    from stream.events import EventKind
    from stream.producer import check_jsonl, encode_events, read_jsonl, send_all
    from stream.replay import movielens_events
    from stream.topics import create_topics

    settings = _settings(args)
    kind = EventKind(args.kind) if args.kind else None
    total = None
    # everything a user can fix is found before any connection is made
    if args.jsonl:
        total = check_jsonl(Path(args.jsonl), kind)
    else:
        path = Path(args.movielens) if args.movielens else settings.movielens_dir
        if not path.exists():
            raise FileNotFoundError(
                f"--movielens {path}: no such directory (give DIR or set WATCHNEXT_MOVIELENS_DIR)"
            )
    with _cluster(settings) as bootstrap:
        create_topics(settings, bootstrap)
        if args.jsonl:
            messages = read_jsonl(Path(args.jsonl), kind)
        else:
            messages = encode_events(movielens_events(path, limit=args.limit))
        n = send_all(settings, bootstrap, messages, rate=args.rate, total=total)
    print(f"sent {n} events")
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from model.synth import SynthConfig, World

    world = World(
        SynthConfig(seed=args.seed, n_users=args.users, n_items=args.items, days=args.days)
    )
    if args.truth:
        world.save_truth(args.truth)
        print(f"ground truth: {args.truth}")
    if args.out:
        from tqdm import tqdm

        n = 0
        with open(args.out, "w") as f:
            for kind, event in tqdm(world.events(), desc="synth", unit="ev", mininterval=0.5):
                f.write(
                    f'{{"kind":"{kind.value}","event":{event.model_dump_json(exclude_none=True)}}}\n'
                )
                n += 1
        print(f"wrote {n} events to {args.out}")
        return 0
    from stream.producer import encode_events, send_all
    from stream.topics import create_topics

    settings = _settings(args)
    with _cluster(settings) as bootstrap:
        create_topics(settings, bootstrap)
        n = send_all(
            settings, bootstrap, encode_events(world.events()), rate=args.rate, desc="synth"
        )
    print(f"sent {n} events")
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from deploy.kafka.runner import ensure_kafka
    from stream.worker import run_worker

    settings = _settings(args)
    with ensure_kafka(settings) as bootstrap:
        return run_worker(settings, bootstrap, loglevel=args.loglevel)


def cmd_state(args: argparse.Namespace) -> int:
    from stream.readback import read_changelog
    from stream.state import summary

    settings = _settings(args)
    with _cluster(settings) as bootstrap:
        states = read_changelog(settings, bootstrap)
    for uid in args.user_ids:
        st = states.get(uid)
        print(json.dumps(summary(st) if st else {"user_id": uid, "state": None}))
    return 0


@contextlib.contextmanager
def _cluster(settings: Settings) -> Iterator[str]:
    """``ensure_kafka`` for a command: a configured cluster must answer within
    ``WATCHNEXT_CONNECT_TIMEOUT_S`` (one-line error, exit 2) instead of hanging."""
    from deploy.kafka.runner import ensure_kafka
    from stream.topics import check_reachable

    with ensure_kafka(settings) as bootstrap:
        if settings.kafka_bootstrap:
            check_reachable(settings, bootstrap, settings.connect_timeout_s)
        yield bootstrap


def _running_cluster(settings: Settings) -> str:
    """The configured cluster, else the local broker of ``watchnext kafka up``; never one
    started for the command (no worker would be there to answer)."""
    from deploy.kafka.runner import KafkaRunnerError, status
    from stream.topics import check_reachable

    if settings.kafka_bootstrap:
        check_reachable(settings, settings.kafka_bootstrap, settings.connect_timeout_s)
        return settings.kafka_bootstrap
    found = status(settings.kafka_data_dir)
    if found is None:
        raise KafkaRunnerError(
            "no cluster to ask: set WATCHNEXT_KAFKA_BOOTSTRAP or --bootstrap, or start one "
            "with `watchnext kafka up` and run `watchnext worker`"
        )
    return found.bootstrap


def _titles(settings: Settings) -> dict[int, str]:
    """Item titles from the MovieLens catalogue when one is configured and present."""
    from model.datasets.movielens import DatasetError, load

    try:
        return {i: it.title for i, it in load(settings.movielens_dir).items.items() if it.title}
    except (DatasetError, OSError):
        return {}


def cmd_recommend(args: argparse.Namespace) -> int:
    import uuid

    from serving.client import ask
    from stream.events import RecommendationRequest

    settings = _settings(args)
    request = RecommendationRequest(
        request_id=f"cli-{uuid.uuid4().hex[:12]}",
        user_id=args.user_id,
        k=args.k,
        exclude=args.exclude or None,
        deadline_ms=args.deadline_ms,
    )
    resp, _ = ask(settings, _running_cluster(settings), request, timeout_s=args.timeout)
    if args.json:
        print(resp.to_json().decode())
        return 1 if resp.error else 0
    if resp.error:
        print(f"user {args.user_id}: {resp.error}", file=sys.stderr)
        return 1
    titles = _titles(settings)
    versions = ", ".join(f"{k} {v}" for k, v in sorted(resp.model_versions.items()))
    took = resp.latency_ms.get("worker", resp.latency_ms.get("compute", 0.0))
    late = " (expired: past its deadline, no impression recorded)" if resp.expired else ""
    print(f"user {args.user_id}: {len(resp.items)} items ({versions}; {took:.1f} ms){late}")
    for n, it in enumerate(resp.items, 1):
        minutes = (it.expected_watch_seconds or 0.0) / 60
        title = titles.get(it.item_id, "")
        print(
            f"{n:3d}. {it.item_id:>8d}  {title:50.50s} expected watch {minutes:5.1f} min  "
            f"[{it.source}]"
        )
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from watchnext.demo import run_demo

    return run_demo(_settings(args), users=args.users, limit=args.limit)


def cmd_bench(args: argparse.Namespace) -> int:
    if args.what == "ingest":
        from watchnext.bench.ingest import run_ingest_bench

        return run_ingest_bench(
            _settings(args),
            events=args.events,
            users=args.users,
            repeat=args.repeat,
            as_json=args.json,
            profile=args.profile,
        )
    if args.what == "train":
        from watchnext.bench.train import run_train_bench

        settings = _settings(args)
        return run_train_bench(settings.movielens_dir, args.items, args.negatives, args.json)
    if args.what == "serve":
        from watchnext.bench.serve import run_serve_bench

        return run_serve_bench(
            _settings(args),
            items=args.items,
            rate=args.rate or 200.0,
            seconds=args.seconds,
            users=args.users,
            out=args.out,
            as_json=args.json,
            ladder=args.ladder,
            profile=args.profile,
        )
    if args.what == "chaos":
        from watchnext.bench.chaos import ChaosConfig, run_chaos_bench

        cfg = ChaosConfig(
            minutes=args.minutes,
            workers=args.workers,
            seed=args.seed,
            client_resend=not args.no_client_resend,
            faults=tuple(args.faults.split(",")),
        )
        return run_chaos_bench(_settings(args), cfg, args.out, args.json)
    if args.what == "fresh":
        from watchnext.bench.fresh import run_fresh_bench

        run_fresh_bench(
            _settings(args),
            items=args.items,
            watchers=args.watchers,
            out=args.out,
            as_json=args.json,
        )
        return 0
    if args.what == "swap":
        from watchnext.bench.swap import run_swap_bench

        return run_swap_bench(
            _settings(args),
            items=args.items,
            rate=args.rate or 50.0,
            out=args.out or Path("docs/results"),
            as_json=args.json,
        )
    raise SystemExit(f"unknown benchmark {args.what}")


def cmd_eval(args: argparse.Namespace) -> int:
    from watchnext.eval_candidates import run_eval_candidates

    if args.what == "freshness":
        from watchnext.eval_freshness import run_freshness

        result = run_freshness(Path(args.out), epochs=args.epochs or 10)
        if args.json:
            print(json.dumps(result, default=str))
        return 0
    if args.what == "ranking":
        from watchnext import eval_ranking

        if args.data and not args.synthetic:
            return eval_ranking.run_movielens(
                Path(args.data), args.epochs or 12, args.json, out_dir=Path(args.out)
            )
        return eval_ranking.run_synthetic(
            args.users, args.width, args.epochs or 12, Path(args.out), args.json
        )
    if args.what == "system":
        from watchnext.eval_system import run_eval_system

        settings = _settings(args)
        data = Path(args.data) if args.data else settings.movielens_dir
        return run_eval_system(
            None if args.synthetic else data,
            args.synthetic,
            args.seeds,
            args.json,
            epochs=args.epochs,
            memory_mb=args.memory_mb,
            out_dir=Path(args.out),
            validation=args.validation,
            negatives=args.negatives,
            ranker_min_count=args.ranker_min_count,
            retrieve=(args.retrieve, args.retrieve_i2i),
            page_users=args.page_users,
            loss=args.loss,
            **({"generator": args.generator} if args.generator else {}),
        )
    settings = _settings(args)
    data = Path(args.data) if args.data else settings.movielens_dir
    if args.figure6:
        from watchnext.figure6 import run_figure6

        source = "synthetic" if args.synthetic else data
        return run_figure6(source, Path(args.out), [0, 1, 2, 3, 4], args.epochs, args.json)
    if args.select:
        from watchnext.eval_candidates import run_selection

        return run_selection(data, args.json, args.seeds)
    names = args.models.split(",") if args.models else None
    return run_eval_candidates(
        data, args.seeds, args.json, args.depth, args.loss, args.epochs, names, args.memory_mb
    )


def cmd_train(args: argparse.Namespace) -> int:
    from watchnext.train import run_train

    settings = _settings(args)
    data = Path(args.data) if args.data else settings.movielens_dir
    run_train(data, Path(args.out) if args.out else settings.snapshot_dir, args.epochs)
    return 0


def cmd_retrain(args: argparse.Namespace) -> int:
    from deploy.kafka.runner import ensure_kafka
    from stream.health import serve
    from watchnext.retrain import RetrainConfig, run_retrainer

    settings = _settings(args)
    if args.metrics_port is not None:
        serve(args.metrics_port, settings.metrics_host, timeout_s=settings.http_timeout_s)
    every = None if args.once else float(args.every)  # seconds (cli_parser.duration)
    cfg = RetrainConfig(epochs=args.epochs, tolerance=args.tolerance)
    with ensure_kafka(settings) as bootstrap:
        return run_retrainer(settings, bootstrap, every, cfg)


def cmd_schema(args: argparse.Namespace) -> int:
    """Write the JSON Schema of every record (``--out DIR``), or print them as one object."""
    from stream.schemas import RECORDS, render, schema_of, write_schemas

    if args.out is None:
        print(render({name: schema_of(name) for name in RECORDS}), end="")
        return 0
    for path in write_schemas(args.out):
        print(path)
    return 0


def cmd_snapshots(args: argparse.Namespace) -> int:
    """List, pin, unpin, roll back to or prune the snapshot pairs (:mod:`model.snapshot_store`)."""
    from model import snapshot_store as store

    settings = _settings(args)
    root = Path(settings.snapshot_dir)
    lease_s = settings.snapshot_lease_s
    if args.what == "list":
        rows = store.stored(root, lease_s, where=settings.snapshot_lease_dir)
        if args.json:
            print(json.dumps([r.as_json() for r in rows]))
        else:
            print(store.table(rows) if rows else f"no snapshots under {root}")
        return 0
    if args.what == "prune":
        keep = args.keep or settings.snapshot_keep
        deleted = store.retain(root, keep, lease_s, where=settings.snapshot_lease_dir)
        for s in deleted:
            print(f"deleted {s.path.name}")
        print(f"{len(deleted)} deleted; pinned, served and canary snapshots were kept")
        return 0
    from model.snapshot import SnapshotError

    try:
        if args.what == "unpin":
            found = store.unpin(root, args.version)
            print(f"unpinned {args.version}" if found else f"{args.version} was not pinned")
            return 0 if found else 1
        pair = store.pair_dirs(root, args.version, getattr(args, "ranker", None))
        if args.what == "pin":
            store.pin(root, args.version, args.reason)
            print(f"pinned {pair[0].name} + {pair[1].name}: {args.reason}")
            return 0
        # rollback: verify the pair as a worker would, pin it, then announce it as a rollback
        from serving.recommend import ServingModels

        ServingModels.load(*pair)
    except (ValueError, SnapshotError) as exc:
        return fail(f"watchnext snapshots {args.what}", str(exc))
    from stream.announce import announcement, publish

    versions = {
        kind: d.name.removeprefix(f"{kind}-") for kind, d in zip(store.KINDS, pair, strict=True)
    }
    store.pin(root, args.version, f"rolled back to at {time.strftime('%Y-%m-%dT%H:%M:%S')}")
    bootstrap = _running_cluster(settings)
    publish(settings, bootstrap, announcement(versions, {"by": "watchnext snapshots"}, True))
    print(f"announced rollback to {versions}; pinned {args.version} (unpin when done)")
    return 0


COMMANDS = {
    "kafka": cmd_kafka,
    "topics": cmd_topics,
    "produce": cmd_produce,
    "synth": cmd_synth,
    "worker": cmd_worker,
    "state": cmd_state,
    "schema": cmd_schema,
    "recommend": cmd_recommend,
    "demo": cmd_demo,
    "train": cmd_train,
    "retrain": cmd_retrain,
    "snapshots": cmd_snapshots,
    "eval": cmd_eval,
    "bench": cmd_bench,
}


def build_parser() -> argparse.ArgumentParser:
    """The command line (:mod:`watchnext.cli_parser`) bound to the commands here."""
    return build_command_parser(COMMANDS, __doc__)  # type: ignore[no-any-return]


def main(argv: list[str] | None = None) -> int:
    from pydantic import ValidationError

    from deploy.kafka.runner import KafkaRunnerError
    from model.datasets.movielens import DatasetError
    from stream.producer import JsonlError
    from stream.redact import install as install_redaction
    from stream.topics import ClusterUnreachable

    args, extra = build_parser().parse_known_args(argv)
    prog = " ".join(["watchnext", args.command, *([args.what] if hasattr(args, "what") else [])])
    if extra:  # named by the (sub)command they were given to, not by the top parser
        return fail(prog, f"unrecognized arguments: {' '.join(extra)} (see {prog} --help)")
    try:
        settings = _settings(args)
    except ValidationError as exc:
        return fail(prog, settings_problem(exc, {"kafka_bootstrap": "--bootstrap"}))
    # Before any command builds a Kafka client: kafka-python logs its config, password
    # included, at DEBUG; redaction at record creation covers every logger and handler.
    install_redaction(settings)
    try:
        return int(args.func(args) or 0)
    except (
        KafkaRunnerError,
        DatasetError,
        FileNotFoundError,
        TimeoutError,
        JsonlError,
        ClusterUnreachable,
    ) as exc:
        return fail(prog, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    except KeyboardInterrupt:
        return 130
