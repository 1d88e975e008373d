"""Prometheus for the compose stack: scrape config, alert rules and their offline checks (promcheck.py)."""
