"""``python -m models data|run|scale|list|publish|rollback|canary|promote|abort|shadow|experiment-report``
(Makefile: ``data``, ``artifacts``, ``artifacts-scale``, ``bundles``, ``publish``, ``rollback``,
``canary``, ``promote``, ``abort``, ``shadow``, ``experiment-report``)."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from common.bundle import BundleError, load_bundle
from common.settings import FeatureStoreSettings
from models.config import BUNDLE_FILES, PipelineConfig

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
console = Console()


@app.command()
def data() -> None:
    """Fetch MovieLens-100K (recbole==1.2.1 wheel, data files only) into data/raw/ml-100k/."""
    from models.data import fetch

    cfg = PipelineConfig()
    sums = fetch(cfg.raw_dir, log=console.print)
    for name, sha in sums.items():
        console.print(f"{cfg.raw_dir / name}  sha256 {sha[:16]}…")


class RichReporter:
    def __init__(self, progress: Progress) -> None:
        self.progress = progress

    def stage(self, name: str) -> None:
        self.progress.console.print(f"[bold cyan]▶ {name}[/]")

    def epochs(self, name: str, total: int):
        task = self.progress.add_task(name, total=total, loss="")

        def cb(loss: float) -> None:
            self.progress.update(task, advance=1, loss=f"loss {loss:.4f}")
        return cb

    def done(self, name: str, seconds: float) -> None:
        self.progress.console.print(f"  [green]✓[/] {name} [dim]{seconds:.1f}s[/]")


def metrics_table(manifest: dict) -> Table:
    m = manifest["metrics"]
    table = Table(title=f"bundle {manifest['version']} — test set ({m['retrieval']['users']} users)")
    table.add_column("method")
    for k in ("recall@10", "recall@50", "recall@100", "ndcg@10"):
        table.add_column(k, justify="right")
    for name, label in [("popularity", "popularity"), ("retrieval", "two-tower exact"),
                        ("retrieval_ann", "two-tower HNSW"), ("ranked", "two-tower + ranker")]:
        table.add_row(label, *(f"{m[name][k]:.4f}" for k in ("recall@10", "recall@50", "recall@100", "ndcg@10")))
    if "ranked_with_item_to_item" in m:
        table.add_row("two-tower + item_to_item + ranker",
                      *(f"{m['ranked_with_item_to_item'][k]:.4f}" for k in ("recall@10", "recall@50", "recall@100", "ndcg@10")))
    table.caption = (f"ANN recall@100 vs exact: {m['ann']['recall@100_vs_exact']:.4f}; served index: "
                     f"{manifest['index']['type']}")
    return table


def merged_table(manifest: dict) -> Table | None:
    """Candidate lists before ranking: two-tower alone vs with item_to_item's quota."""
    m = manifest["metrics"]
    if "merged" not in m:
        return None
    mg, i2i = m["merged"], m["item_to_item"]
    ks = ("recall@10", "recall@50", "recall@100", "recall@200")
    table = Table(title=f"candidates before ranking ({mg['n_candidates']} per user, item_to_item quota {mg['quota']})")
    table.add_column("candidates")
    for k in ks:
        table.add_column(k, justify="right")
    table.add_row("two-tower", *(f"{mg['two_tower'][k]:.4f}" for k in ks))
    table.add_row("two-tower + item_to_item", *(f"{mg['two_tower+item_to_item'][k]:.4f}" for k in ks))
    table.add_row("item_to_item alone", *(f"{i2i[k]:.4f}" if k in i2i else "" for k in ks))
    top10 = m["ranked_with_item_to_item"].get("mean_item_to_item_in_top10", float("nan"))
    table.caption = (f"users with >= 1 seed: {i2i['users_with_seeds']:.3f}; candidates not in two-tower's "
                     f"{mg['n_candidates']} per user: {mg['mean_new_candidates']:.1f}; of those in the "
                     f"ranked top 10: {top10:.2f}")
    return table


@app.command()
def run(
    skip_if_current: bool = typer.Option(False, "--skip-if-current", help="Exit 0 at once when artifacts/current loads and verifies."),
    materialize: bool = typer.Option(True, help="Materialise the features into the online store at the end."),
    publish: bool = typer.Option(True, help="Make the new bundle current (--no-publish: a candidate beside current, "
                                            "for `canary`, `shadow` or a later `publish`)."),
    events: Annotated[Path | None, typer.Option(
        "--events", help="An events export (`python -m services.events export --out PATH`, parquet or JSON lines) to "
                         "fold into the interactions: the served feedback trains the next model.")] = None,
) -> None:
    """data -> train -> evaluate -> gate -> publish -> feast apply + materialise."""
    cfg = PipelineConfig()
    if events is not None:
        cfg = replace(cfg, events_path=events)
    if skip_if_current and events is not None:
        console.print("[yellow]--events given: building (--skip-if-current is ignored)[/]")
        skip_if_current = False
    if skip_if_current:
        from feature_store.repo.definitions import feature_views_schema

        try:
            b = load_bundle(cfg.artifacts_dir / "current")
            lacking = [name for name in BUNDLE_FILES if not b.has(name)]
            if lacking:
                console.print(f"[yellow]artifacts/current = {b.version} lacks {', '.join(lacking)} "
                              "(built by older code): building[/]")
            elif b.manifest.get("feature_views") == feature_views_schema():
                console.print(f"artifacts/current = {b.version} verifies; skipping (drop --skip-if-current to rebuild)")
                return
            else:
                console.print(f"[yellow]artifacts/current = {b.version} was built on other feature views "
                              "than feature_store/repo/definitions.py declares: building[/]")
        except BundleError as exc:
            console.print(f"[yellow]{exc}: building[/]")
    from models.pipeline import GateError
    from models.pipeline import run as run_pipeline

    fs_settings = FeatureStoreSettings()
    t = time.perf_counter()
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TextColumn("{task.fields[loss]}"), TimeElapsedColumn(), console=console) as progress:
        try:
            target, manifest = run_pipeline(cfg, fs_settings, RichReporter(progress), materialize=materialize,
                                            make_current=publish)
        except GateError as exc:
            console.print(f"[bold red]{exc}[/]")
            raise typer.Exit(2) from exc
    console.print(metrics_table(manifest))
    if (merged := merged_table(manifest)) is not None:
        console.print(merged)
    where = "published: artifacts/current" if publish else "a candidate, not current (python -m models canary|shadow|publish)"
    console.print(f"{target.name} in {target.parent} ({where}) in {time.perf_counter() - t:.0f}s")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []})
def scale(ctx: typer.Context) -> None:
    """Synthetic 1M-item catalog from the trained item tower + tuned ANN index (models/scale.py)."""
    try:
        from models import scale as scale_mod
    except ImportError as exc:
        console.print(f"[red]models/scale.py is not available: {exc}[/]")
        raise typer.Exit(1) from exc
    sub = typer.Typer(add_completion=False)
    sub.command()(scale_mod.build)
    sub(args=list(ctx.args), prog_name="python -m models scale")


# -- the bundle lifecycle (models/lifecycle.py): what is live, switches validated and logged -----
WhyOption = Annotated[str, typer.Option("--why", help="Why (recorded in the deployment log).")]
ActorOption = Annotated[str | None, typer.Option("--actor", help="Who (default: the login name; CI passes its own).")]


@app.command("list")
def list_bundles(history: Annotated[int, typer.Option(help="Show the last N deployment log entries.")] = 5) -> None:
    """Bundle versions (created, metrics) and which is current / previous; the last deployments."""
    from common.deployments import CURRENT, Deployments
    from models.lifecycle import rows

    root = PipelineConfig().artifacts_dir
    table = Table(title=f"bundles in {root}")
    for col in ("version", "created", "live", "two-tower recall@100", "ranked NDCG@10"):
        table.add_column(col, no_wrap=col in ("version", "created"))
    for r in rows(root):
        table.add_row(r.version, r.created, r.role, "" if r.recall100 is None else f"{r.recall100:.4f}",
                      "" if r.ranked_ndcg10 is None else f"{r.ranked_ndcg10:.4f}",
                      style="bold green" if r.role.startswith(CURRENT) else None)
    console.print(table)
    for a in Deployments(root).history()[-history:]:
        pct = f" {a.percent:g}%" if a.percent is not None else ""
        console.print(f"  {a.at}  {a.action:<10} {a.version}{pct}  (current was {a.replaced})  by {a.actor}: {a.why}")


SWAP_NOTE = "Retrieval, ranking and the gateway follow within their RELOAD_POLL_S (or at once on SIGHUP / POST /admin/reload)."


def _lifecycle(action) -> None:
    from models.lifecycle import LifecycleError

    try:
        done = action()
    except LifecycleError as exc:
        console.print(f"[bold red]{exc}[/]")
        raise typer.Exit(2) from exc
    v, was, pct = done.version, done.replaced, f"{done.percent:g}" if done.percent is not None else "?"
    what = {
        "publish": f"current = {v} (previous = {was})",
        "rollback": f"current = {v} (previous = {was})",
        "promote": f"canary promoted: current = {v} (previous = {was})",
        "canary": f"canary = {v} for {pct}% of users (current = {was})",
        "abort": f"canary {v} aborted: every user on current = {was}",
        "shadow": f"shadow ranker = {v} (scores beside current = {was})",
        "shadow-off": f"shadow ranker {v} stopped",
    }[done.action]
    console.print(f"[green]{done.action}: {what}[/]; logged for {done.actor}. {SWAP_NOTE}")


@app.command()
def publish(version: Annotated[str, typer.Argument(help="A version folder under artifacts/.")],
            why: WhyOption = "manual publish", actor: ActorOption = None) -> None:
    """Make VERSION current: checksums, the gate and the live Feast registry checked first."""
    from models import lifecycle

    _lifecycle(lambda: lifecycle.publish(PipelineConfig().artifacts_dir, version, FeatureStoreSettings(),
                                         why=why, actor=actor))


@app.command()
def rollback(why: WhyOption = "manual rollback", actor: ActorOption = None) -> None:
    """Back to the previous current version in one step (checked like publish)."""
    from models import lifecycle

    _lifecycle(lambda: lifecycle.rollback(PipelineConfig().artifacts_dir, FeatureStoreSettings(), why=why, actor=actor))


@app.command()
def canary(version: Annotated[str, typer.Argument(help="A version folder under artifacts/ (not the current one).")],
           percent: Annotated[float, typer.Option("--percent", min=0.01, max=100.0,
                                                  help="Share of users (0-100] served VERSION; again with another "
                                                       "percent to ramp (the same users stay in).")],
           why: WhyOption = "canary", actor: ActorOption = None) -> None:
    """Serve VERSION to a deterministic share of users (checked like publish)."""
    from models import lifecycle

    _lifecycle(lambda: lifecycle.canary(PipelineConfig().artifacts_dir, version, percent, FeatureStoreSettings(),
                                        why=why, actor=actor))


@app.command()
def promote(why: WhyOption = "canary promoted", actor: ActorOption = None) -> None:
    """The canary becomes current for everyone (checked again first)."""
    from models import lifecycle

    _lifecycle(lambda: lifecycle.promote(PipelineConfig().artifacts_dir, FeatureStoreSettings(), why=why, actor=actor))


@app.command()
def abort(why: WhyOption = "canary aborted", actor: ActorOption = None) -> None:
    """Drop the canary: every user is served current again."""
    from models import lifecycle

    _lifecycle(lambda: lifecycle.abort(PipelineConfig().artifacts_dir, why=why, actor=actor))


@app.command()
def shadow(version: Annotated[str | None, typer.Argument(help="The ranker version to score in the shadow.")] = None,
           off: Annotated[bool, typer.Option("--off", help="Stop the shadow ranker.")] = False,
           why: WhyOption = "shadow scoring", actor: ActorOption = None) -> None:
    """Score every ranked request with VERSION too, after the answer (agreement in the metrics)."""
    from models import lifecycle

    if (version is None) != off:
        console.print("[bold red]give a VERSION or --off[/]")
        raise typer.Exit(2)
    _lifecycle(lambda: lifecycle.shadow(PipelineConfig().artifacts_dir, version, FeatureStoreSettings(),
                                        why=why, actor=actor))


@app.command("experiment-report")
def experiment_report(
    name: Annotated[str, typer.Argument(help="An experiment of services/pipeline.toml ([[experiments]] name).")],
    window_s: Annotated[float, typer.Option("--window-s", help="A click counts for the user's latest exposure "
                                                               "showing the item at most this long before it.")] = 1800.0,
    since: Annotated[str | None, typer.Option(help="Exposures from (epoch seconds or ISO 8601 with a zone).")] = None,
    until: Annotated[str | None, typer.Option(help="Exposures before (epoch seconds or ISO 8601 with a zone).")] = None,
    control: Annotated[str | None, typer.Option(help="The variant the others are compared with (default: "
                                                     "'control', else the first by name).")] = None,
    events: Annotated[Path | None, typer.Option("--events", help="An events export (parquet / JSONL) instead of the stream.")] = None,
    exposures: Annotated[Path | None, typer.Option("--exposures", help="Exposure entries as JSONL instead of the stream.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON instead of the table.")] = False,
    confidence: Annotated[float, typer.Option(min=0.5, max=0.999, help="Confidence of the intervals.")] = 0.95,
) -> None:
    """Per-variant CTR (clicked exposures / exposures) with Wilson intervals, and each variant vs the
    control (difference with Newcombe's interval, z-test p), from the exposure log and the clicks."""
    from models.experiment_report import main_report

    raise typer.Exit(main_report(name, window_s=window_s, since=since, until=until, control=control,
                                 events_path=events, exposures_path=exposures, as_json=as_json, confidence=confidence))


if __name__ == "__main__":
    app()
