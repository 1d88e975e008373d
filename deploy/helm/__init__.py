"""The Helm chart (recsys/) and its offline checks (chartcheck.py)."""
