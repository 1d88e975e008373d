"""The versioned artifact bundle: ``artifacts/<version>/`` with a ``manifest.json``.

The offline pipeline writes a bundle into a staging folder, then :func:`publish` moves it to
``artifacts/<version>/`` and switches ``artifacts/current`` (a symlink) atomically with a
rename. Services call :func:`load_bundle`, which resolves ``current`` once and verifies every
file's sha256 against the manifest before anything is loaded, so a tampered or half-written
bundle is refused with a clear message instead of being served.

Manifest (``manifest.json``)::

    {
      "format_version": 1,
      "version": "20261124T175500Z-3f2a9c1b",
      "created_at": "2026-11-24T17:55:00+00:00",
      "dataset": {...},
      "files": {"user_tower": {"path": "user_tower.onnx", "sha256": "..."}, ...},
      "embedding_dim": 64,
      "ranker_features": [{"name": "retrieval_score", "dtype": "float32", ...}, ...],
      "metrics": {"popularity": {"recall@100": 0.1}, "retrieval": {...}, ...},
      ...
    }

Metrics are nested objects; ``metric(manifest, "retrieval.recall@100")`` reads a dotted key.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
REQUIRED_FILES = ("user_tower", "item_index", "ranker", "popular_items")
REQUIRED_KEYS = ("version", "created_at", "files", "embedding_dim", "ranker_features", "metrics")


class BundleError(RuntimeError):
    """The bundle is missing, incomplete or does not match its manifest."""


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_entries(root: Path, names: dict[str, str]) -> dict[str, dict[str, str]]:
    """``{name: relative path}`` -> the manifest's ``files`` object with checksums."""
    return {
        name: {"path": rel, "sha256": sha256_file(root / rel), "bytes": (root / rel).stat().st_size}
        for name, rel in names.items()
    }


def metric(manifest: dict[str, Any], dotted: str) -> Any:
    """Read ``"retrieval.recall@100"`` from the nested ``metrics`` object."""
    node: Any = manifest["metrics"]
    for part in dotted.split("."):
        node = node[part]
    return node


@dataclass(frozen=True)
class Bundle:
    root: Path  # the resolved version folder, never the ``current`` link
    manifest: dict[str, Any]

    @property
    def version(self) -> str:
        return self.manifest["version"]

    @property
    def embedding_dim(self) -> int:
        return int(self.manifest["embedding_dim"])

    @property
    def ranker_features(self) -> list[dict[str, Any]]:
        return self.manifest["ranker_features"]

    def path(self, name: str) -> Path:
        try:
            return self.root / self.manifest["files"][name]["path"]
        except KeyError as exc:
            raise BundleError(f"bundle {self.version} has no file named {name!r}") from exc

    def has(self, name: str) -> bool:
        return name in self.manifest["files"]


def load_bundle(path: str | Path, *, verify: bool = True) -> Bundle:
    """Resolve ``path`` (a version folder or the ``current`` link) and check it.

    Raises :class:`BundleError` naming the problem: no manifest, a missing key or file, or a
    sha256 mismatch.
    """
    link = Path(path)
    if not link.exists():
        raise BundleError(f"no artifact bundle at {link} (run `make artifacts`)")
    root = link.resolve()
    mpath = root / MANIFEST
    if not mpath.is_file():
        raise BundleError(f"{root} has no {MANIFEST}")
    try:
        manifest = json.loads(mpath.read_text())
    except json.JSONDecodeError as exc:
        raise BundleError(f"{mpath} is not valid JSON: {exc}") from exc
    missing = [k for k in REQUIRED_KEYS if k not in manifest]
    missing += [f"files.{n}" for n in REQUIRED_FILES if n not in manifest.get("files", {})]
    if missing:
        raise BundleError(f"{mpath} lacks {', '.join(missing)}")
    bundle = Bundle(root=root, manifest=manifest)
    if verify:
        for name, entry in manifest["files"].items():
            fpath = root / entry["path"]
            if not fpath.is_file():
                raise BundleError(f"bundle {bundle.version}: file {name} ({entry['path']}) is missing")
            actual = sha256_file(fpath)
            if actual != entry["sha256"]:
                raise BundleError(
                    f"bundle {bundle.version}: sha256 mismatch for {name} ({entry['path']}): "
                    f"manifest {entry['sha256'][:12]}…, file {actual[:12]}…"
                )
    return bundle


def publish(staging: Path, artifacts_root: Path, version: str,
            why: str = "models run: trained, evaluated and gated", make_current: bool = True) -> Path:
    """Move a verified staging folder to ``artifacts_root/version`` and point ``current`` at it.

    The switch is atomic: a new symlink is created beside ``current`` and renamed over it, so a
    reader resolves either the old or the new version, never a partial one. ``previous`` keeps
    the replaced version and the deployment log records the action
    (:class:`common.deployments.Deployments`). ``make_current=False``: only moved into place.
    """
    from common.deployments import Deployments  # it imports this module

    load_bundle(staging)  # never publish something that would be refused at load time
    artifacts_root.mkdir(parents=True, exist_ok=True)
    target = artifacts_root / version
    if target.exists():
        raise BundleError(f"{target} already exists; versions are immutable")
    shutil.move(str(staging), str(target))
    if make_current:  # else a candidate beside current: `python -m models canary|publish VERSION` later
        Deployments(artifacts_root).switch(version, action="publish", why=why)
    return target
