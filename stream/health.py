"""HTTP endpoint of a worker: ``/metrics`` (Prometheus text format) and ``/ready``.

Runs in a daemon thread so a slow scrape never blocks the event loop. ``/ready`` answers 200
once table recovery finished (the ``watchnext_worker_ready`` gauge), else 503; Kubernetes uses it
as the readiness probe and tests use it instead of sleeping.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from stream import metrics


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path.startswith("/metrics"):
            body, status, ctype = generate_latest(REGISTRY), 200, CONTENT_TYPE_LATEST
        elif self.path.startswith("/ready"):
            ready = metrics.READY._value.get() == 1
            body, status, ctype = (
                (b"ready\n", 200, "text/plain") if ready else (b"recovering\n", 503, "text/plain")
            )
        else:
            body, status, ctype = b"not found\n", 404, "text/plain"
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        return


def serve(port: int, host: str = "0.0.0.0") -> ThreadingHTTPServer:
    """Start the endpoint (port 0 = any free port; read ``server.server_port``)."""
    server = ThreadingHTTPServer((host, port), _Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    return server
