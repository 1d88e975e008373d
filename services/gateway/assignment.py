"""Which arm serves a user: the canary and the A/B experiments, decided per request, deterministically.

:func:`assign` is pure: the same user, rollout state and experiments give the same
:class:`Assignment` in every gateway replica (bucketing is :mod:`common.bucketing`, no process
state). Precedence: an experiment variant that names a bundle pins it; otherwise a user in the
canary's share gets the canary version; otherwise ``current``. Every request is pinned to a
version (``RetrieveRequest.model_version``), so the moment this gateway sees a new ``current`` is
the moment its answers switch, whatever order the services load it in.
"""

from __future__ import annotations

from dataclasses import dataclass

from common.bucketing import in_share
from common.deployments import Rollout
from services.experiments import ExperimentConfig

CONTROL = "current"  # the variant label of a user in no canary and no experiment


@dataclass(frozen=True)
class Assignment:
    version: str  # the bundle version asked for ("" = whatever the services serve by default)
    pipeline: str = ""  # an experiment variant's pipeline file ("" = the services' own)
    num_candidates: int | None = None  # an experiment variant's candidate count
    bucket: str = ""  # experiment:variant pairs, comma-separated (exposure log, experiment report)
    canary: bool = False

    @property
    def variant(self) -> str:
        """The metrics label and the response's ``variant``: ``current``, ``canary`` and/or the bucket."""
        parts = (["canary"] if self.canary else []) + ([self.bucket] if self.bucket else [])
        return ",".join(parts) or CONTROL

    @property
    def cache_part(self) -> str:
        """What, beyond the version, makes this arm's answers differ (part of the cache key)."""
        return self.bucket


def assign(user_id: str, current: str, rollout: Rollout, experiments: list[ExperimentConfig]) -> Assignment:
    version, pipeline, num_candidates, pairs = "", "", None, []
    for exp in experiments:
        if not exp.enabled:
            continue
        v = exp.assign(user_id)
        pairs.append(f"{exp.name}:{v.name}")
        version = v.bundle or version
        pipeline = v.pipeline or pipeline
        num_candidates = v.num_candidates or num_candidates
    canary = False
    if not version and rollout.canary is not None and in_share(rollout.canary.salt, user_id, rollout.canary.percent):
        version, canary = rollout.canary.version, True
    return Assignment(version or current, pipeline, num_candidates, ",".join(pairs), canary)
