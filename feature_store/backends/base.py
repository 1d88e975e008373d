"""The interface every online-store backend of the feature reader implements.

The pattern is Feast's own (``feast/infra/online_stores/online_store.py`` + one module per
store): one base class, each store in its own module, chosen by a ``type`` setting
(``FEAST_ONLINE_TYPE``, see :mod:`feature_store.backends`). A backend knows two things about
its store: the Feast config that makes Feast write there (``feast_online_config``) and how to
read back the raw rows Feast wrote, in Feast's layout (:mod:`feature_store.online_layout`).
Decoding, defaults, TTLs and the item table are the reader's job, the same for every backend.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from common.settings import FeatureStoreSettings
    from feature_store.online_layout import Layout

# view name -> (raw event time, raw value of each feature of the view, in the view's order)
UserRows = dict[str, tuple[Any, list[bytes | None]]]


class OnlineStoreConfigError(ValueError):
    """The online store settings are unusable; the message is one line naming the setting."""


class OnlineBackend(ABC):
    """Raw rows of one Feast online store, plus the item snapshot the reader publishes there."""

    type: ClassVar[str]  # the FEAST_ONLINE_TYPE value that selects this backend

    # -- construction (start-up) ---------------------------------------------------------------
    @classmethod
    @abstractmethod
    def feast_online_config(cls, settings: FeatureStoreSettings, data_dir: Path) -> Any:
        """Feast's ``online_store`` config for ``RepoConfig``: where ``feast materialize`` writes."""

    @classmethod
    @abstractmethod
    def open(cls, settings: FeatureStoreSettings, store: Any, layout: Layout,
             socket_timeout: float) -> OnlineBackend:
        """A backend reading what ``store`` (a ``feast.FeatureStore`` for ``settings``) wrote."""

    # -- reads (serving) -----------------------------------------------------------------------
    @abstractmethod
    def read_user(self, user_id: int) -> UserRows:
        """Every user view's raw row of one user (one round trip where the store allows it)."""

    @abstractmethod
    def event_ts(self, raw: Any) -> float | None:
        """A raw event time as this store keeps it -> epoch seconds (``None``: no row)."""

    @abstractmethod
    def snapshot_version(self) -> str | None:
        """The published item snapshot's version (``None``: none was ever published)."""

    @abstractmethod
    def load_snapshot(self, version: str) -> bytes | None:
        """The packed item table of ``version`` (``None`` when it is gone)."""

    @abstractmethod
    def scan_items(self) -> Iterator[tuple[int, str, Any, list[bytes | None]]]:
        """``(item id, view, raw event time, raw values)`` for every item row Feast wrote."""

    # -- writes (post-materialise) -------------------------------------------------------------
    @abstractmethod
    def publish_snapshot(self, blob: bytes, version: str) -> None:
        """Store ``blob`` as ``version`` and switch readers to it (atomically for them)."""

    @abstractmethod
    def close(self) -> None: ...
