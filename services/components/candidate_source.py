"""``CandidateSource``: asked once per request for at most ``n`` candidates, best first.

A source never filters for the request (the pipeline's filters do, and say what they removed);
it may return fewer than ``n`` (a thin or cold user) or none. Implementations live one per module
in ``services/components/sources/``; the module's ``COMPONENT`` is the class, and its file name is
the ``type`` the pipeline config names (``services/pipeline.toml``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np

from common.bundle import Bundle
from services.components.types import Candidates, Query


class CandidateSource(ABC):
    #: Bundle files the source cannot work without (checked before ``load_artifacts``).
    artifacts: tuple[str, ...] = ()

    def __init__(self, name: str, **options: Any) -> None:
        if options:
            raise ValueError(f"unknown option(s) {', '.join(sorted(options))}")
        self.name = name

    def load_artifacts(self, bundle: Bundle) -> None:  # noqa: B027 - optional: not every component has artifacts
        """Load what the source needs from the bundle (once, before serving)."""

    @abstractmethod
    def fetch(self, query: Query, n: int) -> Candidates:
        """At most ``n`` candidates for ``query``, best first, ``source`` = this source's name."""

    def score_items(self, query: Query, item_ids: np.ndarray) -> np.ndarray | None:
        """This source's score of arbitrary items for ``query`` (``retrieval.score_with``), or
        None when it cannot score them (e.g. no query embedding for a user without signal)."""
        return None
