"""Feast feature store: definitions (repo/), the store factory (store.py), the fast online reader."""
