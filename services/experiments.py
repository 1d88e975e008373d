"""A/B experiments as configuration: the ``[[experiments]]`` tables of ``services/pipeline.toml``.

An experiment splits users deterministically (:func:`common.bucketing.pick` on the experiment's
salt, default its name) over weighted variants; a variant changes any of:

* ``bundle``          a bundle version (a folder under the artifacts root) instead of ``current``;
* ``pipeline``        another component pipeline file (its ``[retrieval]`` and ``[ranking]``),
                      relative to this config's folder;
* ``num_candidates``  how many candidates the gateway asks retrieval for and ranking scores.

A variant that sets nothing is the control. Several experiments may run at once, each on its own
salt (independent splits), as long as no two enabled ones change the same thing (a user's answer
would otherwise depend on which one wins): that is refused at load. The gateway assigns the
variant; retrieval and ranking load every arm (bundle version x pipeline file) an enabled
experiment names, so the gateway can pin a request to it (``model_version`` and ``pipeline`` in
``RetrieveRequest`` / ``RankRequest``). The assignment is recorded as ``bucket``
(``experiment:variant`` pairs, comma-separated) in the response, the exposure log and the
``variant`` label of the gateway's metrics; ``python -m models experiment-report NAME`` reads it back.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from common.bucketing import pick

NAME = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$"  # no ':' or ',' (the bucket's separators)
CHANGES = ("bundle", "pipeline", "num_candidates")


class VariantConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=NAME)
    weight: float = Field(gt=0, description="Relative share of the experiment's users.")
    bundle: str | None = Field(None, min_length=1, description="A bundle version folder under the artifacts root.")
    pipeline: str | None = Field(None, min_length=1, description="A pipeline file, relative to this config's folder.")
    num_candidates: int | None = Field(None, ge=1, le=2000)

    def changes(self) -> set[str]:
        return {c for c in CHANGES if getattr(self, c) is not None}


class ExperimentConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=NAME)
    salt: str | None = Field(None, description="Bucketing salt (default: the name); a new salt reshuffles users.")
    enabled: bool = True
    variants: list[VariantConfig] = Field(min_length=2)

    @model_validator(mode="after")
    def _variants(self) -> ExperimentConfig:
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names):
            raise ValueError(f"variant names must be unique, got {names}")
        return self

    def assign(self, user_id: str) -> VariantConfig:
        return self.variants[pick(self.salt or self.name, user_id, [v.weight for v in self.variants])]

    def changes(self) -> set[str]:
        return set().union(*(v.changes() for v in self.variants))


def check_experiments(experiments: list[ExperimentConfig]) -> None:
    """Unique names; no two enabled experiments changing the same thing (ValueError)."""
    names = [e.name for e in experiments]
    if len(set(names)) != len(names):
        raise ValueError(f"experiment names must be unique, got {names}")
    owner: dict[str, str] = {}
    for e in experiments:
        if not e.enabled:
            continue
        for change in sorted(e.changes()):
            if change in owner:
                raise ValueError(f"experiments {owner[change]} and {e.name} both change {change}: "
                                 "a user's answer would depend on which one wins (disable one)")
            owner[change] = e.name


def pipeline_paths(experiments: list[ExperimentConfig], base: Path) -> dict[str, Path]:
    """Every variant pipeline of the enabled experiments: its config string -> the file."""
    return {v.pipeline: (base / v.pipeline).resolve() for e in experiments if e.enabled
            for v in e.variants if v.pipeline is not None}


def bundle_versions(experiments: list[ExperimentConfig]) -> set[str]:
    return {v.bundle for e in experiments if e.enabled for v in e.variants if v.bundle is not None}
