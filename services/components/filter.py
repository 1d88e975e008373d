"""``Filter``: splits candidates into the kept ones and the removed ones (reason = its name).

Most filters remove a per-request set of ids (the request's exclusions, the user's recent or seen
items): they implement :meth:`Filter.excluded`, and the shared :meth:`Filter.apply` does the
(vectorised) rest. :meth:`Filter.max_removed` lets the pipeline over-fetch from the sources so
that k candidates remain after filtering. Implementations: ``services/components/filters/``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from services.components.component import Component
from services.components.types import Candidates, Query


@dataclass(frozen=True, slots=True)
class Filtered:
    kept: Candidates
    removed: np.ndarray  # int64 item ids removed by this filter, in candidate order
    reason: str  # the filter's name


class Filter(Component, ABC):
    #: The filter removes exactly ``excluded(query)`` (the default ``apply``). The pipeline may
    #: then run several such filters as one set when no one asks what each removed; a filter
    #: that overrides ``apply`` with another rule must set this to False.
    by_exclusion: bool = True
    @abstractmethod
    def excluded(self, query: Query) -> np.ndarray:
        """The item ids this filter removes for ``query`` (int64; duplicates allowed)."""

    def max_removed(self, query: Query) -> int:
        """An upper bound of how many candidates of one source this filter can remove."""
        return int(self.excluded(query).size)

    def apply(self, query: Query, candidates: Candidates, excluded: np.ndarray | None = None) -> Filtered:
        ids = excluded if excluded is not None else self.excluded(query)
        if ids.size == 0 or len(candidates) == 0:
            return Filtered(candidates, np.empty(0, np.int64), self.name)
        drop = np.isin(candidates.item_ids, ids)
        if not drop.any():
            return Filtered(candidates, np.empty(0, np.int64), self.name)
        return Filtered(candidates.select(~drop), candidates.item_ids[drop], self.name)
