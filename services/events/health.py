"""The consumer's HTTP endpoints: ``/metrics`` (Prometheus), ``/healthz`` (the process is alive)
and ``/readyz`` (Redis reachable, the consumer group exists, the loop iterated recently), served
by a small threaded HTTP server beside the loop."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

log = logging.getLogger(__name__)


class HealthServer:
    """``ready()`` returns (ok, detail); it runs on the server's thread, per request."""

    def __init__(self, host: str, port: int, registry: CollectorRegistry, ready: Callable[[], tuple[bool, dict]]) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, generate_latest(registry), CONTENT_TYPE_LATEST)
                elif path == "/healthz":
                    self._json(200, {"status": "alive"})
                elif path == "/readyz":
                    try:
                        ok, detail = outer.ready()
                    except Exception as exc:  # noqa: BLE001 - a probe answers, it does not crash
                        ok, detail = False, {"error": repr(exc)}
                    self._json(200 if ok else 503, {"status": "ready" if ok else "not ready", **detail})
                else:
                    self._json(404, {"error": "not found"})

            def _json(self, code: int, body: dict) -> None:
                self._send(code, json.dumps(body).encode(), "application/json")

            def _send(self, code: int, body: bytes, ctype: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:  # probes every few seconds: not worth a log line
                pass

        self.ready = ready
        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="events-http", daemon=True)

    def start(self) -> HealthServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
