"""``python -m feature_store apply|materialize`` (Makefile: ``feature-apply``, ``materialize``)."""

from __future__ import annotations

import time

import typer
from rich.console import Console

from common.settings import FeatureStoreSettings
from feature_store import store as fs
from feature_store.backends import OnlineStoreConfigError, online_store_type

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
console = Console()


def _settings() -> FeatureStoreSettings:
    """The settings, with the online store type checked first: a bad FEAST_ONLINE_TYPE is one line."""
    settings = FeatureStoreSettings()
    try:
        online_store_type(settings)
    except OnlineStoreConfigError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from exc
    return settings


def _where(settings: FeatureStoreSettings) -> str:
    if online_store_type(settings) == "redis":
        return f"Redis {settings.redis_url}"
    return f"SQLite {settings.data_dir}/online.db"


@app.command()
def apply() -> None:
    """Register the feature definitions in the registry (data/feast/registry.db)."""
    settings = _settings()
    t = time.perf_counter()
    try:
        fs.apply(settings)
    except FileNotFoundError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from exc
    console.print(f"applied project {settings.project!r} in {time.perf_counter() - t:.1f}s")


def _redis_memory(settings: FeatureStoreSettings) -> int | None:
    """``used_memory`` of the Redis online store (None for SQLite)."""
    if online_store_type(settings) != "redis":
        return None
    from common.redis_client import is_cluster, sync_client

    with sync_client(settings.redis_url) as client:
        if is_cluster(client):  # one INFO per primary
            return sum(int(m["used_memory"]) for m in client.info("memory", target_nodes="primaries").values())
        return int(client.info("memory")["used_memory"])


@app.command()
def materialize(
    batch_rows: int = typer.Option(
        0, min=0, help="0: Feast's materialize. N > 0: the latest rows written through Feast's write path in "
                       "batches of N, with a progress bar (large catalogs: bounded memory, visible progress)."),
) -> None:
    """Materialise the offline parquet into the online store (FEAST_ONLINE_TYPE; unset: Redis when
    REDIS_URL is set, else SQLite), then publish the item snapshot the readers load."""
    settings = _settings()
    t = time.perf_counter()
    before = _redis_memory(settings)
    if not batch_rows:
        fs.materialize(settings)
        console.print(f"materialised into {_where(settings)} in {time.perf_counter() - t:.1f}s")
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description:<16}"), BarColumn(), MofNCompleteColumn(), TextColumn("rows"),
               TimeElapsedColumn())
    with Progress(*columns, console=console) as bar:
        tasks: dict[str, int] = {}

        def progress(view: str, done: int, total: int) -> None:
            if view not in tasks:
                tasks[view] = bar.add_task(view, total=total)
            bar.update(tasks[view], completed=done)

        report = fs.materialize_batched(settings, batch_rows=batch_rows, progress=progress)
    for v in report.views:
        console.print(f"  {v.view:<16} {v.rows:>9,} rows in {v.seconds:6.1f}s ({v.rows / max(v.seconds, 1e-9):,.0f} rows/s)")
    console.print(f"  item snapshot {report.snapshot_version} published in {report.snapshot_seconds:.1f}s")
    after = _redis_memory(settings)
    memory = f"; Redis used_memory {before / 2**20:,.0f} -> {after / 2**20:,.0f} MiB" if after is not None else ""
    console.print(f"materialised {report.rows:,} rows into {_where(settings)} in {report.seconds:.1f}s{memory}")


if __name__ == "__main__":
    app()
