"""``python -m benchmarks e2e-modes``: ``benchmarks.e2e --modes grpc,inprocess`` (both runtimes of
the same graph, one run, cache off) -> bench-results/e2e_modes.json."""

from __future__ import annotations

from benchmarks import e2e


def main(argv: list[str] | None = None) -> dict:
    return e2e.main(["--modes", "grpc,inprocess", *(argv or [])])
