"""``request_exclusions``: the request's own ``exclude_item_ids``."""

from __future__ import annotations

import numpy as np

from services.components.filter import Filter
from services.components.types import Query


class RequestExclusions(Filter):
    def excluded(self, query: Query) -> np.ndarray:
        return query.exclude


COMPONENT = RequestExclusions
