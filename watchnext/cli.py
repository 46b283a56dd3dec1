"""The ``watchnext`` command: one entry point, a subcommand per job a user runs.

Errors a user can fix are printed as one line that says what to do (exit code 2), not as a
traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from watchnext.settings import Settings


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
    from deploy.kafka.runner import ensure_kafka
    from stream.topics import create_topics, topic_specs

    settings = _settings(args)
    with ensure_kafka(settings) as bootstrap:
        created = create_topics(settings, bootstrap)
    for spec in topic_specs(settings):
        mark = "created" if spec.name in created else "exists"
        print(f"{spec.name:32s} partitions={spec.partitions} {mark}")
    return 0


def cmd_produce(args: argparse.Namespace) -> int:
    from deploy.kafka.runner import ensure_kafka
    from stream.events import EventKind
    from stream.producer import encode_events, read_jsonl, send_all
    from stream.replay import movielens_events
    from stream.topics import create_topics

    settings = _settings(args)
    with ensure_kafka(settings) as bootstrap:
        create_topics(settings, bootstrap)
        if args.jsonl:
            messages = read_jsonl(Path(args.jsonl), EventKind(args.kind) if args.kind else None)
        else:
            path = Path(args.movielens) if args.movielens else settings.movielens_dir
            messages = encode_events(movielens_events(path, limit=args.limit))
        n = send_all(settings, bootstrap, messages, rate=args.rate)
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
    from deploy.kafka.runner import ensure_kafka
    from stream.producer import encode_events, send_all
    from stream.topics import create_topics

    settings = _settings(args)
    with ensure_kafka(settings) as bootstrap:
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
    from deploy.kafka.runner import ensure_kafka
    from stream.readback import read_changelog
    from stream.state import summary

    settings = _settings(args)
    with ensure_kafka(settings) as bootstrap:
        states = read_changelog(settings, bootstrap)
    for uid in args.user_ids:
        st = states.get(uid)
        print(json.dumps(summary(st) if st else {"user_id": uid, "state": None}))
    return 0


def _running_cluster(settings: Settings) -> str:
    """The configured cluster, else the local broker of ``watchnext kafka up``; never one
    started for the command (no worker would be there to answer)."""
    from deploy.kafka.runner import KafkaRunnerError, status

    if settings.kafka_bootstrap:
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


def _item_ids(text: str) -> list[int]:
    """``--exclude`` value: comma-separated item ids."""
    try:
        ids = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a list of item ids: give comma-separated integers, e.g. 12,408"
        ) from None
    if any(i < 0 for i in ids):
        raise argparse.ArgumentTypeError(f"{text!r}: item ids are >= 0")
    return ids


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
    if args.protocol != "ml100k-lastsecond":
        raise SystemExit(f"unknown protocol {args.protocol}")
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
    from watchnext.retrain import RetrainConfig, parse_duration, run_retrainer

    settings = _settings(args)
    if args.metrics_port is not None:
        serve(args.metrics_port, settings.metrics_host, timeout_s=settings.http_timeout_s)
    every = None if args.once else parse_duration(args.every)
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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="watchnext", description=__doc__)
    p.add_argument(
        "--bootstrap",
        help="Kafka bootstrap servers (default: $WATCHNEXT_KAFKA_BOOTSTRAP "
        "or a local broker started for the command)",
    )
    sub = p.add_subparsers(dest="command", required=True)

    k = sub.add_parser("kafka", help="local Apache Kafka (KRaft) for development")
    k.add_argument("action", choices=["up", "down", "status"])
    k.add_argument("--port", type=int, default=None, help="client port (default: a free one)")
    k.add_argument("--data-dir", default=None)
    k.add_argument("--fresh", action="store_true", help="wipe the data dir first")
    k.set_defaults(func=cmd_kafka)

    t = sub.add_parser("topics", help="create the topics (idempotent)")
    t.set_defaults(func=cmd_topics)

    pr = sub.add_parser("produce", help="post events: a JSONL file or the MovieLens replay")
    src = pr.add_mutually_exclusive_group()
    src.add_argument("--jsonl", help="file of events, one JSON object per line")
    src.add_argument(
        "--movielens",
        nargs="?",
        const="",
        default=None,
        help="replay MovieLens from DIR (default: $WATCHNEXT_MOVIELENS_DIR)",
    )
    pr.add_argument("--kind", choices=["watch", "search", "impression", "profile", "upload"])
    pr.add_argument("--rate", type=float, default=None, help="events per second (default: max)")
    pr.add_argument("--limit", type=int, default=None, help="first N ratings only")
    pr.set_defaults(func=cmd_produce)

    sy = sub.add_parser("synth", help="seeded YouTube-like synthetic events (JSONL or Kafka)")
    sy.add_argument("--users", type=int, default=10_000)
    sy.add_argument("--items", type=int, default=20_000)
    sy.add_argument("--days", type=float, default=30.0)
    sy.add_argument("--seed", type=int, default=0)
    sy.add_argument("--out", help="JSONL file ({kind, event} lines); default: post to Kafka")
    sy.add_argument("--truth", help="write per-item ground truth (.npz)")
    sy.add_argument("--rate", type=float, default=None, help="Kafka: events per second")
    sy.set_defaults(func=cmd_synth)

    w = sub.add_parser("worker", help="run a stream worker (faust + RocksDB)")
    w.add_argument("--loglevel", default="info")
    w.set_defaults(func=cmd_worker)

    s = sub.add_parser("state", help="print users' state from the table's changelog")
    s.add_argument("user_ids", type=int, nargs="+")
    s.set_defaults(func=cmd_state)

    sc = sub.add_parser(
        "schema", help="JSON Schemas of every record on the topics (from the typed records)"
    )
    sc.add_argument(
        "--out",
        type=Path,
        default=None,
        help="write <record>.schema.json files into this directory (default: print them all)",
    )
    sc.set_defaults(func=cmd_schema)
    rc = sub.add_parser(
        "recommend",
        help="ask the running workers for a user's recommendations and print the answer",
    )
    rc.add_argument("user_id", type=int, help="the user to recommend for")
    rc.add_argument("--k", type=int, default=10, help="how many items (1..500, default 10)")
    rc.add_argument(
        "--exclude", type=_item_ids, default=None, help="item ids never returned: 12,408,77"
    )
    rc.add_argument(
        "--deadline-ms", type=int, default=None, help="answer expires after this many ms"
    )
    rc.add_argument(
        "--timeout", type=float, default=30.0, help="seconds to wait for the answer (default 30)"
    )
    rc.add_argument("--json", action="store_true", help="print the response JSON")
    rc.set_defaults(func=cmd_recommend)

    d = sub.add_parser("demo", help="end-to-end demo on local Kafka with MovieLens-100K")
    d.add_argument("--users", type=int, nargs="*", default=[1, 42, 405])
    d.add_argument("--limit", type=int, default=None, help="replay only the first N ratings")
    d.set_defaults(func=cmd_demo)

    tr = sub.add_parser(
        "train",
        help="train both stages on MovieLens and write snapshots "
        "(data-parallel under torchrun: torchrun --nproc-per-node N -m watchnext train)",
    )
    tr.add_argument("--data", default=None, help="MovieLens dir (default: settings)")
    tr.add_argument("--out", default=None, help="snapshot root (default: WATCHNEXT_SNAPSHOT_DIR)")
    tr.add_argument("--epochs", type=int, default=12, help="candidate generator epochs")
    tr.set_defaults(func=cmd_train)

    rt = sub.add_parser(
        "retrain", help="learn from the newest events; promote if not worse; announce"
    )
    when = rt.add_mutually_exclusive_group()
    when.add_argument("--once", action="store_true", help="one cycle, then exit")
    when.add_argument("--every", default="10m", help="cycle period: 90s, 10m, 2h (default 10m)")
    rt.add_argument("--epochs", type=int, default=12, help="candidate generator epochs")
    rt.add_argument(
        "--tolerance", type=float, default=0.01, help="recall@50 the new model may lose"
    )
    rt.add_argument("--metrics-port", type=int, default=None, help="serve /metrics on this port")
    rt.set_defaults(func=cmd_retrain)

    e = sub.add_parser("eval", help="offline evaluation (evaluation.md protocols)")
    e.add_argument("what", choices=["candidates", "system", "ranking", "freshness"])
    e.add_argument(
        "--data", default=None, help="MovieLens dir (u.data, ratings.dat or ratings.csv)"
    )
    e.add_argument("--protocol", default="ml100k-lastsecond")
    e.add_argument("--seeds", type=int, default=3)
    e.add_argument(
        "--models",
        default=None,
        help="comma-separated shipped configs (default: all of model/shipped.py)",
    )
    e.add_argument(
        "--depth",
        type=int,
        default=None,
        choices=[0, 1, 2, 3, 4],
        help="override (candidates)",
    )
    e.add_argument(
        "--loss",
        default=None,
        choices=["full", "sampled"],
        help="override (candidates; system: both neural generators)",
    )
    e.add_argument("--epochs", type=int, default=None, help="override the upper bound")
    e.add_argument(
        "--select", action="store_true", help="validation-only grid that chose the shipped configs"
    )
    e.add_argument(
        "--synthetic",
        action="store_true",
        help="--figure6 on the synthetic world (has searches and devices) instead of MovieLens",
    )
    e.add_argument("--json", action="store_true", help="last stdout line is one JSON object")
    e.add_argument(
        "--validation", action="store_true", help="system: on the validation split (choices)"
    )
    e.add_argument("--negatives", type=int, default=10, help="system: unwatched items per page")
    e.add_argument("--retrieve", type=int, default=150, help="system: ANN candidates per request")
    e.add_argument(
        "--retrieve-i2i", type=int, default=50, help="system: item-to-item candidates per request"
    )
    e.add_argument(
        "--generator",
        default=None,
        help="system: the shipped candidate config served as the neural source "
        "(default: the project best)",
    )
    e.add_argument(
        "--page-users",
        type=int,
        default=5000,
        help="system: users whose blend pages train the ranker (a seeded sample beyond; 0: all)",
    )
    e.add_argument(
        "--ranker-min-count",
        type=int,
        default=None,
        help="system: item ids seen fewer times share the ranker's zero embedding",
    )
    e.add_argument(
        "--figure6",
        action="store_true",
        help="depth 0-4 x feature sets table and PNG (paper Figure 6 analogue)",
    )
    e.add_argument("--out", default="docs/results", help="where PNGs and JSON results go")
    e.add_argument(
        "--memory-mb",
        type=float,
        default=4096,
        help="candidates: memory budget; EASE runs only where its dense [N, N] inverse fits",
    )
    e.add_argument("--users", type=int, default=4000, help="ranking: synthetic users")
    e.add_argument(
        "--width", type=float, default=0.25, help="ranking: Table 1 widths x this factor"
    )
    e.set_defaults(func=cmd_eval)

    b = sub.add_parser("bench", help="benchmarks against the real local broker")
    b.add_argument("what", choices=["ingest", "train", "serve", "swap", "chaos"])
    b.add_argument(
        "--items", type=int, default=1_000_000, help="train, serve: synthetic catalogue size"
    )
    b.add_argument(
        "--rate", type=float, default=None, help="offered requests/s (serve: 200, swap: 50)"
    )
    b.add_argument("--seconds", type=float, default=20.0, help="serve: request load duration")
    b.add_argument(
        "--ladder",
        type=lambda v: tuple(float(x) for x in v.split(",")),
        default="100,200,400,800",
        help="serve: offered request rates of the ladder, comma-separated (--seconds each)",
    )
    b.add_argument("--out", type=Path, default=None, help="serve: results dir (docs/results)")
    b.add_argument("--negatives", type=int, default=256, help="train: sampled negatives")
    b.add_argument("--events", type=int, default=200_000)
    b.add_argument("--users", type=int, default=20_000)
    b.add_argument("--repeat", type=int, default=3, help="runs; medians are reported")
    b.add_argument("--minutes", type=float, default=5.0, help="chaos: load duration")
    b.add_argument("--workers", type=int, default=2, help="chaos: workers in the group")
    b.add_argument("--seed", type=int, default=0, help="chaos: fault schedule and load seed")
    b.add_argument(
        "--faults",
        default="sigkill,sigterm,broker",
        help="chaos: the fault kinds injected, in seeded rounds (comma-separated)",
    )
    b.add_argument(
        "--no-client-resend",
        action="store_true",
        help="chaos: the request client sends every request once (never re-sends)",
    )
    b.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="ingest, serve: run the worker under py-spy --native, write its flame graph (SVG)",
    )
    b.add_argument("--json", action="store_true", help="last stdout line is one JSON object")
    b.set_defaults(func=cmd_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    from deploy.kafka.runner import KafkaRunnerError
    from model.datasets.movielens import DatasetError
    from stream.redact import install as install_redaction

    args = build_parser().parse_args(argv)
    # Before any command builds a Kafka client: kafka-python logs its config, password
    # included, at DEBUG; redaction at record creation covers every logger and handler.
    install_redaction(_settings(args))
    try:
        return int(args.func(args) or 0)
    except (KafkaRunnerError, DatasetError, FileNotFoundError, TimeoutError) as exc:
        print(f"watchnext {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
