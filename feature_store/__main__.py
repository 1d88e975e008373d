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


@app.command()
def materialize() -> None:
    """Materialise the offline parquet into the online store (FEAST_ONLINE_TYPE; unset: Redis when
    REDIS_URL is set, else SQLite)."""
    settings = _settings()
    t = time.perf_counter()
    fs.materialize(settings)
    console.print(f"materialised into {_where(settings)} in {time.perf_counter() - t:.1f}s")


if __name__ == "__main__":
    app()
