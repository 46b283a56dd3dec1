"""Run a worker as a child process (demo, benchmarks, integration and chaos tests)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from watchnext.settings import Settings, settings_env

# py-spy stops the process for every sample and unwinds native stacks of all its threads:
# at 100 Hz that made the worker 5x slower (923 vs ~4,600 events/s), at 25 Hz ~1.2x.
PROFILE_HZ = 25


class WorkerProcess:
    """A ``watchnext worker`` child with its own data directory and log file."""

    def __init__(
        self,
        settings: Settings,
        bootstrap: str,
        log_path: Path | None = None,
        profile: Path | None = None,
    ) -> None:
        """``profile``: run the worker under ``py-spy record --native`` and write its flame
        graph (SVG) there when it stops. py-spy is a development tool, not a dependency; it
        launches the worker because attaching to a running process needs ptrace rights that
        containers often withhold."""
        self.settings = settings
        self.bootstrap = bootstrap
        self.log_path = log_path or Path(settings.data_dir).with_suffix(".log")
        self.profile = profile
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        env = {
            **os.environ,
            **settings_env(self.settings),
            "WATCHNEXT_KAFKA_BOOTSTRAP": self.bootstrap,
        }
        Path(self.settings.data_dir).mkdir(parents=True, exist_ok=True)
        (Path(self.settings.data_dir) / "metrics.port").unlink(missing_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "watchnext", "worker", "--loglevel", "warning"]
        if self.profile is not None:
            spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
            if not Path(spy).exists():
                raise RuntimeError("--profile needs py-spy (pip install py-spy) in this venv")
            self.profile.parent.mkdir(parents=True, exist_ok=True)
            cmd = [spy, "record", "--native", "-r", str(PROFILE_HZ), "-o"]
            cmd += [str(self.profile), "--", sys.executable, "-m", "watchnext", "worker"]
            cmd += ["--loglevel", "warning"]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                cmd,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        return self

    @property
    def metrics_url(self) -> str:
        port = (Path(self.settings.data_dir) / "metrics.port").read_text().strip()
        return f"http://127.0.0.1:{port}"

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        """Wait until ``/ready`` answers 200 (tables recovered, agents running)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(
                    f"worker exited with {self.proc.returncode}; log: {self.log_path}\n"
                    + self.log_path.read_text(errors="replace")[-3000:]
                )
            try:
                with urllib.request.urlopen(self.metrics_url + "/ready", timeout=2) as r:
                    if r.status == 200:
                        return
            except (OSError, ValueError):
                pass
            time.sleep(0.2)
        raise TimeoutError(f"worker not ready after {timeout_s:.0f}s; log: {self.log_path}")

    def wait_serving(self, swaps: int = 1, timeout_s: float = 300.0) -> None:
        """Wait until the loader thread has swapped in ``swaps`` snapshot pairs in total."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {self.proc.returncode}: {self.log_path}")
            try:
                if metric_value(self.metrics_text(), "watchnext_snapshot_swaps_total") >= swaps:
                    return
            except (OSError, ValueError):
                pass
            time.sleep(0.2)
        raise TimeoutError(f"worker serves no snapshot after {timeout_s:.0f}s: {self.log_path}")

    def metrics_text(self) -> str:
        with urllib.request.urlopen(self.metrics_url + "/metrics", timeout=5) as r:
            return r.read().decode()

    @property
    def pid(self) -> int | None:
        """The worker's pid (under a profiler, the profiler's child)."""
        if self.proc is None:
            return None
        if self.profile is None:
            return self.proc.pid
        try:
            kids = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
        except OSError:
            return None
        return int(kids.split()[0]) if kids.split() else None

    def stop(self, timeout_s: float = 60.0) -> int:
        """SIGTERM and wait (clean shutdown); SIGKILL if it does not stop in time.

        Under a profiler the worker itself is signalled; the profiler then writes its graph.
        """
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        worker = self.pid
        if self.profile is not None and worker is not None:
            os.kill(worker, signal.SIGTERM)
        else:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def kill(self) -> None:
        """SIGKILL: the crash the chaos tests inject."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def metric_value(text: str, name: str, labels: dict[str, str] | None = None) -> float:
    """Sum of the samples of ``name`` in Prometheus text whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name) or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        metric, _, rest = head.partition("{")
        if metric != name:
            continue
        if labels and not all(f'{k}="{v}"' in rest for k, v in labels.items()):
            continue
        total += float(value)
    return total
