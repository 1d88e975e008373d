"""What flows between components: a request's :class:`Query` and :class:`Candidates`."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from services.features import UserView

_NO_IDS = np.empty(0, np.int64)


@dataclass(frozen=True, slots=True)
class Candidates:
    """Candidates of one source (or one step), best first: parallel packed arrays."""

    item_ids: np.ndarray  # int64 [n]
    scores: np.ndarray  # float32 [n]
    source: str

    @classmethod
    def empty(cls, source: str) -> Candidates:
        return cls(_NO_IDS, np.empty(0, np.float32), source)

    def __len__(self) -> int:
        return int(self.item_ids.size)

    def select(self, index: np.ndarray) -> Candidates:
        """The candidates at ``index`` (a boolean mask or positions), order kept."""
        return Candidates(self.item_ids[index], self.scores[index], self.source)


@dataclass(frozen=True, slots=True)
class Query:
    """One request as every component of the pipeline sees it (built once per request).

    ``recent`` is the request's context followed by the user's stored recent items (most recent
    first within each); ``seen`` every item the user interacted with (the ``user_seen`` view).
    """

    user_id: str
    uid: int | None  # None: not an integer id (an unknown user)
    k: int
    user: UserView = field(default_factory=UserView)
    recent: np.ndarray = field(default_factory=lambda: _NO_IDS)
    exclude: np.ndarray = field(default_factory=lambda: _NO_IDS)  # the request's own exclude_item_ids
    seen: np.ndarray = field(default_factory=lambda: _NO_IDS)
    # per-request results components share (e.g. the two-tower query embedding, computed once)
    scratch: dict = field(default_factory=dict)
