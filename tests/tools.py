"""Debian-packaged programs the tests run for real (``promtool``), installed when missing.

The README's test command must work on a fresh machine; CI machines run as root with apt, so a
missing tool is installed there (once per machine) instead of a test being skipped. Elsewhere a
missing tool fails the test with the command that installs it.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest


def ensure_tool(program: str, package: str) -> str:
    """The path of ``program``, installing Debian ``package`` first when it is missing."""
    found = shutil.which(program)
    if found:
        return found
    apt = shutil.which("apt-get")
    if apt is None or os.geteuid() != 0:
        pytest.fail(f"{program} is missing: apt-get install {package} (Debian), then rerun")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = [apt, "install", "-y", "-q", "--no-install-recommends", package]
    done = subprocess.run(install, env=env, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:  # a stale package index: refresh it once and try again
        subprocess.run([apt, "update", "-q"], env=env, capture_output=True, timeout=900)
        done = subprocess.run(install, env=env, capture_output=True, text=True, timeout=900)
    found = shutil.which(program)
    if found is None:
        pytest.fail(f"apt-get install {package} did not provide {program}: {done.stderr[-2000:]}")
    return found
