"""``python -m services.gateway``: settings from the environment, uvicorn (uvloop + httptools, no
access log) on the app factory ``services.gateway.app:from_env``, with ``GATEWAY_WORKERS`` worker
processes. SIGTERM is handled by uvicorn: stop accepting, finish in-flight requests, run the
lifespan shutdown (drain cache writes, close channels, flush spans).

``GATEWAY_MODE=inprocess``: before any worker starts, the in-process stages' settings, pipeline
config and bundle are checked here (:func:`services.inprocess.preflight`), so that a bad one is
one "refusing to serve" line and exit code 2, not a traceback per worker.

Several workers: each has its own Prometheus metrics, so ``PROMETHEUS_MULTIPROC_DIR`` is set to
a fresh directory before they start and ``/metrics`` aggregates their files (any worker answers
a scrape with every worker's counts).
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile

import uvicorn
from pydantic import ValidationError

from services.gateway.settings import OWN_METRICS_DIR, GatewaySettings

log = logging.getLogger("services.gateway")

EXIT_REFUSED = 2  # bad settings, pipeline config or bundle: nothing was served


class _Refused(Exception):
    """A one-line reason not to start."""


def _settings_problem(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'settings'}: {e['msg']}" for e in exc.errors())


def _check_ladder(settings: GatewaySettings) -> None:
    """The fallback ladder (GATEWAY_PIPELINE_CONFIG): an invalid config stops the gateway here."""
    from services.components.config import PipelineConfigError, load_config  # after the env clean-up

    try:
        load_config(settings.pipeline_config)
    except PipelineConfigError as exc:
        raise _Refused(str(exc)) from None


def _preflight(settings: GatewaySettings) -> None:
    from common.bundle import BundleError
    from common.grpc_server import LoadError
    from services import inprocess

    try:
        version = inprocess.preflight(inprocess.StageSettings.from_env(), settings.artifacts_dir)
    except ValidationError as exc:
        raise _Refused(_settings_problem(exc)) from None
    except (BundleError, LoadError) as exc:
        raise _Refused(str(exc)) from None
    log.info("gateway: in-process stages can load bundle %s; starting %d worker(s)", version, settings.worker_count)


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Before prometheus_client is imported (it picks its value store then): an inherited
    # multiprocess directory is not ours. Importing feast sets one as a side effect
    # (feast.metrics), so every gateway a test or benchmark process starts would share it and mix
    # their values. One worker: plain in-process metrics; several: a fresh directory of our own.
    for name in ("PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir", OWN_METRICS_DIR):
        os.environ.pop(name, None)
    try:
        settings = GatewaySettings()
        _check_ladder(settings)
        if settings.inprocess:
            # before FAISS (OpenMP) loads, here and in every worker: one query per call, one thread
            os.environ.setdefault("OMP_NUM_THREADS", "1")
            _preflight(settings)
    except ValidationError as exc:
        log.error("gateway: refusing to serve: %s", _settings_problem(exc))
        return EXIT_REFUSED
    except _Refused as exc:
        log.error("gateway: refusing to serve: %s", exc)
        return EXIT_REFUSED
    workers = settings.worker_count
    metrics_dir = None
    if workers > 1:
        # fresh: files left by an earlier run would be added to this one's counters
        metrics_dir = tempfile.mkdtemp(prefix="gateway-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = os.environ[OWN_METRICS_DIR] = metrics_dir
    try:
        uvicorn.run(
            "services.gateway.app:from_env", factory=True, host=settings.host, port=settings.port,
            loop="uvloop", http="httptools", workers=workers, access_log=False, log_level="info",
            timeout_graceful_shutdown=5,
        )
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
