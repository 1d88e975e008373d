"""``CandidateSource``: asked once per request for at most ``n`` candidates, best first.

A source never filters for the request (the pipeline's filters do, and say what they removed);
it may return fewer than ``n`` (a thin or cold user) or none. Implementations live one per module
in ``services/components/sources/``; the module's ``COMPONENT`` is the class, and its file name is
the ``type`` the pipeline config names (``services/pipeline.toml``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from services.components.component import Component
from services.components.types import Candidates, Query


class CandidateSource(Component, ABC):
    @abstractmethod
    def fetch(self, query: Query, n: int) -> Candidates:
        """At most ``n`` candidates for ``query``, best first, ``source`` = this source's name."""

    def score_items(self, query: Query, item_ids: np.ndarray) -> np.ndarray | None:
        """This source's score of arbitrary items for ``query`` (``retrieval.score_with``), or
        None when it cannot score them (e.g. no query embedding for a user without signal)."""
        return None
