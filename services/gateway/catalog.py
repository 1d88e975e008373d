"""What the gateway reads from the bundle at start-up: titles and the popular list.

The gateway never needs the models, only ``item_catalog`` (titles for display) and
``popular_items`` (the last-resort fallback). Both files are checked against the manifest's
sha256. An unreadable bundle is not fatal: the gateway starts with an empty catalog and says so
(log line + ``gateway_catalog_items 0``), because it can still serve from the services.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq

from common.bundle import BundleError, load_bundle, sha256_file

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Catalog:
    version: str = ""
    titles: dict[int, str] = field(default_factory=dict)
    popular: tuple[tuple[int, float], ...] = ()
    error: str | None = None  # why the bundle could not be read, None when it was


def _checked(bundle, name: str) -> Path:
    path = bundle.path(name)
    expected = bundle.manifest["files"][name]["sha256"]
    if sha256_file(path) != expected:
        raise BundleError(f"bundle {bundle.version}: sha256 mismatch for {name} ({path.name})")
    return path


def load_catalog(artifacts_dir: Path) -> Catalog:
    try:
        bundle = load_bundle(artifacts_dir, verify=False)  # only the two files we read are checked
        raw = json.loads(_checked(bundle, "popular_items").read_text())
        popular = tuple((int(row["item_id"]), float(row["score"])) for row in raw)
        titles: dict[int, str] = {}
        if bundle.has("item_catalog"):
            table = pq.read_table(_checked(bundle, "item_catalog"), columns=["item_id", "title"])
            ids = table.column("item_id").to_pylist()
            names = table.column("title").to_pylist()
            titles = {int(i): t for i, t in zip(ids, names, strict=True) if t}
        return Catalog(version=bundle.version, titles=titles, popular=popular)
    except (BundleError, OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("bundle at %s is unreadable (%s): starting with an empty catalog and no popular list",
                    artifacts_dir, exc)
        return Catalog(error=str(exc))
