"""Feast feature definitions for project ``recsys`` (see docs/contracts.md, "Feast")."""

from feature_store.repo.definitions import (
    FEATURE_VIEWS,
    PUSH_SOURCE,
    Definitions,
    build_definitions,
    feature_refs,
)

__all__ = ["FEATURE_VIEWS", "PUSH_SOURCE", "Definitions", "build_definitions", "feature_refs"]
