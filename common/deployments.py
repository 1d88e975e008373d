"""Which bundle is live: the ``current`` and ``previous`` pointers and the append-only deployment log.

Under the artifacts root (``artifacts/``) every version folder is immutable; what changes is:

* ``current`` -> the version the services load (a relative symlink, switched atomically by a
  rename, as :func:`common.bundle.publish` does);
* ``previous`` -> the version ``current`` pointed at before the last switch (what ``rollback``
  goes back to, in one step);
* ``rollout.json`` -> what is served beside ``current``: the **canary** (a version, the percent of
  users it serves and the bucketing salt) and the **shadow** ranker (a version that scores the
  same candidates off the request path). Replaced whole by a rename, so a reader sees the old or
  the new state, never half of one. Services and gateways poll it (``*_RELOAD_POLL_S``).
* ``deployments.jsonl`` -> one JSON line per action (``publish``, ``rollback``, ``canary``,
  ``promote``, ``abort``, ``shadow``, ``shadow-off``): when, who, what (version, the version it
  replaced, the canary percent), why. Appended with ``O_APPEND`` and fsynced: an action whose line
  is not written did not happen (the switch comes after the line).

A switch writes ``previous`` first, then ``current``. A crash between them leaves ``previous``
already equal to the version that is still current: a rollback then refuses ("already current")
instead of going somewhere unexpected. Nothing here validates a bundle (checksums, gate, the
Feast registry): :mod:`models.lifecycle` does before it calls :meth:`Deployments.switch`.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from common.bundle import MANIFEST, Bundle, BundleError, load_bundle

log = logging.getLogger(__name__)

CURRENT, PREVIOUS = "current", "previous"
LOG = "deployments.jsonl"
ROLLOUT = "rollout.json"


@dataclass(frozen=True)
class Action:
    at: str  # ISO 8601, UTC
    actor: str
    action: str  # publish | rollback | canary | promote | abort | shadow | shadow-off
    version: str
    replaced: str | None  # the version that was current before
    why: str
    percent: float | None = None  # canary: the share of users it serves


@dataclass(frozen=True)
class Canary:
    version: str
    percent: float  # 0-100: users whose bucketing position (common.bucketing) is below it
    salt: str  # kept for the canary's life: raising the percent keeps every user already in it
    since: str


@dataclass(frozen=True)
class Rollout:
    """What ``rollout.json`` says is served beside ``current``."""

    canary: Canary | None = None
    shadow: str | None = None  # the ranker version scoring in the shadow

    def versions(self) -> set[str]:
        return {v for v in (self.canary.version if self.canary else None, self.shadow) if v}

    def to_json(self) -> dict:
        return {"canary": asdict(self.canary) if self.canary else None, "shadow": self.shadow}

    @classmethod
    def from_json(cls, raw: dict) -> Rollout:
        canary = raw.get("canary")
        return cls(canary=Canary(**canary) if canary else None, shadow=raw.get("shadow") or None)


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

    def rollout(self) -> Rollout:
        """The canary and shadow state (empty when there is no ``rollout.json``); BundleError if
        the file is not what :meth:`_write_rollout` writes (a reader keeps what it had)."""
        path = self.root / ROLLOUT
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            return Rollout()
        except (OSError, ValueError) as exc:
            raise BundleError(f"{path}: unreadable ({exc})") from exc
        try:
            return Rollout.from_json(raw)
        except (TypeError, AttributeError) as exc:
            raise BundleError(f"{path}: not a rollout state ({exc})") from exc

    def history(self) -> list[Action]:
        path = self.root / LOG
        if not path.is_file():
            return []
        return [Action(**json.loads(line)) for line in path.read_text().splitlines() if line.strip()]

    # -- switching ---------------------------------------------------------------------------
    def switch(self, version: str, *, action: str, why: str, actor: str | None = None) -> Action:
        """Point ``current`` at ``version`` (``previous`` at what it replaces) and log it."""
        self._require(version)
        replaced = self.pointer(CURRENT)
        if replaced == version:
            raise BundleError(f"{version} is already current: nothing to switch")
        entry = self._entry(action, version, why, actor)
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

    def start_canary(self, version: str, percent: float, *, why: str, actor: str | None = None) -> Action:
        """Serve ``version`` to ``percent`` % of users; the same version again changes the percent
        (same salt: a ramp from 5 to 20 % keeps the first 5 % in)."""
        self._require(version)
        if not 0 < percent <= 100:
            raise BundleError(f"canary percent must be in (0, 100], got {percent:g}")
        if version == self.pointer(CURRENT):
            raise BundleError(f"{version} is current: a canary is a version that is not")
        state = self.rollout()
        if state.canary is not None and state.canary.version != version:
            raise BundleError(f"canary {state.canary.version} is running: promote or abort it first")
        entry = self._entry("canary", version, why, actor, percent=percent)
        canary = Canary(version, float(percent), state.canary.salt if state.canary else f"canary:{version}",
                        state.canary.since if state.canary else entry.at)
        self._append(entry)
        self._write_rollout(Rollout(canary, state.shadow))
        return entry

    def promote(self, *, why: str, actor: str | None = None) -> Action:
        """The canary becomes ``current`` (``previous`` the version it replaces); no canary after."""
        state = self.rollout()
        if state.canary is None:
            raise BundleError("no canary to promote")
        entry = self.switch(state.canary.version, action="promote", why=why, actor=actor)
        # a crash before this line leaves canary == current: both arms are the same bundle
        self._write_rollout(Rollout(None, state.shadow))
        return entry

    def abort(self, *, why: str, actor: str | None = None) -> Action:
        state = self.rollout()
        if state.canary is None:
            raise BundleError("no canary to abort")
        entry = self._entry("abort", state.canary.version, why, actor, percent=state.canary.percent)
        self._append(entry)
        self._write_rollout(Rollout(None, state.shadow))
        return entry

    def set_shadow(self, version: str | None, *, why: str, actor: str | None = None) -> Action:
        """Score every ranked request with ``version`` too, off the request path (None: stop)."""
        state = self.rollout()
        if version is None:
            if state.shadow is None:
                raise BundleError("no shadow ranker to stop")
            entry = self._entry("shadow-off", state.shadow, why, actor)
        else:
            self._require(version)
            entry = self._entry("shadow", version, why, actor)
        self._append(entry)
        self._write_rollout(Rollout(state.canary, version))
        return entry

    def _require(self, version: str) -> None:
        if not (self.root / version / MANIFEST).is_file():
            raise BundleError(f"no bundle version {version!r} under {self.root}")

    def _entry(self, action: str, version: str, why: str, actor: str | None, **extra) -> Action:
        return Action(at=datetime.now(UTC).isoformat(timespec="seconds"), actor=actor or default_actor(),
                      action=action, version=version, replaced=self.pointer(CURRENT), why=why, **extra)

    def _write_rollout(self, state: Rollout) -> None:
        tmp = self.root / f".{ROLLOUT}-{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump(state.to_json(), f, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.root / ROLLOUT)

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


class RolloutReader:
    """``rollout.json`` as a poller follows it: :meth:`read` gives the state, or None when the file
    cannot be read, which is logged once per distinct error (the caller keeps its last good state)."""

    def __init__(self, root: str | Path, who: str) -> None:
        self.deployments = Deployments(root)
        self.who = who
        self.error: str | None = None

    def read(self) -> Rollout | None:
        try:
            state = self.deployments.rollout()
        except BundleError as exc:
            if str(exc) != self.error:
                log.error("%s: %s; keeping the canary and shadow as they were", self.who, exc)
            self.error = str(exc)
            return None
        self.error = None
        return state
