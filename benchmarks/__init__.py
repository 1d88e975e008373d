"""Benchmarks: ``python -m benchmarks all|features|retrieval|ranking|ann|e2e``.

Each benchmark is a script (not a timed test): it starts what it measures for real, prints a
rich table of p50/p99 and writes ``bench-results/<name>.json``.
"""
