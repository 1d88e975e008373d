"""What a service serves: one pipeline per *arm* (a bundle version x a pipeline file), chosen per request.

An :class:`Arms` is an immutable snapshot, replaced whole by :class:`services.reload.Reloader`; a
servicer reads its ``arms`` attribute once per call, so a call finishes on the snapshot it started
with. The arms held are the ``current`` bundle's (the **default**), the canary's, the shadow
ranker's, every arm an enabled experiment names (``[[experiments]]`` in the pipeline config), and
for ``*_KEEP_PREVIOUS_S`` after a switch the arms it replaced.

A request names the arm the gateway pinned it to (``model_version``, ``pipeline``; empty = the
default). :meth:`Arms.select` answers with that arm when it is loaded and with the default
otherwise (a canary or a new ``current`` the service has not loaded yet), and the response's
``model_version`` says which one it was: the gateway then asks ranking for exactly that version
(``strict``), so retrieval and ranking of one answer are always the same bundle.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, order=True)
class ArmKey:
    version: str
    pipeline: str = ""  # "" = the service's own pipeline config; else an experiment variant's file

    def __str__(self) -> str:
        return self.version + (f"+{self.pipeline}" if self.pipeline else "")


class ArmNotLoaded(LookupError):
    """A strict request named a version this service does not hold (ranking: FAILED_PRECONDITION)."""


@dataclass(frozen=True)
class Arms:
    default: ArmKey
    pipelines: dict[ArmKey, Any] = field(default_factory=dict)  # includes the default's
    shadow: ArmKey | None = None  # ranking: the arm scoring in the shadow, when loaded

    @classmethod
    def single(cls, pipeline: Any) -> Arms:
        """One pipeline, the default (start-up, in-process mode, tests)."""
        key = ArmKey(pipeline.version)
        return cls(key, {key: pipeline})

    @property
    def current(self) -> Any:
        return self.pipelines[self.default]

    def select(self, version: str = "", pipeline: str = "", *, strict: bool = False) -> Any:
        """The pipeline of the arm (``version`` or the default's, ``pipeline``) if loaded; else the
        default's (``strict``: ArmNotLoaded when ``version`` is given and not held at all)."""
        want = ArmKey(version or self.default.version, pipeline)
        found = self.pipelines.get(want)
        if found is not None:
            return found
        if version and strict:
            found = self.pipelines.get(ArmKey(version))
            if found is None:
                raise ArmNotLoaded(f"bundle version {version} is not loaded here (serving {self.default.version})")
            return found
        return self.pipelines[self.default]

    def describe(self) -> dict:
        return {"default": str(self.default), "arms": sorted(str(k) for k in self.pipelines),
                "shadow": str(self.shadow) if self.shadow else None}
