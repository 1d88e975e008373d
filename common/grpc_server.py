"""Shared plumbing of the gRPC services (retrieval, ranking).

* :class:`ServiceMetrics` - the Prometheus metrics of one service in its own
  ``CollectorRegistry`` (built at start-up, never at import), exposed on a separate port.
* :class:`ServerInterceptor` - per-method latency histogram and status codes, rejection of
  calls whose deadline has already passed, and the last line of defence: an unexpected
  exception becomes ``INTERNAL`` with the traceback logged (there should be none).
* :func:`serve` - a ``grpc.aio`` server with the standard health service (``NOT_SERVING``
  until the artifacts are loaded, ``SERVING`` after, ``NOT_SERVING`` again on shutdown),
  server reflection, loading in a worker thread while health checks are answered, warm-up,
  ``gc.freeze()``, and graceful shutdown on SIGTERM/SIGINT with a grace period.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry, Counter, Histogram, Info

from common.bundle import BundleError
from common.status_http import start_metrics_server

log = logging.getLogger(__name__)

# Sub-millisecond resolution where the budgets are (1-10 ms), coarse above.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05,
                   0.1, 0.25, 0.5, 1.0, 2.5)
STAGE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.01,
                 0.025, 0.05, 0.1, 0.25)

EXIT_OK = 0
EXIT_LOAD_FAILED = 2  # the bundle is missing, tampered or unusable: nothing was served


def connection_age_options(max_age_s: float, grace_s: float) -> list[tuple[str, int]]:
    """Server options that close every client connection after ``max_age_s`` (0: never).

    A client resolves a service name again only when a connection closes; closing them now and
    then (GOAWAY, then ``grace_s`` for the calls in flight) is how gateways started before a
    scale-up find the new replicas. The jitter gRPC adds (+-10 %) keeps replicas from all
    reconnecting at once.
    """
    if max_age_s <= 0:
        return []
    return [("grpc.max_connection_age_ms", int(max_age_s * 1000)),
            ("grpc.max_connection_age_grace_ms", int(max(grace_s, 1.0) * 1000))]


class LoadError(RuntimeError):
    """The service cannot start serving (bad bundle, missing features...)."""


class ServiceMetrics:
    """Prometheus metrics of one service; every metric carries a ``service`` label.

    The feature reader registers its own counters (``recsys_missing_features_total{feature_view}``,
    item-table refreshes) in the same ``registry``: see ``feature_store.reader.build_reader``.
    """

    def __init__(self, service: str, registry: CollectorRegistry | None = None) -> None:
        self.service = service
        self.registry = registry if registry is not None else CollectorRegistry()
        self.requests = Histogram(
            "recsys_grpc_server_handling_seconds", "gRPC call latency in the server, per method and code.",
            ["service", "method", "code"], registry=self.registry, buckets=LATENCY_BUCKETS,
        )
        self.stage_seconds = Histogram(
            "recsys_stage_seconds", "Latency of one stage of a pipeline (features, embed, search, score...).",
            ["service", "stage"], registry=self.registry, buckets=STAGE_BUCKETS,
        )
        self.candidates = Counter(
            "recsys_candidates_total", "Candidates returned, per candidate source.",
            ["service", "source"], registry=self.registry,
        )
        self.model = Info("recsys_model", "The artifact bundle being served.", ["service"],
                          registry=self.registry)
        self._stages: dict[str, Any] = {}
        self._sources: dict[str, Any] = {}

    def stage(self, name: str):
        """The histogram child of one stage (cached: ``labels()`` is not free on the hot path)."""
        child = self._stages.get(name)
        if child is None:
            child = self._stages[name] = self.stage_seconds.labels(self.service, name)
        return child

    @contextmanager
    def timed(self, name: str) -> Iterator[None]:
        child = self.stage(name)
        start = time.perf_counter()
        try:
            yield
        finally:
            child.observe(time.perf_counter() - start)

    def count_candidates(self, source: str, n: int) -> None:
        child = self._sources.get(source)
        if child is None:
            child = self._sources[source] = self.candidates.labels(self.service, source)
        child.inc(n)

    def set_model(self, version: str, **extra: str) -> None:
        self.model.labels(self.service).info({"version": version, **extra})


class ServerInterceptor(grpc.aio.ServerInterceptor):
    """Metrics, deadline check and error mapping for the unary methods of ``service_prefix``.

    The wrapped handler of each method is built once and cached: ``intercept_service`` runs on
    every call, so it must cost a dict lookup, not a closure and a handler object per request.
    """

    def __init__(self, metrics: ServiceMetrics, service_prefix: str = "/recsys.") -> None:
        self._metrics = metrics
        self._prefix = service_prefix
        self._wrapped: dict[str, Any] = {}
        self._children: dict[tuple[str, grpc.StatusCode], Any] = {}

    def _observe(self, method: str, code: grpc.StatusCode, seconds: float) -> None:
        child = self._children.get((method, code))
        if child is None:
            child = self._children[(method, code)] = self._metrics.requests.labels(
                self._metrics.service, method, code.name)
        child.observe(seconds)

    async def intercept_service(self, continuation, handler_call_details):
        method_path: str = handler_call_details.method
        cached = self._wrapped.get(method_path)
        if cached is not None:
            return cached
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None or not method_path.startswith(self._prefix):
            return handler
        wrapped = self._wrapped[method_path] = self._wrap(method_path, handler)
        return wrapped

    def _wrap(self, method_path: str, handler):
        method = method_path.rsplit("/", 1)[-1]
        inner = handler.unary_unary
        observe = self._observe

        async def wrapper(request, context: grpc.aio.ServicerContext):
            start = time.perf_counter()
            code = grpc.StatusCode.OK
            try:
                remaining = context.time_remaining()
                if remaining is not None and remaining <= 0:
                    code = grpc.StatusCode.DEADLINE_EXCEEDED
                    try:
                        await context.abort(code, "deadline exceeded before the call started")
                    except grpc.aio.AbortError:
                        raise
                    except Exception:  # noqa: BLE001 - the client gave up first: no status can be sent
                        # (grpc's ExecuteBatchError); a second abort below would raise UsageError
                        raise asyncio.CancelledError from None
                return await inner(request, context)
            except grpc.aio.AbortError:
                code = context.code() or grpc.StatusCode.UNKNOWN
                raise
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED
                raise
            except Exception:
                code = grpc.StatusCode.INTERNAL
                log.exception("unhandled error in %s", method_path)
                await context.abort(code, "internal error (logged by the server)")
            finally:
                observe(method, code, time.perf_counter() - start)

        return grpc.unary_unary_rpc_method_handler(
            wrapper,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


@dataclass
class ServerSpec:
    """What :func:`serve` needs to know about one service."""

    name: str  # component name in logs and metrics ("retrieval")
    service_full_name: str  # proto service ("recsys.v1.RetrievalService"), for health + reflection
    host: str
    port: int
    metrics_host: str
    metrics_port: int
    grace_seconds: float
    # Registers the servicer on the server (called before start).
    add_servicer: Callable[[grpc.aio.Server], None]
    # Blocking: loads and warms up the artifacts; runs in a worker thread while health says
    # NOT_SERVING. Raises (e.g. BundleError, LoadError) to refuse to start.
    load: Callable[[], None]
    metrics: ServiceMetrics
    extra_interceptors: Sequence[grpc.aio.ServerInterceptor] = field(default_factory=tuple)
    options: Sequence[tuple[str, Any]] = field(default_factory=tuple)
    # Blocking, called every ``poll_seconds`` on a worker thread once SERVING, and on SIGHUP (e.g.
    # a bundle hot swap, services/reload.py); poll_seconds <= 0: on SIGHUP only; None: never.
    poll: Callable[[], Any] | None = None
    poll_seconds: float = 0.0
    # The JSON of ``/status`` on the metrics port (health details: services/reload.py).
    status: Callable[[], dict] | None = None
    # The bundle versions loaded now: each is SERVING as health service "<service_full_name>/<version>"
    # once loaded (the gateway pins requests to a new version when both services report it).
    versions: Callable[[], set[str]] | None = None


async def serve(spec: ServerSpec) -> int:
    """Run the server until SIGTERM/SIGINT; returns the process exit code."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    serving = asyncio.Event()

    def hangup() -> None:  # SIGHUP: poll now (a hot swap on demand, also with polling off)
        if spec.poll is None or not serving.is_set():
            log.info("%s: SIGHUP ignored (%s)", spec.name, "nothing to reload" if spec.poll is None else "not SERVING yet")
            return
        asyncio.ensure_future(_poll_once(spec, versions))

    loop.add_signal_handler(signal.SIGHUP, hangup)

    try:
        httpd, _thread = start_metrics_server(spec.metrics_port, spec.metrics_host, spec.metrics.registry, spec.status)
    except OSError as exc:
        log.error("%s: cannot serve metrics on %s:%d: %s", spec.name, spec.metrics_host, spec.metrics_port, exc)
        return EXIT_LOAD_FAILED
    server = grpc.aio.server(
        interceptors=[*spec.extra_interceptors, ServerInterceptor(spec.metrics)],
        options=[("grpc.so_reuseport", 0), *spec.options],  # a port clash must fail, not share
    )
    health = health_aio.HealthServicer()
    versions = _VersionHealth(health, spec)
    for svc in ("", spec.service_full_name):
        await health.set(svc, health_pb2.HealthCheckResponse.NOT_SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    spec.add_servicer(server)
    reflection.enable_server_reflection(
        (spec.service_full_name, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
         reflection.SERVICE_NAME),
        server,
    )
    address = f"{spec.host}:{spec.port}"
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError as exc:
        log.error("%s: cannot listen on %s: %s", spec.name, address, exc)
        httpd.shutdown()
        return EXIT_LOAD_FAILED
    await server.start()
    log.info("%s: listening on %s (NOT_SERVING until artifacts are loaded), metrics on :%d",
             spec.name, f"{spec.host}:{bound}", httpd.server_port)

    exit_code = EXIT_OK
    poll_task = None
    try:
        load_task = asyncio.ensure_future(asyncio.to_thread(spec.load))
        stop_task = asyncio.ensure_future(stop.wait())
        await asyncio.wait({load_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
        if load_task.done():
            if (exc := load_task.exception()) is not None:
                expected = isinstance(exc, (BundleError, LoadError))
                log.error("%s: refusing to serve: %s", spec.name, exc, exc_info=None if expected else exc)
                exit_code = EXIT_LOAD_FAILED
                stop.set()
            else:
                # Start-up objects (models, maps, warm-up garbage) are never collected again:
                # this keeps full collections, and their p99 spikes, off the hot path.
                gc.collect()
                gc.freeze()
                for svc in ("", spec.service_full_name):
                    await health.set(svc, health_pb2.HealthCheckResponse.SERVING)
                await versions.sync()
                log.info("%s: SERVING", spec.name)
                serving.set()
                if spec.poll is not None and spec.poll_seconds > 0:
                    poll_task = asyncio.ensure_future(_poll(spec, versions))
        await stop.wait()
        stop_task.cancel()
        if poll_task is not None:
            poll_task.cancel()
    finally:
        await health.enter_graceful_shutdown()
        log.info("%s: shutting down (grace %.1fs)", spec.name, spec.grace_seconds)
        await server.stop(spec.grace_seconds)
        httpd.shutdown()
        httpd.server_close()
        if not load_task.done():
            load_task.cancel()
    log.info("%s: stopped", spec.name)
    return exit_code


class _VersionHealth:
    """Per-version health: ``<service_full_name>/<version>`` is SERVING while that version is loaded."""

    def __init__(self, health, spec: ServerSpec) -> None:
        self.health, self.spec = health, spec
        self.serving: set[str] = set()

    async def sync(self) -> None:
        if self.spec.versions is None:
            return
        now = self.spec.versions()
        for version, status in [*((v, health_pb2.HealthCheckResponse.SERVING) for v in now - self.serving),
                                *((v, health_pb2.HealthCheckResponse.NOT_SERVING) for v in self.serving - now)]:
            await self.health.set(f"{self.spec.service_full_name}/{version}", status)
        self.serving = set(now)


async def _poll(spec: ServerSpec, versions: _VersionHealth) -> None:
    while True:
        await asyncio.sleep(spec.poll_seconds)
        await _poll_once(spec, versions)


async def _poll_once(spec: ServerSpec, versions: _VersionHealth) -> None:
    try:
        await asyncio.to_thread(spec.poll)
        await versions.sync()
    except Exception:  # noqa: BLE001 - a failing poll must not stop the server
        log.exception("%s: periodic task failed", spec.name)


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
