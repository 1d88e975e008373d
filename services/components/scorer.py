"""``Scorer``: one score per candidate, in the same order and of the same length as its input.

The scorer never sorts or drops (the pipeline's selector does), so what it did can be checked
element by element (tests, explain). Implementations: ``services/components/scorers/``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from services.components.component import Component
from services.features import ItemView, UserView


class Scorer(Component, ABC):
    @abstractmethod
    def score(self, user: UserView, items: ItemView, retrieval_scores: np.ndarray) -> np.ndarray:
        """float32 [n] scores for the n candidates whose features are ``items``."""
