"""The ``watchnext`` command line: every subcommand, its own flags only, help on each flag.

Kept apart from :mod:`watchnext.cli` (which runs the commands) so that the grammar can be read
in one place. ``eval`` and ``bench`` are nested (``watchnext eval system --seeds 3``), each mode
with the flags it uses, so a flag of another mode is an error rather than silently ignored.
``--bootstrap`` is accepted before or after any subcommand. A usage error is one line naming
the flag and what to do, exit code 2 (:class:`OneLineParser`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NoReturn

Command = Callable[[argparse.Namespace], int]


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line on stderr (exit 2), not usage + error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def positive_int(text: str) -> int:
    """A flag value that must be an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: must be 1 or more")
    return value


def duration(text: str) -> float:
    """``--every``: 90s, 10m, 2h or plain seconds, more than 0."""
    units = {"s": 1.0, "m": 60.0, "h": 3600.0}
    raw = text.strip().lower()
    try:
        seconds = float(raw[:-1]) * units[raw[-1]] if raw and raw[-1] in units else float(raw)
    except ValueError:
        seconds = float("nan")
    if not seconds > 0 or seconds == float("inf"):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration: use a number with s, m or h, e.g. 90s, 10m, 2h"
        )
    return seconds


def item_ids(text: str) -> list[int]:
    """``--exclude``: comma-separated item ids."""
    try:
        ids = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a list of item ids: give comma-separated integers, e.g. 12,408"
        ) from None
    if any(i < 0 for i in ids):
        raise argparse.ArgumentTypeError(f"{text!r}: item ids are >= 0")
    return ids


def rates(text: str) -> tuple[float, ...]:
    """``--ladder``: comma-separated request rates."""
    try:
        values = tuple(float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a list of rates: give comma-separated numbers, e.g. 100,200,400"
        ) from None
    if not values or any(not v > 0 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: rates are numbers above 0")
    return values


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("watchnext")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


BOOTSTRAP_HELP = (
    "Kafka bootstrap servers host:port[,host:port] (default: $WATCHNEXT_KAFKA_BOOTSTRAP, else "
    "the broker of `watchnext kafka up`, else one started for the command)"
)


def build_parser(commands: Mapping[str, Command], description: str | None = None) -> Any:
    """The parser; ``commands`` maps each subcommand (``eval``/``bench``: the group) to the
    function that runs it (``args.func``)."""
    p = OneLineParser(prog="watchnext", description=description)
    p.add_argument("--version", action="version", version=f"watchnext {_version()}")
    p.add_argument("--bootstrap", default=None, help=BOOTSTRAP_HELP)
    # on every subcommand too; SUPPRESS keeps a value given before the subcommand
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--bootstrap", default=argparse.SUPPRESS, help=BOOTSTRAP_HELP)
    sub = p.add_subparsers(dest="command", required=True, parser_class=OneLineParser)

    def command(name: str, help_text: str, func: str | None = None) -> Any:
        sub.metavar = "{" + ",".join([*sub.choices, name]) + "}"
        parser = sub.add_parser(name, help=help_text, description=help_text, parents=[common])
        parser.set_defaults(func=commands[func or name])
        return parser

    k = command("kafka", "local Apache Kafka (KRaft) for development")
    k.add_argument("action", choices=["up", "down", "status"], help="start, stop or show it")
    k.add_argument("--port", type=int, default=None, help="client port (default: a free one)")
    k.add_argument("--data-dir", default=None, help="broker data dir (default: settings)")
    k.add_argument("--fresh", action="store_true", help="wipe the data dir first")

    command("topics", "create the topics (idempotent)")

    pr = command("produce", "post events: a JSONL file or the MovieLens replay")
    src = pr.add_mutually_exclusive_group()
    src.add_argument("--jsonl", help="file of events, one JSON object per line")
    src.add_argument(
        "--movielens",
        nargs="?",
        const="",
        default=None,
        help="replay MovieLens from DIR (default: $WATCHNEXT_MOVIELENS_DIR)",
    )
    pr.add_argument(
        "--kind",
        choices=["watch", "search", "impression", "profile", "upload"],
        help="JSONL: the topic of lines that are bare events",
    )
    pr.add_argument("--rate", type=float, default=None, help="events per second (default: max)")
    pr.add_argument("--limit", type=positive_int, default=None, help="first N ratings only")

    sy = command("synth", "seeded YouTube-like synthetic events (JSONL or Kafka)")
    sy.add_argument("--users", type=positive_int, default=10_000, help="users (default 10000)")
    sy.add_argument("--items", type=positive_int, default=20_000, help="items (default 20000)")
    sy.add_argument("--days", type=float, default=30.0, help="simulated days (default 30)")
    sy.add_argument("--seed", type=int, default=0, help="world seed (default 0)")
    sy.add_argument("--out", help="JSONL file ({kind, event} lines); default: post to Kafka")
    sy.add_argument("--truth", help="write per-item ground truth (.npz)")
    sy.add_argument("--rate", type=float, default=None, help="Kafka: events per second")

    w = command("worker", "run a stream worker (faust + RocksDB)")
    w.add_argument(
        "--loglevel",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="log level (default info)",
    )

    s = command("state", "print users' state from the table's changelog")
    s.add_argument("user_ids", type=int, nargs="+", help="user ids")

    sc = command("schema", "JSON Schemas of every record on the topics (from the typed records)")
    sc.add_argument(
        "--out",
        type=Path,
        default=None,
        help="write <record>.schema.json files into this directory (default: print them all)",
    )

    rc = command("recommend", "ask the running workers for a user's recommendations")
    rc.add_argument("user_id", type=int, help="the user to recommend for")
    rc.add_argument("--k", type=int, default=10, help="how many items (1..500, default 10)")
    rc.add_argument("--exclude", type=item_ids, default=None, help="ids never returned: 12,408")
    rc.add_argument(
        "--deadline-ms", type=positive_int, default=None, help="answer expires after this many ms"
    )
    rc.add_argument(
        "--timeout", type=float, default=30.0, help="seconds to wait for the answer (default 30)"
    )
    rc.add_argument("--json", action="store_true", help="print the response JSON")

    d = command("demo", "end-to-end demo on local Kafka with MovieLens-100K")
    d.add_argument(
        "--users", type=int, nargs="*", default=[1, 42, 405], help="users to show (1 42 405)"
    )
    d.add_argument("--limit", type=positive_int, default=None, help="replay the first N ratings")

    tr = command(
        "train",
        "train both stages on MovieLens and write snapshots "
        "(data-parallel under torchrun: torchrun --nproc-per-node N -m watchnext train)",
    )
    tr.add_argument("--data", default=None, help="MovieLens dir (default: settings)")
    tr.add_argument("--out", default=None, help="snapshot root (default: WATCHNEXT_SNAPSHOT_DIR)")
    tr.add_argument("--epochs", type=positive_int, default=12, help="candidate generator epochs")

    rt = command("retrain", "learn from the newest events; promote if not worse; announce")
    when = rt.add_mutually_exclusive_group()
    when.add_argument("--once", action="store_true", help="one cycle, then exit")
    when.add_argument(
        "--every", type=duration, default="10m", help="cycle period: 90s, 10m, 2h (default 10m)"
    )
    rt.add_argument("--epochs", type=positive_int, default=12, help="candidate generator epochs")
    rt.add_argument(
        "--tolerance",
        type=float,
        default=0.01,
        help="recall@50 the new model may measurably lose (95 %% interval) and be promoted",
    )
    rt.add_argument("--metrics-port", type=int, default=None, help="serve /metrics on this port")

    _snapshot_commands(
        command("snapshots", "snapshot pairs on disk: list, pin, unpin, roll back, prune"), common
    )
    _eval_commands(command("eval", "offline evaluation (evaluation.md protocols)"), common)
    _bench_commands(command("bench", "benchmarks against the real local broker"), common)
    return p


def _modes(parent: Any, dest: str, common: argparse.ArgumentParser) -> Callable[[str, str], Any]:
    modes = parent.add_subparsers(dest=dest, required=True, parser_class=OneLineParser)

    def mode(name: str, help_text: str) -> Any:
        # named in "the following arguments are required: {a,b}" instead of the dest
        modes.metavar = "{" + ",".join([*modes.choices, name]) + "}"
        return modes.add_parser(name, help=help_text, description=help_text, parents=[common])

    return mode


def _json(parser: Any) -> None:
    parser.add_argument("--json", action="store_true", help="last stdout line is one JSON object")


def _out(parser: Any) -> None:
    parser.add_argument("--out", default="docs/results", help="where PNGs and JSON results go")


def _data(parser: Any) -> None:
    parser.add_argument(
        "--data", default=None, help="MovieLens dir (u.data, ratings.dat or ratings.csv)"
    )


def _snapshot_commands(sn: Any, common: argparse.ArgumentParser) -> None:
    mode = _modes(sn, "what", common)
    _json(mode("list", "every snapshot, newest first: age, size, served by, canary, pinned"))
    pin = mode("pin", "keep a pair through retention until unpinned")
    pin.add_argument("version", help="the pair's version (watchnext snapshots list)")
    pin.add_argument("--reason", default="pinned by an operator", help="why (shown by list)")
    unpin = mode("unpin", "let retention delete a pinned pair again")
    unpin.add_argument("version", help="the pinned version")
    rb = mode("rollback", "announce an older pair to every worker, on purpose (pins it)")
    rb.add_argument("version", help="the pair's (candidate snapshot's) version")
    rb.add_argument(
        "--ranker", default=None, help="another ranker version (default: the pair's own)"
    )
    pr = mode("prune", "apply retention now (the retrainer does after each promotion)")
    pr.add_argument(
        "--keep", type=positive_int, default=None, help="per kind (default WATCHNEXT_SNAPSHOT_KEEP)"
    )


def _eval_commands(e: Any, common: argparse.ArgumentParser) -> None:
    mode = _modes(e, "what", common)

    c = mode("candidates", "the shipped candidate configs against the baselines")
    _data(c)
    c.add_argument(
        "--protocol",
        default="ml100k-lastsecond",
        choices=["ml100k-lastsecond"],
        help="evaluation protocol (evaluation.md)",
    )
    c.add_argument("--seeds", type=positive_int, default=3, help="seeds; medians reported")
    c.add_argument("--models", default=None, help="comma-separated shipped configs (default: all)")
    c.add_argument(
        "--depth", type=int, default=None, choices=[0, 1, 2, 3, 4], help="tower depth override"
    )
    c.add_argument("--loss", default=None, choices=["full", "sampled"], help="loss override")
    c.add_argument("--epochs", type=positive_int, default=None, help="override the upper bound")
    c.add_argument(
        "--select", action="store_true", help="validation-only grid that chose the shipped configs"
    )
    c.add_argument(
        "--figure6",
        action="store_true",
        help="depth 0-4 x feature sets table and PNG (paper Figure 6 analogue)",
    )
    c.add_argument(
        "--synthetic", action="store_true", help="--figure6 on the synthetic world instead"
    )
    c.add_argument(
        "--memory-mb",
        type=float,
        default=4096,
        help="memory budget; EASE runs only where its dense [N, N] inverse fits",
    )
    _out(c)
    _json(c)

    s = mode("system", "the served top-k end to end: candidates -> ranker -> top-k")
    _data(s)
    s.add_argument("--synthetic", action="store_true", help="on the synthetic world")
    s.add_argument("--seeds", type=positive_int, default=3, help="seeds; medians reported")
    s.add_argument("--epochs", type=positive_int, default=None, help="override the upper bound")
    s.add_argument(
        "--loss", default=None, choices=["full", "sampled"], help="both neural generators"
    )
    s.add_argument("--validation", action="store_true", help="on the validation split (choices)")
    s.add_argument("--negatives", type=positive_int, default=10, help="unwatched items per page")
    s.add_argument("--retrieve", type=int, default=150, help="ANN candidates per request")
    s.add_argument(
        "--retrieve-i2i", type=int, default=50, help="item-to-item candidates per request"
    )
    s.add_argument(
        "--generator",
        default=None,
        help="the shipped candidate config served as the neural source (default: project best)",
    )
    s.add_argument(
        "--page-users",
        type=int,
        default=5000,
        help="users whose blend pages train the ranker (a seeded sample beyond; 0: all)",
    )
    s.add_argument(
        "--ranker-min-count",
        type=int,
        default=None,
        help="item ids seen fewer times share the ranker's zero embedding",
    )
    s.add_argument("--memory-mb", type=float, default=4096, help="memory budget (MB)")
    _out(s)
    _json(s)

    r = mode("ranking", "paper Table 1 analogue and ablations of the ranker")
    _data(r)
    r.add_argument("--synthetic", action="store_true", help="on the synthetic world (default)")
    r.add_argument("--epochs", type=positive_int, default=None, help="override (default 12)")
    r.add_argument("--users", type=positive_int, default=4000, help="synthetic users")
    r.add_argument("--width", type=float, default=0.25, help="Table 1 widths x this factor")
    _out(r)
    _json(r)

    f = mode("freshness", "paper Figure 4 analogue: example age against upload spikes")
    f.add_argument("--epochs", type=positive_int, default=None, help="override (default 10)")
    _out(f)
    _json(f)


def _bench_commands(b: Any, common: argparse.ArgumentParser) -> None:
    mode = _modes(b, "what", common)

    def profile(parser: Any) -> None:
        parser.add_argument(
            "--profile",
            type=Path,
            default=None,
            help="run the worker under py-spy --native, write its flame graph (SVG)",
        )

    i = mode("ingest", "events/s a worker applies, with and without vector refresh")
    i.add_argument("--events", type=positive_int, default=200_000, help="events per run")
    i.add_argument("--users", type=positive_int, default=20_000, help="distinct users")
    i.add_argument("--repeat", type=positive_int, default=3, help="runs; medians are reported")
    profile(i)
    _json(i)

    t = mode("train", "candidate training examples/s")
    t.add_argument("--items", type=positive_int, default=1_000_000, help="synthetic catalogue size")
    t.add_argument("--negatives", type=positive_int, default=256, help="sampled negatives")
    _json(t)

    s = mode("serve", "request latency, saturation ladder, ingest under load, ANN recall")
    s.add_argument("--items", type=positive_int, default=1_000_000, help="synthetic catalogue size")
    s.add_argument("--rate", type=float, default=200.0, help="offered requests/s (default 200)")
    s.add_argument("--seconds", type=float, default=20.0, help="request load duration")
    s.add_argument("--users", type=positive_int, default=20_000, help="distinct users")
    s.add_argument(
        "--ladder",
        type=rates,
        default="100,200,400,800",
        help="offered request rates of the ladder, comma-separated (--seconds each)",
    )
    s.add_argument("--out", type=Path, default=None, help="results dir (docs/results)")
    profile(s)
    _json(s)

    f = mode("fresh", "time from an upload to the first answer containing it (no retrain)")
    f.add_argument("--items", type=positive_int, default=5, help="new items measured (5)")
    f.add_argument("--watchers", type=positive_int, default=5, help="first watchers per item")
    f.add_argument("--out", type=Path, default=Path("docs/results"), help="results dir")
    _json(f)

    w = mode("swap", "request latency during hot swaps against steady state")
    w.add_argument("--items", type=positive_int, default=1_000_000, help="synthetic catalogue size")
    w.add_argument("--rate", type=float, default=50.0, help="offered requests/s (default 50)")
    w.add_argument("--out", type=Path, default=Path("docs/results"), help="results dir")
    _json(w)

    c = mode("chaos", "faults under load: SIGKILL, SIGTERM, broker restarts")
    c.add_argument("--minutes", type=float, default=5.0, help="load duration")
    c.add_argument("--workers", type=positive_int, default=2, help="workers in the group")
    c.add_argument("--seed", type=int, default=0, help="fault schedule and load seed")
    c.add_argument(
        "--faults",
        default="sigkill,sigterm,broker",
        help="the fault kinds injected, in seeded rounds (comma-separated)",
    )
    c.add_argument(
        "--no-client-resend",
        action="store_true",
        help="the request client sends every request once (never re-sends)",
    )
    c.add_argument("--out", type=Path, default=None, help="results dir (docs/results)")
    _json(c)


def fail(prog: str, message: str) -> int:
    """Print a one-line error for ``prog`` and return the usage-error exit code."""
    print(f"{prog}: {message}", file=sys.stderr)
    return 2
