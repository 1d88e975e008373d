"""``python -m services.events``: run the consumer (default), or ``export --out PATH``."""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path
from typing import Annotated

import typer

EXIT_OK, EXIT_CONFIG = 0, 2

app = typer.Typer(add_completion=False, help="The events consumer (default command) and the stream export.")
log = logging.getLogger("services.events")


def _redis(url: str, block_ms: int):
    from common.redis_client import sync_client

    # a blocking read waits block_ms: the socket timeout must be longer
    return sync_client(url, socket_timeout=block_ms / 1000.0 + 5.0, connect_timeout=5.0, health_check_interval=30)


def run_consumer() -> int:
    from common.bundle import BundleError
    from common.grpc_server import configure_logging
    from feature_store.backends import OnlineStoreConfigError, online_store_type
    from services.events.catalog import Catalog
    from services.events.health import HealthServer
    from services.events.metrics import EventsMetrics
    from services.events.settings import load_settings

    s = load_settings()
    configure_logging(s.events.log_level)
    if not s.feast.redis_url:
        log.error("REDIS_URL is not set: the events consumer needs the Redis that holds the stream and the online store")
        return EXIT_CONFIG
    try:
        if online_store_type(s.feast) != "redis":
            log.error("FEAST_ONLINE_TYPE=%s: the events consumer writes Feast's Redis online store only", s.feast.online_type)
            return EXIT_CONFIG
    except OnlineStoreConfigError as exc:
        log.error("%s", exc)
        return EXIT_CONFIG
    try:
        catalog = Catalog(s.artifacts.artifacts_dir).load()
    except (BundleError, OSError, ValueError) as exc:
        log.error("refusing to start: %s", exc)
        return EXIT_CONFIG
    ev = s.events
    metrics = EventsMetrics()
    from common.process_metrics import add_process_metrics

    add_process_metrics(metrics.registry)  # process_cpu_seconds_total, python_gc_pause_seconds
    consumer = None

    def ready():
        return (False, {"status": "starting"}) if consumer is None else consumer.ready()

    try:
        http = HealthServer(ev.metrics_host, ev.metrics_port, metrics.registry, ready).start()
    except OSError as exc:
        log.error("cannot serve metrics on %s:%d: %s", ev.metrics_host, ev.metrics_port, exc)
        return EXIT_CONFIG
    stop_requested = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: (stop_requested.append(1), consumer and consumer.stop()))
    client = _redis(s.feast.redis_url, ev.block_ms)
    try:
        from feature_store.feast_store import feature_store
        from feature_store.online_layout import LayoutError
        from feature_store.writer import UserRowWriter
        from services.events.aggregates import Aggregates
        from services.events.apply import Applier
        from services.events.consumer import Consumer
        from services.events.stream import Stream

        try:
            writer = UserRowWriter.from_store(feature_store(s.feast), s.feast.project)  # imports feast (seconds)
        except LayoutError as exc:
            log.error("refusing to start: %s", exc)
            return EXIT_CONFIG
        applier = Applier(client, writer, Aggregates(client, ev.popularity_half_life_s, ev.covisit_max_neighbors),
                          seen_types=ev.seen_type_set, recent_types=ev.recent_type_set, weights=ev.weights,
                          covisit_window_s=ev.covisit_window_s, user_state_ttl_s=ev.user_state_ttl_s,
                          covisit_max_partners=ev.covisit_max_partners)
        name = ev.resolved_consumer_name()
        if ev.nice:
            # background work yields the CPU to the request path on a shared host: on 2 cores
            # with /recommend at 100 req/s and 2,000 events/s, see README "Real-time events"
            os.nice(ev.nice)
        consumer = Consumer(Stream(client, name), applier, catalog, metrics, ev)
        if stop_requested:
            return EXIT_OK
        log.info("events consumer %s: batches of %d, catalog %s (%d items), metrics on %s:%d",
                 name, ev.batch_size, catalog.version, len(catalog), ev.metrics_host, http.port)
        return consumer.run()
    finally:
        http.stop()
        client.close()


@app.callback(invoke_without_command=True)
def main(ctx: typer.Context) -> None:
    """Run the consumer when no command is given."""
    if ctx.invoked_subcommand is None:
        raise typer.Exit(run_consumer())


@app.command()
def run() -> None:
    """Run the consumer (the default)."""
    raise typer.Exit(run_consumer())


@app.command("export")
def export_cmd(
    out: Annotated[Path, typer.Option("--out", help="Output file: .parquet, or .jsonl for JSON lines.")],
    since: Annotated[str | None, typer.Option(help="Start: a stream id, epoch seconds or an ISO 8601 time (default: all).")] = None,
    fmt: Annotated[str | None, typer.Option("--format", help="parquet or jsonl (default: from the file name).")] = None,
) -> None:
    """Write the stream's events (read-only) to a file for the offline pipeline."""
    from services.events.export import export
    from services.events.settings import load_settings

    s = load_settings()
    if not s.feast.redis_url:
        typer.echo("REDIS_URL is not set", err=True)
        raise typer.Exit(EXIT_CONFIG)
    try:
        result = export(_redis(s.feast.redis_url, 0), out, since=since, fmt=fmt)
    except ValueError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(EXIT_CONFIG) from None
    typer.echo(f"wrote {result.events} events to {result.path} ({result.skipped} undecodable entries skipped; "
               f"last stream id {result.last_id})")


if __name__ == "__main__":
    app()
