"""Run the ``watchnext`` CLI as a user would (a child process), for the contract tests."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any


def watchnext(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """``python -m watchnext ARGS`` with its output captured; the caller checks the exit code."""
    return subprocess.run(
        [sys.executable, "-m", "watchnext", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def last_json(out: subprocess.CompletedProcess[str]) -> Any:
    """The JSON object a ``--json`` command prints as its last stdout line."""
    return json.loads(out.stdout.strip().splitlines()[-1])


def eval_candidates_json(
    data: Path, seeds: int, epochs: int, *more: str, timeout: float = 600
) -> tuple[subprocess.CompletedProcess[str], Any]:
    """``watchnext eval candidates --json`` with the sampled loss on ``data``: the finished
    process (asserted to have exited 0) and its JSON result."""
    out = watchnext(
        "eval",
        "candidates",
        "--data",
        str(data),
        "--seeds",
        str(seeds),
        "--epochs",
        str(epochs),
        "--loss",
        "sampled",
        *more,
        "--json",
        timeout=timeout,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return out, last_json(out)
