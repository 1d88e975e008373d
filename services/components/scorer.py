"""``Scorer``: one score per candidate, in the same order and of the same length as its input.

The scorer never sorts or drops (the pipeline's selector does), so what it did can be checked
element by element (tests, explain). Implementations: ``services/components/scorers/``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np

from common.bundle import Bundle
from services.features import ItemView, UserView


class Scorer(ABC):
    artifacts: tuple[str, ...] = ()

    def __init__(self, name: str, **options: Any) -> None:
        if options:
            raise ValueError(f"unknown option(s) {', '.join(sorted(options))}")
        self.name = name

    def load_artifacts(self, bundle: Bundle) -> None:  # noqa: B027 - optional: not every component has artifacts
        """Load what the scorer needs from the bundle (once, before serving)."""

    @abstractmethod
    def score(self, user: UserView, items: ItemView, retrieval_scores: np.ndarray) -> np.ndarray:
        """float32 [n] scores for the n candidates whose features are ``items``."""
