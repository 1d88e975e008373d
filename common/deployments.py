"""Which bundle is live: the ``current`` and ``previous`` pointers and the append-only deployment log.

Under the artifacts root (``artifacts/``) every version folder is immutable; what changes is:

* ``current`` -> the version the services load (a relative symlink, switched atomically by a
  rename, as :func:`common.bundle.publish` does);
* ``previous`` -> the version ``current`` pointed at before the last switch (what ``rollback``
  goes back to, in one step);
* ``deployments.jsonl`` -> one JSON line per action (``publish``, ``rollback``...): when, who,
  what (version, the version it replaced), why. Appended with ``O_APPEND`` and fsynced: an action
  whose line is not written did not happen (the switch comes after the line).

A switch writes ``previous`` first, then ``current``. A crash between them leaves ``previous``
already equal to the version that is still current: a rollback then refuses ("already current")
instead of going somewhere unexpected. Nothing here validates a bundle (checksums, gate, the
Feast registry): :mod:`models.lifecycle` does before it calls :meth:`Deployments.switch`.
"""

from __future__ import annotations

import getpass
import json
import os
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from common.bundle import MANIFEST, Bundle, BundleError, load_bundle

CURRENT, PREVIOUS = "current", "previous"
LOG = "deployments.jsonl"


@dataclass(frozen=True)
class Action:
    at: str  # ISO 8601, UTC
    actor: str
    action: str  # publish | rollback
    version: str
    replaced: str | None  # the version that was current before
    why: str


def default_actor() -> str:
    """Who acts when the caller does not say (``--actor``): the login name."""
    return getpass.getuser()


class Deployments:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    # -- reading ---------------------------------------------------------------------------
    def pointer(self, name: str) -> str | None:
        """The version a pointer (``current``, ``previous``) names, or None."""
        link = self.root / name
        if not link.is_symlink():
            return None
        return Path(os.readlink(link)).name

    def versions(self) -> list[Bundle]:
        """Every version folder with a manifest (not verified), oldest first."""
        out = []
        if not self.root.is_dir():
            return out
        for d in self.root.iterdir():
            if d.is_dir() and not d.is_symlink() and (d / MANIFEST).is_file():
                try:
                    out.append(load_bundle(d, verify=False))
                except BundleError:
                    continue  # a broken folder is listed by nobody; `list` shows what can be served
        return sorted(out, key=lambda b: (b.manifest.get("created_at", ""), b.version))

    def history(self) -> list[Action]:
        path = self.root / LOG
        if not path.is_file():
            return []
        return [Action(**json.loads(line)) for line in path.read_text().splitlines() if line.strip()]

    # -- switching ---------------------------------------------------------------------------
    def switch(self, version: str, *, action: str, why: str, actor: str | None = None) -> Action:
        """Point ``current`` at ``version`` (``previous`` at what it replaces) and log it."""
        if not (self.root / version / MANIFEST).is_file():
            raise BundleError(f"no bundle version {version!r} under {self.root}")
        replaced = self.pointer(CURRENT)
        if replaced == version:
            raise BundleError(f"{version} is already current: nothing to switch")
        entry = Action(at=datetime.now(UTC).isoformat(timespec="seconds"), actor=actor or default_actor(),
                       action=action, version=version, replaced=replaced, why=why)
        self._append(entry)
        if replaced is not None:
            self._link(PREVIOUS, replaced)
        self._link(CURRENT, version)
        return entry

    def rollback(self, *, why: str, actor: str | None = None) -> Action:
        """``current`` back to ``previous`` in one step (which then names the rolled-back version)."""
        target = self.pointer(PREVIOUS)
        if target is None:
            raise BundleError("no previous version to roll back to (nothing was ever replaced)")
        return self.switch(target, action="rollback", why=why, actor=actor)

    def _link(self, name: str, version: str) -> None:
        tmp = self.root / f".{name}-{os.getpid()}"
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
        tmp.symlink_to(version, target_is_directory=True)  # relative: the folder can be moved or mounted
        os.replace(tmp, self.root / name)

    def _append(self, entry: Action) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        line = (json.dumps(asdict(entry), sort_keys=True) + "\n").encode()
        fd = os.open(self.root / LOG, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
