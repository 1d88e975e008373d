"""``python -m benchmarks all|features|retrieval|ranking|ann|e2e|e2e-modes|events|deploy|scale|cluster|capacity`` (``make bench`` runs ``all``).

Each benchmark module exposes ``main()`` returning its figures (or an exit code); modules are imported lazily,
so one missing or broken benchmark is reported clearly and does not stop the others.
"""

from __future__ import annotations

import importlib
import inspect
import time

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
console = Console()

# name -> (module, what it measures)
BENCHMARKS: dict[str, tuple[str, str]] = {
    "features": ("benchmarks.features", "online feature reads (reader vs Feast SDK)"),
    "retrieval": ("benchmarks.retrieval", "Retrieve over gRPC, k=500"),
    "ranking": ("benchmarks.ranking", "Rank over gRPC, 500 candidates with features"),
    "ann": ("benchmarks.ann", "FAISS index types on the 1M-item catalog"),
    "e2e": ("benchmarks.e2e", "/recommend through the whole stack"),
    "e2e-modes": ("benchmarks.e2e_modes", "/recommend in GATEWAY_MODE=grpc vs inprocess"),
    "events": ("benchmarks.events", "events loop: freshness, ingestion, consumer lag"),
    "deploy": ("benchmarks.deploy", "hot swap under load, shadow ranker cost, swap memory (ml-100k and 1M items)"),
    "scale": ("benchmarks.scale", "1M items end to end: grpc / inprocess x online / precomputed / hybrid"),
    "cluster": ("benchmarks.cluster", "per-request Redis operations: one server vs a 3-node Redis Cluster"),
    "capacity": ("benchmarks.capacity", "CPU per answer / cache hit / event per process, saturation throughput (the design tool's input)"),
}


def _run(name: str, **kwargs) -> int:
    module_name, _ = BENCHMARKS[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            console.print(f"[red]{name}: {module_name} does not exist in this checkout (not written yet?)[/red]")
            return 2
        raise
    main = getattr(module, "main", None)
    if main is None:
        console.print(f"[red]{name}: {module_name} has no main()[/red]")
        return 2
    if "argv" in inspect.signature(main).parameters:
        kwargs.setdefault("argv", [])  # argparse-style main(argv): never let it read our own sys.argv
    try:
        rc = main(**kwargs)
    except SystemExit as exc:  # a benchmark written as its own typer/argparse app
        rc = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    # benchmarks return their figures (a dict, also written to bench-results/) or an exit code
    return rc if isinstance(rc, int) else 0


@app.command()
def features() -> None:
    """Online feature reads: the reader vs the Feast SDK (benchmarks/features.py)."""
    raise typer.Exit(_run("features"))


@app.command()
def retrieval(
    calls: int = typer.Option(3000, min=2000, help="Measured calls per bundle (after warm-up)."),
    warmup: int = typer.Option(300, min=0, help="Unmeasured warm-up calls."),
    k: int = typer.Option(500, min=1, help="Candidates per call."),
) -> None:
    """Retrieve over gRPC against a real server process (ml-100k and, if present, 1M-item bundle)."""
    raise typer.Exit(_run("retrieval", calls=calls, warmup=warmup, k=k))


@app.command()
def ranking(
    calls: int = typer.Option(3000, min=2000, help="Measured calls (after warm-up)."),
    warmup: int = typer.Option(300, min=0, help="Unmeasured warm-up calls."),
    candidates: int = typer.Option(500, min=1, help="Candidates ranked per call."),
) -> None:
    """Rank over gRPC against a real server process, features read from a private Redis."""
    raise typer.Exit(_run("ranking", calls=calls, warmup=warmup, candidates=candidates))


@app.command()
def ann() -> None:
    """FAISS index types on the 1M-item catalog (benchmarks/ann.py)."""
    raise typer.Exit(_run("ann"))


@app.command()
def e2e() -> None:
    """/recommend through gateway, retrieval and ranking (benchmarks/e2e.py)."""
    raise typer.Exit(_run("e2e"))


@app.command(name="e2e-modes")
def e2e_modes() -> None:
    """/recommend in both runtimes, grpc vs inprocess, cache off (benchmarks/e2e_modes.py)."""
    raise typer.Exit(_run("e2e-modes"))


@app.command()
def events() -> None:
    """The events loop: freshness, ingestion throughput, consumer lag (benchmarks/events.py)."""
    raise typer.Exit(_run("events"))


@app.command()
def deploy(
    quick: bool = typer.Option(False, "--quick", help="3 s phases: a smoke run, figures not meaningful."),
    skip_scale: bool = typer.Option(False, "--skip-scale", help="Skip the 1M-item swap."),
    rate: float = typer.Option(200.0, min=1.0, help="/recommend req/s offered (open loop)."),
    phase_s: float | None = typer.Option(None, "--phase-s", min=1.0, help="Seconds per phase / shadow segment (10; --quick 3)."),
) -> None:
    """Hot swap under load, shadow ranker cost, memory of a swap (benchmarks/deploy.py)."""
    argv = [*(["--quick"] if quick else []), *(["--skip-scale"] if skip_scale else []), "--rate", str(rate),
            *(["--phase-s", str(phase_s)] if phase_s else [])]
    raise typer.Exit(_run("deploy", argv=argv))


@app.command()
def scale(
    runtimes: str = typer.Option("grpc,inprocess", help="Gateway runtimes to measure."),
    modes: str = typer.Option("online,precomputed,hybrid", help="Serving modes to measure."),
    duration: float = typer.Option(10.0, min=1.0, help="Seconds of each 32-connection run."),
) -> None:
    """The 1M-item catalog end to end, runtimes x serving modes side by side (benchmarks/scale.py)."""
    raise typer.Exit(_run("scale", argv=["--runtimes", runtimes, "--modes", modes, "--duration", str(duration)]))


@app.command()
def cluster(calls: int = typer.Option(4000, min=1000, help="Measured calls per operation and target.")) -> None:
    """Each per-request Redis operation on one server and on a 3-node Redis Cluster, interleaved (benchmarks/cluster.py)."""
    raise typer.Exit(_run("cluster", argv=["--calls", str(calls)]))


@app.command()
def capacity(
    rate: float = typer.Option(0.0, min=0.0, help="Requests/s of the open-loop cost phases; 0 = 60 % of the saturation measured just before."),
    duration: float = typer.Option(10.0, min=2.0, help="Seconds of each phase."),
) -> None:
    """CPU per answer, cache hit and event, per process; the saturation throughput (benchmarks/capacity.py)."""
    raise typer.Exit(_run("capacity", argv=["--rate", str(rate), "--duration", str(duration)]))


@app.command(name="all")
def run_all() -> None:
    """Every benchmark in turn; a failure is reported and the others still run."""
    results = []
    for name in BENCHMARKS:
        console.rule(f"benchmark: {name}")
        t = time.perf_counter()
        try:
            rc = _run(name)
        except Exception as exc:  # report and go on with the next benchmark
            console.print_exception()
            console.print(f"[red]{name} failed: {exc!r}[/red]")
            rc = 1
        results.append((name, rc, time.perf_counter() - t))
    table = Table(title="benchmarks")
    for col in ("benchmark", "result", "seconds"):
        table.add_column(col)
    for name, rc, secs in results:
        table.add_row(name, "[green]ok[/green]" if rc == 0 else f"[red]exit {rc}[/red]", f"{secs:.0f}")
    console.print(table)
    raise typer.Exit(0 if all(rc == 0 for _, rc, _ in results) else 1)


if __name__ == "__main__":
    app()
