"""HTTP endpoint of a worker: ``/metrics`` (Prometheus text format) and ``/ready``.

Runs in a daemon thread so a slow scrape never blocks the event loop. The endpoint is reachable
by whoever can reach its address, so it is built to survive a slow or hostile client:

- it binds ``Settings.metrics_host`` (loopback by default; ``0.0.0.0`` only in a pod, where
  Prometheus and the kubelet must reach it);
- every connection has a deadline (``Settings.http_timeout_s``) for reading the request *and*
  writing the answer, so a client that connects and sends nothing, or dribbles one byte at a
  time, holds a handler thread for at most that long;
- at most ``max_connections`` connections are handled at once; the next ones get a 503 at once
  and are closed, so a flood of idle connections cannot create unbounded threads, and the
  scrape that comes after them is answered;
- only ``GET`` and ``HEAD`` of exactly ``/metrics`` and ``/ready`` (a query string is ignored)
  are answered; any other path is 404, any other method 405.

``/ready`` reflects the live state of the worker, held by a ``Readiness``: 200 only while the
worker has partitions assigned and recovered (a rebalance completed), is not in the middle of a
rebalance, and serves a snapshot pair, or expects none (the snapshot directory had no
``candidates-*`` directory when the worker started: an ingest-only worker, as in the ingest
tests, is ready without one). Otherwise 503 with a one-line body naming what is missing.
Kubernetes uses it as the readiness probe and tests use it instead of sleeping. The
``watchnext_worker_ready`` gauge follows the same answer, so dashboards and alerts agree with the
probe.
"""

from __future__ import annotations

import io
import logging
import socket
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Gauge, generate_latest

from stream import metrics

log = logging.getLogger("watchnext.health")

MAX_CONNECTIONS = 8
_BUSY = (
    b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
    b"Content-Length: 5\r\nRetry-After: 1\r\nConnection: close\r\n\r\nbusy\n"
)


class Readiness:
    """Whether this worker should receive traffic now; set by the worker, read by ``/ready``.

    Thread-safe: faust's rebalance callbacks run on the event loop, snapshot swaps on the
    loader thread and ``/ready`` on an HTTP thread.

    Args:
        snapshot_expected: The worker must serve a snapshot pair before it is ready (there were
            snapshots to load when it started). Without one it is ready on ingest alone.
        gauge: Kept at 1 while ready, else 0 (``watchnext_worker_ready``).
    """

    def __init__(self, snapshot_expected: bool = False, gauge: Gauge | None = None) -> None:
        self._lock = threading.Lock()
        self._assigned = False
        self._rebalancing = False
        self._snapshot = False
        self._snapshot_expected = snapshot_expected
        self._gauge = metrics.READY if gauge is None else gauge
        with self._lock:
            self._sync()

    def rebalance_started(self) -> None:
        """A rebalance began (or partitions were revoked): not ready until it completes."""
        with self._lock:
            self._rebalancing = True
            self._sync()

    def rebalance_completed(self) -> None:
        """Partitions are assigned and their tables recovered."""
        with self._lock:
            self._rebalancing = False
            self._assigned = True
            self._sync()

    def set_snapshot(self, loaded: bool) -> None:
        """Whether a snapshot pair is being served."""
        with self._lock:
            self._snapshot = loaded
            self._sync()

    def expect_snapshot(self, expected: bool) -> None:
        """Whether readiness waits for a snapshot pair (see the class docstring)."""
        with self._lock:
            self._snapshot_expected = expected
            self._sync()

    def status(self) -> tuple[bool, str]:
        """``(ready, one-line reason)``: what is missing when not ready, what holds when ready."""
        with self._lock:
            return self._status()

    def _status(self) -> tuple[bool, str]:
        missing = []
        if self._rebalancing:
            missing.append("rebalancing")
        elif not self._assigned:
            missing.append("partitions not assigned and recovered yet")
        if self._snapshot_expected and not self._snapshot:
            missing.append("no snapshot loaded")
        if missing:
            return False, "; ".join(missing)
        snapshot = "snapshot loaded" if self._snapshot else "no snapshot expected"
        return True, f"ready: partitions assigned, {snapshot}"

    def _sync(self) -> None:
        """Set the gauge under the lock, so concurrent changes cannot leave it stale."""
        self._gauge.set(1 if self._status()[0] else 0)


class _DeadlineReader(io.RawIOBase):
    """Socket reads that share one deadline, so slow dribbling cannot extend a connection."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        super().__init__()
        self._sock = sock
        self._deadline = deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("connection deadline passed")
        self._sock.settimeout(remaining)
        return self._sock.recv_into(buffer)


class _Server(ThreadingHTTPServer):
    """A threading HTTP server with a bound on concurrent connections."""

    daemon_threads = True
    # Pending connections wait in the kernel, not in threads; a deep backlog keeps a flood from
    # dropping the SYN of the next scrape (a dropped SYN is retried only after a second).
    request_queue_size = 128

    def __init__(
        self,
        address: tuple[str, int],
        timeout_s: float,
        readiness: Readiness | None,
        max_connections: int,
    ) -> None:
        super().__init__(address, _Handler)
        self.timeout_s = timeout_s
        self.readiness = readiness
        self._slots = threading.BoundedSemaphore(max_connections)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            # Answered on the accept thread: one small non-blocking send, then close.
            try:
                request.setblocking(False)
                request.send(_BUSY)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:  # the thread did not start: its slot is never released
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(self.server.timeout_s)  # writes and error answers
        self.rfile.close()  # replaced below; an open makefile would keep the socket open
        self._deadline = time.monotonic() + self.server.timeout_s
        self.rfile = io.BufferedReader(_DeadlineReader(self.connection, self._deadline))

    def parse_request(self) -> bool:
        if not super().parse_request():
            return False
        if self.command not in ("GET", "HEAD"):
            self.close_connection = True
            self._answer(HTTPStatus.METHOD_NOT_ALLOWED, b"method not allowed\n", allow=True)
            return False
        return True

    def do_GET(self) -> None:
        # The raw target: http.server folds a leading "//" into "/", which would serve "//metrics".
        path = self.requestline.split()[1].split("?", 1)[0]
        if path == "/metrics":
            self._answer(HTTPStatus.OK, generate_latest(REGISTRY), CONTENT_TYPE_LATEST)
        elif path == "/ready" and self.server.readiness is not None:
            ready, reason = self.server.readiness.status()
            status = HTTPStatus.OK if ready else HTTPStatus.SERVICE_UNAVAILABLE
            self._answer(status, reason.encode() + b"\n")
        else:
            self._answer(HTTPStatus.NOT_FOUND, b"not found\n")

    do_HEAD = do_GET

    def _answer(
        self,
        status: HTTPStatus,
        body: bytes,
        ctype: str = "text/plain; charset=utf-8",
        allow: bool = False,
    ) -> None:
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            self.close_connection = True
            return
        self.connection.settimeout(remaining)  # the answer shares the connection's deadline
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        if allow:
            self.send_header("Allow", "GET, HEAD")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        log.debug("%s %s", self.address_string(), format % args)


def serve(
    port: int,
    host: str = "127.0.0.1",
    timeout_s: float = 5.0,
    readiness: Readiness | None = None,
    max_connections: int = MAX_CONNECTIONS,
) -> ThreadingHTTPServer:
    """Start the endpoint in a daemon thread and return its server.

    Args:
        port: TCP port; 0 picks a free one (read ``server.server_port``).
        host: Address to bind (``Settings.metrics_host``).
        timeout_s: Deadline of one connection, request and answer (``Settings.http_timeout_s``).
        readiness: What ``/ready`` answers from; without one (the retrainer) ``/ready`` is 404.
        max_connections: Connections handled at once; more are answered 503 and closed.
    """
    server = _Server((host, port), timeout_s, readiness, max_connections)
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    return server
