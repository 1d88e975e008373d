"""The metrics port of a gRPC service: ``/metrics`` (Prometheus) and ``/status`` (health details).

gRPC health says SERVING or not; ``/status`` says what is behind it, as JSON: the bundle arms held
(``current``, canary, shadow, experiments), arms on their way out, bundles refused and why, the
last load (:meth:`services.reload.Reloader.status`). Served by the same threaded WSGI server
``prometheus_client.start_http_server`` uses, on the same port (no new port to open).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from wsgiref.simple_server import WSGIRequestHandler, make_server

import orjson
from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

log = logging.getLogger(__name__)


class _Quiet(WSGIRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the base class's name; scrapes are not news
        pass


def start_metrics_server(port: int, addr: str, registry: CollectorRegistry, status: Callable[[], dict] | None = None):
    """Start the server on a daemon thread; returns ``(server, thread)`` like prometheus_client."""
    metrics_app = make_wsgi_app(registry)

    def app(environ, start_response):
        if environ.get("PATH_INFO") == "/status":
            try:
                body = orjson.dumps(status() if status is not None else {}, option=orjson.OPT_INDENT_2)
                code = "200 OK"
            except Exception as exc:  # noqa: BLE001 - the page must answer, whatever the state
                log.exception("status page failed")
                body, code = orjson.dumps({"error": repr(exc)}), "500 Internal Server Error"
            start_response(code, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
            return [body]
        return metrics_app(environ, start_response)

    httpd = make_server(addr, port, app, ThreadingWSGIServer, handler_class=_Quiet)
    thread = threading.Thread(target=httpd.serve_forever, name="metrics-http", daemon=True)
    thread.start()
    return httpd, thread
