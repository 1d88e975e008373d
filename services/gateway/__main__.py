"""``python -m services.gateway``: settings from the environment, tracing, uvicorn (uvloop +
httptools, one worker, no access log). SIGTERM is handled by uvicorn: stop accepting, finish
in-flight requests, run the lifespan shutdown (drain cache writes, close channels)."""

from __future__ import annotations

import logging
import sys

import uvicorn

from common.telemetry import TelemetrySettings, setup_tracing
from services.components.config import PipelineConfigError, load_config
from services.gateway.app import create_app
from services.gateway.settings import GatewaySettings


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = GatewaySettings()
    try:  # the fallback ladder: an invalid pipeline config stops the gateway here, in one line
        load_config(settings.pipeline_config)
    except PipelineConfigError as exc:
        logging.getLogger("services.gateway").error("gateway: refusing to serve: %s", exc)
        sys.exit(2)
    tracing = setup_tracing(TelemetrySettings(), "gateway")
    app = create_app(settings, tracing)  # its lifespan closes channels and flushes spans
    uvicorn.run(
        app, host=settings.host, port=settings.port, loop="uvloop", http="httptools",
        workers=1, access_log=False, log_level="info", timeout_graceful_shutdown=5,
    )


if __name__ == "__main__":
    main()
