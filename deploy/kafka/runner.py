"""A single-node Apache Kafka (KRaft, broker + controller) on loopback for development and tests.

The broker is the official Apache Kafka distribution's code, resolved from Maven Central by
``deploy/kafka/pom.xml`` into a cache directory outside the repository (``Settings.kafka_home``),
then started as ``java kafka.Kafka server.properties``. A state file in the data directory
records the pid and ports so ``watchnext kafka status|down`` find the broker this runner started
and never touch any other process.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from watchnext.settings import Settings

_HERE = Path(__file__).resolve().parent
POM = _HERE / "pom.xml"
LOG4J = _HERE / "log4j2.properties"
STATE_FILE = "broker.json"


class KafkaRunnerError(RuntimeError):
    """The local broker could not be resolved, started or stopped; the message says why."""


@dataclass(frozen=True)
class BrokerInfo:
    """What a running local broker is: enough to reach it and to stop exactly it."""

    pid: int
    bootstrap: str
    port: int
    controller_port: int
    data_dir: str
    log_file: str
    version: str


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ensure_jars(settings: Settings) -> Path:
    """Resolve the broker jars with Maven once; return the directory holding them.

    A ``.complete`` marker is written only after Maven succeeded, so an interrupted download is
    retried rather than half-used.
    """
    libs = settings.kafka_home / f"kafka-{settings.kafka_version}" / "libs"
    marker = libs / ".complete"
    if marker.exists():
        return libs
    mvn = shutil.which("mvn")
    if mvn is None:
        raise KafkaRunnerError("Maven (mvn) is not on PATH: install it (apt-get install maven).")
    if shutil.which("java") is None:
        raise KafkaRunnerError(
            "java is not on PATH: install a JDK 17+ (apt-get install openjdk-17-jdk)."
        )
    tmp = libs.with_name("libs.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    cmd = [
        mvn,
        "-q",
        "-B",
        "-f",
        str(POM),
        "dependency:copy-dependencies",
        f"-Dkafka.version={settings.kafka_version}",
        f"-DoutputDirectory={tmp}",
    ]
    print(
        f"[kafka] resolving Apache Kafka {settings.kafka_version} jars with Maven ...", flush=True
    )
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise KafkaRunnerError(
            "Maven could not resolve the Kafka jars:\n" + (proc.stdout + proc.stderr)[-2000:]
        )
    shutil.rmtree(libs, ignore_errors=True)
    tmp.rename(libs)
    marker.write_text(settings.kafka_version)
    return libs


def cluster_id() -> str:
    """A random KRaft cluster id (URL-safe base64 of a UUID).

    Like Kafka's own ``Uuid.randomUuid()``, never one that starts with ``-``: the storage tool's
    argument parser would read such an id as an option (1 start in 64 failed that way).
    """
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid


def _server_properties(data_dir: Path, port: int, controller_port: int) -> str:
    # Development defaults: one replica everywhere, no auto-created topics (watchnext creates
    # its topics explicitly with their partitions and configs), no initial rebalance delay.
    return "\n".join(
        [
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.voters=1@127.0.0.1:{controller_port}",
            f"listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
            f"advertised.listeners=PLAINTEXT://127.0.0.1:{port}",
            "controller.listener.names=CONTROLLER",
            "inter.broker.listener.name=PLAINTEXT",
            "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            f"log.dirs={data_dir / 'logs'}",
            "num.partitions=1",
            "auto.create.topics.enable=false",
            "offsets.topic.replication.factor=1",
            "offsets.topic.num.partitions=8",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "share.coordinator.state.topic.replication.factor=1",
            "share.coordinator.state.topic.min.isr=1",
            "group.initial.rebalance.delay.ms=0",
            "log.retention.hours=-1",
            "socket.request.max.bytes=104857600",
            "",
        ]
    )


def _read_state(data_dir: Path) -> BrokerInfo | None:
    path = data_dir / STATE_FILE
    if not path.exists():
        return None
    try:
        return BrokerInfo(**json.loads(path.read_text()))
    except (ValueError, TypeError):
        return None


def _pid_is_our_broker(info: BrokerInfo) -> bool:
    """True only if the pid is alive *and* is a java kafka.Kafka on our data directory."""
    try:
        cmdline = Path(f"/proc/{info.pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False
    return "kafka.Kafka" in cmdline and info.data_dir in cmdline


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _wait_ready(info: BrokerInfo, proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    from kafka import KafkaAdminClient  # local import: kafka-python is slow to import

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = Path(info.log_file).read_text(errors="replace")[-3000:]
            raise KafkaRunnerError(f"broker exited with {proc.returncode}; log tail:\n{tail}")
        if _port_open(info.port):
            try:
                admin = KafkaAdminClient(bootstrap_servers=info.bootstrap, request_timeout_ms=5000)
                try:
                    admin.list_topics()
                    return
                finally:
                    admin.close()
            except Exception:
                pass
        time.sleep(0.25)
    raise KafkaRunnerError(f"broker did not become ready in {timeout_s:.0f}s; see {info.log_file}")


def start(
    settings: Settings,
    *,
    port: int | None = None,
    data_dir: Path | None = None,
    fresh: bool = False,
    timeout_s: float = 90.0,
) -> BrokerInfo:
    """Start a broker (or return the one already running on ``data_dir``).

    Args:
        settings: Supplies the version, jar cache and default data directory.
        port: Client port; ``None`` or 0 picks a free one.
        data_dir: Where logs, the state file and kafka.log live.
        fresh: Remove ``data_dir`` first (tests start from an empty cluster).
        timeout_s: How long to wait for the broker to answer metadata requests.
    """
    data_dir = (data_dir or settings.kafka_data_dir).resolve()
    running = _read_state(data_dir)
    if running is not None and _pid_is_our_broker(running):
        if not fresh:
            return running
        stop(data_dir)
    if fresh:
        shutil.rmtree(data_dir, ignore_errors=True)
    data_dir.mkdir(parents=True, exist_ok=True)
    libs = ensure_jars(settings)
    # A restart on existing data keeps the previous ports where they are free: clients keep
    # their bootstrap address, and the KRaft quorum its controller endpoint.
    previous = None if fresh else running
    port = port or (previous.port if previous and not _port_open(previous.port) else free_port())
    controller_port = (
        previous.controller_port
        if previous and not _port_open(previous.controller_port)
        else free_port()
    )
    while controller_port == port:
        controller_port = free_port()
    props = data_dir / "server.properties"
    props.write_text(_server_properties(data_dir, port, controller_port))
    java = shutil.which("java") or "java"
    classpath = f"{libs}/*"
    if not (data_dir / "logs" / "meta.properties").exists():
        fmt = subprocess.run(
            [
                java,
                "-cp",
                classpath,
                f"-Dlog4j2.configurationFile={LOG4J}",
                "kafka.tools.StorageTool",
                "format",
                f"--cluster-id={cluster_id()}",
                "-c",
                str(props),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if fmt.returncode != 0:
            raise KafkaRunnerError(f"formatting KRaft storage failed: {fmt.stdout}{fmt.stderr}")
    log_file = data_dir / "kafka.log"
    cmd = [
        java,
        "-Xms256m",
        f"-Xmx{settings.kafka_heap}",
        "-XX:+UseG1GC",
        "-XX:MaxGCPauseMillis=20",
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={LOG4J}",
        f"-Dwatchnext.data={data_dir}",
        "-cp",
        classpath,
        "kafka.Kafka",
        str(props),
    ]
    with open(log_file, "ab") as log:
        proc = subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    info = BrokerInfo(
        pid=proc.pid,
        bootstrap=f"127.0.0.1:{port}",
        port=port,
        controller_port=controller_port,
        data_dir=str(data_dir),
        log_file=str(log_file),
        version=settings.kafka_version,
    )
    (data_dir / STATE_FILE).write_text(json.dumps(asdict(info)))
    try:
        _wait_ready(info, proc, timeout_s)
    except BaseException:
        _terminate(proc.pid, 10.0)
        raise
    return info


def _terminate(pid: int, timeout_s: float) -> bool:
    """SIGTERM, wait, then SIGKILL. Returns True if the process had to be killed."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _alive(pid):
            return False
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    while _alive(pid):
        time.sleep(0.05)
    return True


def _alive(pid: int) -> bool:
    try:
        # Reap it if it is our child, so it does not linger as a zombie.
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    with contextlib.suppress(OSError):
        if stat.read_text().split()[2] == "Z":
            return False
    return True


def stop(data_dir: Path, timeout_s: float = 30.0) -> bool:
    """Stop the broker recorded in ``data_dir`` (clean shutdown first). False if none ran."""
    info = _read_state(data_dir.resolve())
    if info is None or not _pid_is_our_broker(info):
        return False
    _terminate(info.pid, timeout_s)
    return True


def status(data_dir: Path) -> BrokerInfo | None:
    """The running broker on ``data_dir``, or None."""
    info = _read_state(data_dir.resolve())
    if info is not None and _pid_is_our_broker(info):
        return info
    return None


@contextlib.contextmanager
def ensure_kafka(settings: Settings) -> Iterator[str]:
    """Yield bootstrap servers: the configured cluster, else a local broker started (and stopped)
    here. A broker that was already running on the data directory is reused and left running."""
    if settings.kafka_bootstrap:
        yield settings.kafka_bootstrap
        return
    already = status(settings.kafka_data_dir)
    if already is not None:
        yield already.bootstrap
        return
    info = start(settings)
    print(f"[kafka] local broker up at {info.bootstrap} (log: {info.log_file})", flush=True)
    try:
        yield info.bootstrap
    finally:
        stop(Path(info.data_dir))
        print("[kafka] local broker stopped", flush=True)
