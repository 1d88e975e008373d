"""The pipeline as configuration: ``services/pipeline.toml`` -> validated, loaded components.

Validation happens in two steps, both at start-up and both fatal with one line naming the
setting (``retrieval.sources[1].quota: ...``):

1. :func:`load_config` parses the file against the typed schema below (unknown keys, wrong
   types, two ``rest`` quotas, a backfill source with a quota, ...);
2. :func:`build_sources` / :func:`build_filters` / :func:`build_scorer` resolve each ``type`` to
   ``services/components/<role>/<type>.py``'s ``COMPONENT``, construct it with its options and
   check that the bundle has every file it declares in ``artifacts`` before ``load_artifacts``.
"""

from __future__ import annotations

import importlib
import pkgutil
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from common.bundle import Bundle, BundleError
from common.grpc_server import LoadError
from services.components.candidate_source import CandidateSource
from services.components.filter import Filter
from services.components.merger import REST, Merger, Slot
from services.components.scorer import Scorer
from services.experiments import ExperimentConfig, check_experiments, pipeline_paths

DEFAULT_PATH = Path(__file__).resolve().parents[1] / "pipeline.toml"


class PipelineConfigError(LoadError):
    """The pipeline config is invalid; the message is one line naming the setting (a service
    refuses to serve with it, like a bad bundle)."""


class _Component(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    type: str = Field(min_length=1)
    name: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)

    @property
    def label(self) -> str:
        return self.name or self.type


class SourceConfig(_Component):
    quota: int | Literal["rest"] | None = Field(None, description='At most this many candidates, or "rest".')
    share: float | None = Field(None, gt=0, lt=1, description="Instead of a quota: at most this share of k.")
    backfill: bool = False

    @model_validator(mode="after")
    def _quota(self) -> SourceConfig:
        if self.quota is not None and self.share is not None:
            raise ValueError("give a quota or a share, not both")
        if self.backfill and (self.quota is not None or self.share is not None):
            raise ValueError("a backfill source takes no quota")
        if not self.backfill and self.quota is None and self.share is None:
            raise ValueError('a primary source needs a quota (a number or "rest") or a share')
        if isinstance(self.quota, int) and self.quota < 1:
            raise ValueError(f"quota must be at least 1, got {self.quota}")
        return self


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    _origin: str = PrivateAttr("pipeline config")  # "pipeline config <path>", prefixed to build errors


class RetrievalConfig(_Section):

    sources: list[SourceConfig] = Field(min_length=1)
    filters: list[_Component] = Field(default_factory=list)
    score_with: str | None = None  # a source whose score every merged candidate gets

    @model_validator(mode="after")
    def _slots(self) -> RetrievalConfig:
        labels = [s.label for s in self.sources]
        if len(set(labels)) != len(labels):
            raise ValueError(f"source names must be unique, got {labels}")
        if sum(s.quota == REST for s in self.sources) > 1:
            raise ValueError('at most one source may have quota = "rest"')
        if all(s.backfill for s in self.sources):
            raise ValueError("at least one source must be primary (not backfill)")
        if self.score_with is not None and self.score_with not in labels:
            raise ValueError(f"score_with names no source: {self.score_with!r} (sources: {', '.join(labels)})")
        return self

    def merger(self) -> Merger:
        return Merger([Slot(s.label, None if s.quota in (None, REST) else int(s.quota), s.backfill, s.share)
                       for s in self.sources])

    def check_quotas(self, max_k: int, setting: str) -> None:
        """Quotas that no request could use: above the largest k a request may ask for."""
        for i, s in enumerate(self.sources):
            if isinstance(s.quota, int) and s.quota > max_k:
                raise PipelineConfigError(f"{self._origin}: retrieval.sources[{i}].quota: {s.quota} is above {setting}={max_k}, "
                                          "the largest k a request may ask for")


class RankingConfig(_Section):

    scorer: _Component


# The gateway's fallback rungs (strategies), and the ``fallback`` each one reports in the response.
RUNGS = {
    "retrieval_order": "ranking_unavailable",  # ranking failed: retrieval's candidates in its order
    "cached": "cached",  # the user's last good answer (GATEWAY_STALE_TTL_S), minus the exclusions
    "popular_ranked": "retrieval_unavailable",  # retrieval failed: the bundle's popular list, ranked
    "popular": "all_unavailable",  # the popular list as is: always answers, so it comes last
}
DEFAULT_LADDER = ("retrieval_order", "cached", "popular_ranked", "popular")


class FallbackConfig(_Section):
    ladder: tuple[Literal["retrieval_order", "cached", "popular_ranked", "popular"], ...] = DEFAULT_LADDER

    @model_validator(mode="after")
    def _ends_with_popular(self) -> FallbackConfig:
        if len(set(self.ladder)) != len(self.ladder):
            raise ValueError(f"a rung appears twice: {list(self.ladder)}")
        if not self.ladder or self.ladder[-1] != "popular":
            raise ValueError('the last rung must be "popular" (the only one that always answers)')
        return self


class PipelineConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    retrieval: RetrievalConfig
    ranking: RankingConfig
    fallback: FallbackConfig = Field(default_factory=FallbackConfig)
    experiments: list[ExperimentConfig] = Field(default_factory=list)  # services/experiments.py
    _path: Path = PrivateAttr(DEFAULT_PATH)

    @field_validator("experiments")
    @classmethod
    def _experiments(cls, value: list[ExperimentConfig]) -> list[ExperimentConfig]:
        check_experiments(value)
        return value

    @property
    def path(self) -> Path:
        return self._path

    def variant_paths(self) -> dict[str, Path]:
        """The pipeline files enabled experiment variants name: config string -> path."""
        return pipeline_paths(self.experiments, self._path.parent)

    def variant(self, pipeline: str) -> PipelineConfig:
        """The config an experiment variant's ``pipeline`` names ("" = this one)."""
        return self if not pipeline else load_config(self.variant_paths()[pipeline], nested=True)


def load_config(path: str | Path | None = None, *, nested: bool = False) -> PipelineConfig:
    """``nested``: a variant's pipeline file (it may not define experiments of its own)."""
    path = Path(path) if path is not None else DEFAULT_PATH
    try:
        raw = tomllib.loads(path.read_text())
    except OSError as exc:
        raise PipelineConfigError(f"pipeline config {path}: cannot be read ({exc.strerror or exc})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise PipelineConfigError(f"pipeline config {path}: not valid TOML ({exc})") from exc
    try:
        config = PipelineConfig.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = _where(err["loc"])
        msg = err['msg'].removeprefix("Value error, ")  # pydantic's prefix for a validator's ValueError
        raise PipelineConfigError(f"pipeline config {path}: {where}: {msg}") from exc
    for section in (config.retrieval, config.ranking, config.fallback):
        section._origin = f"pipeline config {path}"
    config._path = path.resolve()
    if nested and config.experiments:
        raise PipelineConfigError(f"pipeline config {path}: experiments: a variant's pipeline file defines no "
                                  "experiments of its own")
    for i, exp in enumerate(config.experiments):
        for j, v in enumerate(exp.variants):
            if v.pipeline is not None and exp.enabled:
                where = f"pipeline config {path}: experiments[{i}].variants[{j}].pipeline"
                target = config.variant_paths()[v.pipeline]
                if not target.is_file():
                    raise PipelineConfigError(f"{where}: no such file {target}")
                try:
                    load_config(target, nested=True)
                except PipelineConfigError as exc:
                    raise PipelineConfigError(f"{where}: {exc}") from exc
    return config


def _where(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("int", "literal['rest']", "function-after[_quota(), SourceConfig]",
                      "function-after[_slots(), RetrievalConfig]"):
            continue  # pydantic's union / validator branch names say nothing to a reader
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def _component_class(role: str, type_: str, base: type, where: str) -> type:
    """``where`` is "pipeline config <path>: retrieval.sources[1]" (the prefix of every error)."""
    package = f"services.components.{role}"
    known = sorted(m.name for m in pkgutil.iter_modules(importlib.import_module(package).__path__))
    if type_ not in known:
        raise PipelineConfigError(f"{where}.type: unknown {role[:-1].replace('_', ' ')} {type_!r} "
                                  f"(known: {', '.join(known)})")
    cls = getattr(importlib.import_module(f"{package}.{type_}"), "COMPONENT", None)
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise PipelineConfigError(f"{where}.type: {package}.{type_} has no COMPONENT subclass of {base.__name__}")
    return cls


def _build(role: str, spec: _Component, base: type, where: str, bundle: Bundle, live: Any = None):
    cls = _component_class(role, spec.type, base, where)
    try:
        component = cls(spec.label, **spec.options)
    except (TypeError, ValueError) as exc:
        raise PipelineConfigError(f"{where}.options: {exc}") from exc
    missing = [name for name in cls.artifacts if not bundle.has(name)]
    if missing:
        raise PipelineConfigError(f"{where}: {spec.label} needs bundle file(s) {', '.join(missing)}, "
                                  f"which bundle {bundle.version} does not have (rebuild it: make artifacts)")
    try:
        component.load_artifacts(bundle)
    except (BundleError, OSError, ValueError) as exc:
        raise PipelineConfigError(f"{where}: {spec.label} could not load its artifacts: {exc}") from exc
    if live is not None:
        component.attach(live)
    return component


def build_sources(cfg: RetrievalConfig, bundle: Bundle, live: Any = None) -> list[CandidateSource]:
    """``live``: the events loop's state (:mod:`services.live`) for sources that read it."""
    return [_build("sources", s, CandidateSource, f"{cfg._origin}: retrieval.sources[{i}]", bundle, live)
            for i, s in enumerate(cfg.sources)]


def build_filters(cfg: RetrievalConfig, bundle: Bundle) -> list[Filter]:
    return [_build("filters", f, Filter, f"{cfg._origin}: retrieval.filters[{i}]", bundle)
            for i, f in enumerate(cfg.filters)]


def build_scorer(cfg: RankingConfig, bundle: Bundle) -> Scorer:
    return _build("scorers", cfg.scorer, Scorer, f"{cfg._origin}: ranking.scorer", bundle)
