"""The worker's HTTP endpoint: exact routes, live readiness, and survival of hostile clients."""

from __future__ import annotations

import http.client
import socket
import threading
import time
from collections.abc import Iterator
from http.server import ThreadingHTTPServer

import pytest
from prometheus_client import CollectorRegistry, Gauge

from stream import metrics
from stream.health import Readiness, serve
from watchnext.settings import Settings

TIMEOUT_S = 0.4
MAX_CONNECTIONS = 4


def _gauge() -> Gauge:
    return Gauge("test_ready", "readiness under test", registry=CollectorRegistry())


@pytest.fixture(scope="module")
def module_server() -> Iterator[ThreadingHTTPServer]:
    srv = serve(0, "127.0.0.1", timeout_s=TIMEOUT_S, max_connections=MAX_CONNECTIONS)
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()


@pytest.fixture
def readiness() -> Readiness:
    return Readiness(gauge=_gauge())


@pytest.fixture
def server(module_server: ThreadingHTTPServer, readiness: Readiness) -> ThreadingHTTPServer:
    """One server for the module (stopping one takes its 0.5 s poll); a fresh readiness each."""
    module_server.readiness = readiness  # type: ignore[attr-defined]
    return module_server


def _request(
    srv: ThreadingHTTPServer, path: str, method: str = "GET"
) -> tuple[int, bytes, http.client.HTTPResponse]:
    conn = http.client.HTTPConnection("127.0.0.1", srv.server_port, timeout=5)
    try:
        conn.request(method, path)
        resp = conn.getresponse()
        return resp.status, resp.read(), resp
    finally:
        conn.close()


def _status(srv: ThreadingHTTPServer, path: str) -> int | None:
    """The status of one request, None when the server refused it by closing."""
    try:
        return _request(srv, path)[0]
    except (ConnectionError, http.client.HTTPException):
        return None


def _wait_until(cond: object, timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():  # type: ignore[operator]
            return True
        time.sleep(0.02)
    return False


# --- routes ---------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/metrics", "/metrics?name[]=watchnext_worker_ready"])
def test_metrics_is_served(server: ThreadingHTTPServer, path: str) -> None:
    status, body, resp = _request(server, path)
    assert status == 200
    assert b"watchnext_worker_ready" in body
    assert resp.getheader("Content-Type", "").startswith("text/plain")


@pytest.mark.parametrize(
    "path", ["/metricsX", "/metrics/", "/ready/x", "//metrics", "/", "/readyz", "/../metrics"]
)
def test_only_exact_paths_are_served(server: ThreadingHTTPServer, path: str) -> None:
    assert _request(server, path)[0] == 404


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE"])
def test_only_get_and_head_are_allowed(server: ThreadingHTTPServer, method: str) -> None:
    status, _, resp = _request(server, "/metrics", method)
    assert status == 405
    assert resp.getheader("Allow") == "GET, HEAD"


def test_head_answers_headers_without_a_body(server: ThreadingHTTPServer) -> None:
    status, body, resp = _request(server, "/metrics", "HEAD")
    assert status == 200
    assert body == b""
    assert int(resp.getheader("Content-Length", "0")) > 0


def test_without_readiness_ready_is_not_found() -> None:
    srv = serve(0, timeout_s=TIMEOUT_S)
    try:
        assert _request(srv, "/ready")[0] == 404
        assert _request(srv, "/metrics")[0] == 200
    finally:
        srv.shutdown()
        srv.server_close()


# --- readiness ------------------------------------------------------------------------------


def test_ready_follows_rebalances(server: ThreadingHTTPServer, readiness: Readiness) -> None:
    status, body, _ = _request(server, "/ready")
    assert (status, body) == (503, b"partitions not assigned and recovered yet\n")
    readiness.rebalance_started()
    assert _request(server, "/ready")[:2] == (503, b"rebalancing\n")
    readiness.rebalance_completed()
    status, body, _ = _request(server, "/ready")
    assert status == 200
    assert b"no snapshot expected" in body
    readiness.rebalance_started()  # a later rebalance: no longer "ever ready"
    assert _request(server, "/ready")[:2] == (503, b"rebalancing\n")
    readiness.rebalance_completed()
    assert _request(server, "/ready")[0] == 200


def test_a_worker_that_expects_a_snapshot_is_ready_only_while_serving_one() -> None:
    gauge = _gauge()
    readiness = Readiness(snapshot_expected=True, gauge=gauge)
    readiness.rebalance_completed()
    assert readiness.status() == (False, "no snapshot loaded")
    assert gauge._value.get() == 0
    readiness.set_snapshot(True)
    assert readiness.status() == (True, "ready: partitions assigned, snapshot loaded")
    assert gauge._value.get() == 1
    readiness.rebalance_started()
    assert readiness.status() == (False, "rebalancing")
    assert gauge._value.get() == 0
    readiness.rebalance_completed()
    readiness.set_snapshot(False)
    assert readiness.status() == (False, "no snapshot loaded")
    readiness.expect_snapshot(False)
    assert readiness.status()[0]


def test_every_missing_condition_is_named() -> None:
    readiness = Readiness(snapshot_expected=True, gauge=_gauge())
    readiness.rebalance_started()
    assert readiness.status() == (False, "rebalancing; no snapshot loaded")


def test_the_default_gauge_is_the_dashboards_one() -> None:
    readiness = Readiness()
    readiness.rebalance_completed()
    assert metrics.READY._value.get() == 1
    readiness.rebalance_started()
    assert metrics.READY._value.get() == 0


# --- hostile clients ------------------------------------------------------------------------


def _closed_by_server(sock: socket.socket, within_s: float) -> bool:
    sock.settimeout(within_s)
    try:
        while sock.recv(4096):
            pass
        return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_a_silent_client_is_disconnected_after_the_timeout(server: ThreadingHTTPServer) -> None:
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", server.server_port)) as sock:
        assert _closed_by_server(sock, within_s=TIMEOUT_S + 2.0)
    assert time.monotonic() - started >= TIMEOUT_S * 0.9


def test_a_dribbling_client_cannot_extend_its_deadline(server: ThreadingHTTPServer) -> None:
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", server.server_port)) as sock:
        sock.settimeout(0.05)
        closed = False
        for byte in b"GET /metrics HTTP/1.0\r\nX-Slow: " + b"a" * 200:
            try:
                sock.send(bytes([byte]))
                if sock.recv(4096) == b"":
                    closed = True
                    break
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            if time.monotonic() - started > TIMEOUT_S + 2.0:
                break
        assert closed
    assert time.monotonic() - started < TIMEOUT_S + 2.0


def test_a_flood_of_idle_connections_is_bounded(server: ThreadingHTTPServer) -> None:
    baseline = threading.active_count()
    socks = [socket.create_connection(("127.0.0.1", server.server_port)) for _ in range(40)]
    try:
        peak = baseline
        for _ in range(10):
            peak = max(peak, threading.active_count())
            time.sleep(0.01)
        assert peak <= baseline + MAX_CONNECTIONS
        # While the slots are held, a scrape is refused at once rather than queued.
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", server.server_port)) as probe:
            probe.settimeout(2.0)
            try:
                head = probe.recv(64)
            except ConnectionResetError:
                head = b""
        assert head.startswith(b"HTTP/1.0 503") or head == b""
        assert time.monotonic() - started < TIMEOUT_S
    finally:
        for s in socks:
            s.close()
    # Once the idle ones time out, scrapes are answered again.
    assert _wait_until(lambda: threading.active_count() <= baseline)
    assert _request(server, "/metrics")[0] == 200


def test_idle_connections_that_stay_open_time_out_and_free_their_slots(
    server: ThreadingHTTPServer,
) -> None:
    socks = [socket.create_connection(("127.0.0.1", server.server_port)) for _ in range(20)]
    try:
        started = time.monotonic()
        assert _wait_until(lambda: _status(server, "/metrics") == 200)
        assert time.monotonic() - started < TIMEOUT_S + 2.0
    finally:
        for s in socks:
            s.close()


# --- bind address ---------------------------------------------------------------------------


def test_the_default_bind_address_is_loopback() -> None:
    settings = Settings()
    assert settings.metrics_host == "127.0.0.1"
    srv = serve(0, settings.metrics_host, timeout_s=settings.http_timeout_s)
    try:
        assert srv.server_address[0] == "127.0.0.1"
    finally:
        srv.shutdown()
        srv.server_close()
    srv = serve(0)
    try:
        assert srv.server_address[0] == "127.0.0.1"
    finally:
        srv.shutdown()
        srv.server_close()
