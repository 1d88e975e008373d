"""``python -m services.precompute``: every known user's top-N into Redis, for the gateway's
``precomputed`` and ``hybrid`` serving modes (see :mod:`services.precompute.job`).

Reads ``REDIS_URL`` (required), ``ARTIFACTS_DIR``, ``PRECOMPUTE_*`` and the services' own
``FEAST_*`` / ``RETRIEVAL_*`` / ``RANKING_*`` settings. Ends with users/s, bytes per list and the
Redis memory delta. Exit code 2 with one line on a configuration problem.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Annotated

import typer

EXIT_OK, EXIT_CONFIG = 0, 2

app = typer.Typer(add_completion=False, help="Write each known user's precomputed top-N list to Redis.")
log = logging.getLogger("services.precompute")


@app.command()
def main(
    limit: Annotated[int, typer.Option(min=0, help="Only the first N known users (0 = all).")] = 0,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # before FAISS loads: one query per call
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from pydantic import ValidationError
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from common.settings import ArtifactSettings, FeatureStoreSettings
    from services.precompute.job import PrecomputeError, load_stages, run
    from services.precompute.settings import PrecomputeSettings

    console = Console(stderr=True)

    def refuse(reason: str) -> None:
        console.print(f"precompute: refusing to run: {reason}", highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_CONFIG)

    try:
        settings = PrecomputeSettings()
        artifacts = ArtifactSettings()
        redis_url = FeatureStoreSettings().redis_url
    except ValidationError as exc:
        refuse("; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()))
    if not redis_url:
        refuse("REDIS_URL is not set: the precomputed lists are written to Redis (the gateway reads them there)")
    import redis

    from common.redis_client import sync_client
    client = sync_client(redis_url, socket_timeout=30.0, connect_timeout=5.0)
    try:
        client.ping()
    except redis.RedisError as exc:
        refuse(f"REDIS_URL {redis_url}: {exc}")
    try:
        stages = load_stages(artifacts.artifacts_dir, settings.top_n)
    except PrecomputeError as exc:
        refuse(str(exc))
    users = [str(int(u)) for u in stages.user_ids.tolist()]
    if limit:
        users = users[:limit]
    columns = (TextColumn("[bold]precompute[/bold] {task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[rate]}"), TimeRemainingColumn())
    with Progress(*columns, console=console, disable=not progress) as bar:
        task = bar.add_task(f"bundle {stages.version}", total=len(users), rate="")

        def advance(n: int) -> None:
            done = bar.tasks[0].completed + n
            elapsed = bar.tasks[0].elapsed or 0.0
            bar.update(task, advance=n, rate=f"{done / elapsed:,.0f} users/s" if elapsed else "")

        report = run(stages, client, users, top_n=settings.top_n, ttl_s=settings.ttl_s, batch=settings.batch,
                     advance=advance)
    client.close()
    out = Console()
    out.print(f"precompute: bundle {report.version}: {report.users:,} users in {report.seconds:.2f} s "
              f"({report.users_per_s:,.0f} users/s), {report.bytes_per_list:,.0f} bytes per list "
              f"({report.bytes:,} bytes), {report.short:,} lists shorter than {settings.top_n}; "
              f"Redis used_memory {report.memory_before:,} -> {report.memory_after:,} bytes "
              f"(delta {report.memory_delta:+,})", highlight=False, soft_wrap=True)


if __name__ == "__main__":
    sys.exit(app())
