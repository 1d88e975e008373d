"""The served catalog: the item ids of the artifact bundle at ``ARTIFACTS_DIR``.

An event on an item the bundle does not know is poison (dead-lettered): nothing downstream can
serve it. The ids are those of the bundle's ``item_catalog`` (every item the index can return:
1M in the scale bundle), or of ``item_ids`` (the model vocabulary, which is the catalog of a
trained bundle but only the 1,682 real items of the scale one) when there is no catalog file.
The file is checked against its manifest sha256 (the rest of the bundle is the services' business) and the ``current`` link is re-resolved every
``check_every_s``, so a newly published bundle's catalog is used without a restart; a bundle that
cannot be read keeps the loaded catalog serving.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from common.bundle import BundleError, load_bundle, sha256_file

log = logging.getLogger(__name__)


class Catalog:
    def __init__(self, artifacts_dir: Path, check_every_s: float = 30.0) -> None:
        self.artifacts_dir = Path(artifacts_dir)
        self.check_every_s = check_every_s
        self.version: str | None = None
        self._root: Path | None = None
        self._ids = np.zeros(0, np.int64)  # sorted
        self._checked = 0.0

    def load(self) -> Catalog:
        """Load (raises :class:`BundleError` when there is no usable bundle)."""
        bundle = load_bundle(self.artifacts_dir, verify=False)
        files = bundle.manifest["files"]
        name = "item_catalog" if "item_catalog" in files else "item_ids"
        entry = files.get(name)
        if entry is None:
            raise BundleError(f"bundle {bundle.version} has neither an item_catalog nor an item_ids file")
        path = bundle.root / entry["path"]
        if not path.is_file() or sha256_file(path) != entry["sha256"]:
            raise BundleError(f"bundle {bundle.version}: {name} is missing or does not match its sha256")
        if name == "item_catalog":
            import pyarrow.parquet as pq

            ids = pq.read_table(path, columns=["item_id"]).column("item_id").to_numpy().astype(np.int64)
        else:
            ids = np.load(path, allow_pickle=False).astype(np.int64)
        self._ids = np.unique(ids[ids >= 0])  # row 0 is the reserved unknown id (-1)
        self.version, self._root = bundle.version, bundle.root
        self._checked = time.monotonic()
        log.info("item catalog of bundle %s: %d items", self.version, self._ids.size)
        return self

    def maybe_reload(self) -> None:
        if time.monotonic() - self._checked < self.check_every_s:
            return
        self._checked = time.monotonic()
        try:
            if self.artifacts_dir.resolve() != self._root:
                self.load()
        except (BundleError, OSError, ValueError) as exc:
            log.warning("new bundle at %s not usable (%s); keeping the catalog of %s", self.artifacts_dir, exc, self.version)

    def __len__(self) -> int:
        return int(self._ids.size)

    def contains(self, item_ids) -> np.ndarray:
        q = np.asarray(item_ids, np.int64)
        if self._ids.size == 0:
            return np.zeros(q.shape, bool)
        pos = np.clip(np.searchsorted(self._ids, q), 0, self._ids.size - 1)
        return self._ids[pos] == q

    @classmethod
    def of(cls, item_ids) -> Catalog:
        """A fixed catalog (tests)."""
        c = cls(Path("/nonexistent"), check_every_s=float("inf"))
        c._ids = np.unique(np.asarray(item_ids, np.int64))
        c.version = "fixed"
        return c
