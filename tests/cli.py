"""Run the ``watchnext`` CLI as a user would (a child process), for the contract tests."""

from __future__ import annotations

import json
import subprocess
import sys
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
