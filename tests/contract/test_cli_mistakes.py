"""Every documented CLI mistake is one line naming the variable or flag, exit code 2.

Run as a person would (a child process, the real environment): no traceback, nothing on
stdout, one line on stderr that says what to fix. The unreachable-cluster case runs with a
one-second timeout against a closed port and against a socket that accepts and never answers,
so a wrong address cannot hang a command. The README table lists the same cases.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from watchnext.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("WATCHNEXT_")}
    return subprocess.run(
        [sys.executable, "-m", "watchnext", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**clean, **(env or {})},
        cwd=ROOT,
    )


def _one_line(out: subprocess.CompletedProcess[str], *must: str) -> str:
    assert out.returncode == 2, (out.returncode, out.stdout, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert "Traceback" not in out.stderr and not out.stdout.strip()
    for text in must:
        assert text in lines[0], (text, lines[0])
    return lines[0]


@pytest.fixture
def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.fixture
def silent_broker() -> Iterator[str]:
    """A socket that accepts connections and never says a word (a firewall, not Kafka)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    yield f"127.0.0.1:{s.getsockname()[1]}"
    s.close()


def test_an_invalid_setting_names_its_variable() -> None:
    out = _run("topics", env={"WATCHNEXT_PARTITIONS": "four"})
    line = _one_line(out, "WATCHNEXT_PARTITIONS='four'", "valid integer", "fix or unset")
    assert "pydantic" not in line


def test_a_bad_duration_names_the_flag() -> None:
    _one_line(_run("retrain", "--every", "10x"), "--every", "'10x'", "90s, 10m, 2h")


def test_a_missing_jsonl_file_is_refused_before_any_connection(closed_port: int) -> None:
    started = time.monotonic()
    out = _run(
        "produce",
        "--jsonl",
        "missing.jsonl",
        env={"WATCHNEXT_KAFKA_BOOTSTRAP": f"127.0.0.1:{closed_port}"},
    )
    _one_line(out, "--jsonl missing.jsonl: no such file")
    assert time.monotonic() - started < 30  # no connection attempt, no broker started


def test_a_jsonl_line_without_kind_names_file_and_line(tmp_path: Path, closed_port: int) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text('{"kind": "watch", "event": {"user_id": 1}}\n\n{"user_id": 2}\n')
    env = {"WATCHNEXT_KAFKA_BOOTSTRAP": f"127.0.0.1:{closed_port}"}
    _one_line(_run("produce", "--jsonl", str(path), env=env), f"{path}:3:", "--kind")
    path.write_text('{"kind": "watched", "event": {"user_id": 1}}\n')
    _one_line(_run("produce", "--jsonl", str(path), env=env), f"{path}:1:", "'watched'")


@pytest.mark.parametrize("target", ["closed", "silent"])
def test_an_unreachable_cluster_is_one_line_within_the_timeout(
    target: str, closed_port: int, silent_broker: str
) -> None:
    address = f"127.0.0.1:{closed_port}" if target == "closed" else silent_broker
    started = time.monotonic()
    # --bootstrap after the subcommand, as people type it
    out = _run("topics", "--bootstrap", address, env={"WATCHNEXT_CONNECT_TIMEOUT_S": "1"})
    _one_line(out, f"no Kafka broker answered at {address} within 1 s", "--bootstrap")
    assert time.monotonic() - started < 60


def test_a_flag_of_another_mode_is_refused_by_the_mode() -> None:
    _one_line(
        _run("eval", "system", "--figure6"),
        "watchnext eval system: unrecognized arguments: --figure6",
    )
    _one_line(_run("bench", "ingest", "--ladder", "1,2"), "watchnext bench ingest:", "--ladder")


@pytest.mark.parametrize(
    ("args", "must"),
    [
        (("recommend", "5", "--exclude", "1,x"), "--exclude"),
        (("bench", "serve", "--ladder", "100,x"), "--ladder"),
        (("eval", "candidates", "--seeds", "0"), "--seeds"),
        (("eval",), "{candidates,system,ranking,freshness}"),
        (("demo", "--limit", "-3"), "--limit"),
    ],
)
def test_a_bad_flag_value_is_one_line(args: tuple[str, ...], must: str) -> None:
    _one_line(_run(*args), must)


def test_recommend_without_a_cluster_says_how_to_get_one(tmp_path: Path) -> None:
    out = _run("recommend", "5", env={"WATCHNEXT_KAFKA_DATA_DIR": str(tmp_path / "none")})
    _one_line(out, "WATCHNEXT_KAFKA_BOOTSTRAP", "watchnext kafka up")


def test_version() -> None:
    out = _run("--version")
    assert out.returncode == 0 and out.stdout.startswith("watchnext ")


def _parsers(parser: argparse.ArgumentParser) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield parser.prog, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                yield from _parsers(child)


def test_every_flag_has_help_and_every_subcommand_takes_bootstrap() -> None:
    found = list(_parsers(build_parser()))
    assert len(found) > 20
    for prog, parser in found:
        flags = {opt for a in parser._actions for opt in a.option_strings}
        assert "--bootstrap" in flags, prog
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
                continue
            assert action.help, (prog, action.dest)
