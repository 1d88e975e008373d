"""``seen_items``: every item the user interacted with (the ``user_seen`` view).

The offline evaluation skips known items too, so serving answers what was measured; without it
the demo recommended Toy Story to user 1, who had rated it.
"""

from __future__ import annotations

import numpy as np

from services.components.filter import Filter
from services.components.types import Query


class SeenItems(Filter):
    def excluded(self, query: Query) -> np.ndarray:
        return query.seen


COMPONENT = SeenItems
