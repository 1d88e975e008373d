"""``python -m loadtest`` (``make loadtest``): locust, headless, against a running stack; SLO check.

Runs ``loadtest/locustfile.py`` in a locust subprocess for ``--run-time``, writes locust's CSV
and HTML reports plus ``summary.json`` to ``loadtest/reports/<UTC time>/`` (git-ignored;
``loadtest/reports/latest`` points at the newest), prints p50/p95/p99, throughput, error rate,
fallback and cache-hit rates, and exits 1 when the SLO is violated (default: p99 <= 100 ms and
errors <= 0.1 %), 2 when the load test could not run at all (e.g. no stack at ``--host``).

The figures come from the locustfile's own tally of every ``/recommend`` request (exact latencies,
not locust's rounded histogram; fallback and cache flags read from each response body); locust's
CSV/HTML reports are written beside them for the usual views. Every option also reads an environment variable
(``LOADTEST_HOST``, ``LOADTEST_USERS``, ...; the Makefile's ``HOST``, ``USERS``, ``DURATION``).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from common.stats import percentile

HERE = Path(__file__).resolve().parent
LOCUSTFILE = HERE / "locustfile.py"
REPORTS = HERE / "reports"
DEFAULT_BUNDLE = Path("artifacts/current")  # relative to the repository root

console = Console()
app = typer.Typer(add_completion=False, help=__doc__, rich_markup_mode=None)


@dataclass(frozen=True)
class Slo:
    p99_ms: float = 100.0
    max_error_rate: float = 0.001
    max_fallback_rate: float | None = None  # not part of the default SLO; reported always


@dataclass(frozen=True)
class Result:
    requests: int
    failures: int
    duration_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    fallbacks: dict[str, int]
    checked: int
    cached: int
    rps: float

    @property
    def error_rate(self) -> float:
        return self.failures / self.requests if self.requests else 1.0

    @property
    def fallback_rate(self) -> float:
        return sum(self.fallbacks.values()) / self.checked if self.checked else 0.0

    @property
    def cache_hit_rate(self) -> float:
        return self.cached / self.checked if self.checked else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests, "failures": self.failures, "duration_s": round(self.duration_s, 2),
            "rps": round(self.rps, 1), "p50_ms": round(self.p50_ms, 2), "p95_ms": round(self.p95_ms, 2),
            "p99_ms": round(self.p99_ms, 2), "max_ms": round(self.max_ms, 2),
            "error_rate": self.error_rate, "fallback_rate": self.fallback_rate, "fallbacks": self.fallbacks,
            "cache_hit_rate": self.cache_hit_rate,
        }


def summarise(summary: dict[str, Any]) -> Result:
    """The SLO figures from the locustfile's tally (every /recommend request, exact latencies)."""
    lat = sorted(summary.get("latencies_ms", []))
    requests = int(summary.get("requests", 0))
    duration = float(summary.get("duration_s", 0.0))
    return Result(
        requests=requests,
        failures=int(summary.get("failures", 0)),
        duration_s=duration,
        p50_ms=percentile(lat, 50), p95_ms=percentile(lat, 95), p99_ms=percentile(lat, 99),
        max_ms=lat[-1] if lat else math.nan,
        fallbacks=dict(summary.get("fallbacks", {})),
        checked=int(summary.get("responses_checked", 0)),
        cached=int(summary.get("cached", 0)),
        rps=requests / duration if duration > 0 else 0.0,
    )


def violations(result: Result, slo: Slo) -> list[str]:
    """Human-readable SLO violations; empty when the run passes."""
    out = []
    if result.requests == 0:
        out.append("no requests were made")
    if not result.p99_ms <= slo.p99_ms:  # also catches nan
        out.append(f"p99 {result.p99_ms:.1f} ms > {slo.p99_ms:g} ms")
    if result.error_rate > slo.max_error_rate:
        out.append(f"error rate {result.error_rate:.3%} > {slo.max_error_rate:.3%} "
                   f"({result.failures}/{result.requests})")
    if slo.max_fallback_rate is not None and result.fallback_rate > slo.max_fallback_rate:
        out.append(f"fallback rate {result.fallback_rate:.2%} > {slo.max_fallback_rate:.2%} {result.fallbacks}")
    return out


def parse_duration(text: str) -> float:
    """Locust's --run-time syntax: 60, 60s, 2m, 1h30m."""
    total, num = 0.0, ""
    for ch in text.strip():
        if ch.isdigit() or ch == ".":
            num += ch
        elif ch in "hms" and num:
            total += float(num) * {"h": 3600, "m": 60, "s": 1}[ch]
            num = ""
        else:
            raise typer.BadParameter(f"not a duration: {text!r} (e.g. 60s, 2m, 1h30m)")
    return total + (float(num) if num else 0.0)


def probe(host: str) -> str | None:
    """None when the gateway answers /healthz, else the problem."""
    try:
        with urllib.request.urlopen(f"{host.rstrip('/')}/healthz", timeout=3) as resp:  # noqa: S310
            return None if resp.status == 200 else f"/healthz answered HTTP {resp.status}"
    except urllib.error.HTTPError as exc:
        return f"/healthz answered HTTP {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        return str(exc)


def render(result: Result, slo: Slo, problems: list[str], out_dir: Path) -> None:
    table = Table(title="loadtest: /recommend")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("SLO", justify="right")
    table.add_row("requests", f"{result.requests:,}", "")
    table.add_row("throughput", f"{result.rps:.1f} req/s", "")
    table.add_row("p50", f"{result.p50_ms:.1f} ms", "")
    table.add_row("p95", f"{result.p95_ms:.1f} ms", "")
    table.add_row("p99", f"{result.p99_ms:.1f} ms", f"≤ {slo.p99_ms:g} ms")
    table.add_row("max", f"{result.max_ms:.1f} ms", "")
    table.add_row("error rate", f"{result.error_rate:.3%} ({result.failures})", f"≤ {slo.max_error_rate:.3%}")
    fb = ", ".join(f"{k} {v}" for k, v in sorted(result.fallbacks.items())) or "none"
    table.add_row("fallback rate", f"{result.fallback_rate:.2%} ({fb})",
                  "" if slo.max_fallback_rate is None else f"≤ {slo.max_fallback_rate:.2%}")
    table.add_row("cache hit rate", f"{result.cache_hit_rate:.1%}", "")
    console.print(table)
    console.print(f"reports: {out_dir}")
    if problems:
        console.print("[bold red]SLO VIOLATED:[/] " + "; ".join(problems))
    else:
        console.print("[bold green]SLO met[/]")


@app.command()
def main(
    host: Annotated[str, typer.Option(envvar=["LOADTEST_HOST", "HOST"], help="Gateway base URL.")] = "http://127.0.0.1:8000",
    users: Annotated[int, typer.Option(min=1, envvar=["LOADTEST_USERS", "USERS"], help="Concurrent simulated users.")] = 20,
    spawn_rate: Annotated[float, typer.Option(min=0.1, envvar="LOADTEST_SPAWN_RATE", help="Users started per second.")] = 10.0,
    run_time: Annotated[str, typer.Option(envvar=["LOADTEST_RUN_TIME", "DURATION"], help="How long to run (60s, 2m).")] = "60s",
    p99_ms: Annotated[float, typer.Option(envvar="LOADTEST_SLO_P99_MS", help="SLO: p99 latency bound (ms).")] = 100.0,
    max_error_rate: Annotated[float, typer.Option(envvar="LOADTEST_SLO_MAX_ERROR_RATE", help="SLO: max failed share.")] = 0.001,
    max_fallback_rate: Annotated[float | None, typer.Option(
        envvar="LOADTEST_SLO_MAX_FALLBACK_RATE", help="SLO: max share of fallback answers (unset: not checked).")] = None,
    unknown_ratio: Annotated[float, typer.Option(envvar="LOADTEST_UNKNOWN_RATIO", help="Share of unknown users.")] = 0.10,
    post_ratio: Annotated[float, typer.Option(envvar="LOADTEST_POST_RATIO", help="Share of POST requests.")] = 0.30,
    bundle: Annotated[Path, typer.Option(
        envvar="LOADTEST_BUNDLE", help="Bundle whose user_ids/item_ids npy give the population.")] = DEFAULT_BUNDLE,
    reports_dir: Annotated[Path, typer.Option(envvar="LOADTEST_REPORTS_DIR", help="Where report folders go.")] = REPORTS,
) -> None:
    slo = Slo(p99_ms=p99_ms, max_error_rate=max_error_rate, max_fallback_rate=max_fallback_rate)
    parse_duration(run_time)  # a clear error before anything starts
    problem = probe(host)
    if problem:
        console.print(f"[bold red]no stack at {host}[/]: {problem}\n"
                      "start one with `docker compose up -d --build --wait` or `make up` (or pass --host)")
        raise typer.Exit(2)

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out_dir = reports_dir / stamp
    out_dir.mkdir(parents=True, exist_ok=True)
    summary_path = out_dir / "locustfile-summary.json"
    cmd = [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "--host", host,
        "--users", str(users), "--spawn-rate", str(spawn_rate), "--run-time", run_time,
        "--stop-timeout", "5", "--csv", str(out_dir / "locust"), "--html", str(out_dir / "report.html"),
        "--only-summary", "--loglevel", "WARNING",
        "--bundle", str(bundle), "--unknown-ratio", str(unknown_ratio), "--post-ratio", str(post_ratio),
        "--summary-json", str(summary_path),
    ]
    console.print(f"locust: {users} users (spawn {spawn_rate:g}/s) for {run_time} against {host}")
    proc = subprocess.run(cmd, cwd=HERE.parent, check=False)
    if not summary_path.is_file():
        console.print(f"[bold red]locust did not produce its reports (exit {proc.returncode})[/]")
        raise typer.Exit(2)

    result = summarise(json.loads(summary_path.read_text()))
    problems = violations(result, slo)
    (out_dir / "summary.json").write_text(json.dumps({
        "host": host, "users": users, "spawn_rate": spawn_rate, "run_time": run_time,
        "slo": {"p99_ms": slo.p99_ms, "max_error_rate": slo.max_error_rate, "max_fallback_rate": slo.max_fallback_rate},
        "result": result.as_dict(), "violations": problems, "passed": not problems,
    }, indent=2))
    latest = reports_dir / "latest"
    if latest.is_symlink() or not latest.exists():
        tmp = reports_dir / f".latest-{os.getpid()}"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(stamp, target_is_directory=True)
        os.replace(tmp, latest)
    render(result, slo, problems, out_dir)
    raise typer.Exit(1 if problems else 0)


if __name__ == "__main__":
    app()
