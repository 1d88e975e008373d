"""``recent_items``: what the user just interacted with (request context + ``user_context``)."""

from __future__ import annotations

import numpy as np

from services.components.filter import Filter
from services.components.types import Query


class RecentItems(Filter):
    def excluded(self, query: Query) -> np.ndarray:
        return query.recent


COMPONENT = RecentItems
