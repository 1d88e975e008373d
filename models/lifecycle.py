"""The bundle lifecycle behind ``python -m models list | publish | rollback | canary | promote | abort |
shadow``: every switch validated.

Before :class:`common.deployments.Deployments` points ``current`` anywhere, the target bundle
must pass, in this order (the first failure refuses the action and nothing is switched):

1. it exists under the artifacts root (else the known versions are listed);
2. every file matches its manifest sha256 (:func:`common.bundle.load_bundle`);
3. the validation gate (:func:`models.pipeline.gate`: two-tower recall@100 above popularity's);
4. it fits the **live Feast registry** (``FEAST_*`` settings): every feature view the manifest
   records exists there with the same entity and the same features and types, and every
   ``view:feature`` the ranker reads is one of them. A bundle trained on other definitions
   than the ones the services read would be served wrong features.

``rollback`` checks the previous version the same way (a registry that moved on since makes an
old bundle unservable too), ``canary`` and ``shadow`` check the version they start, and
``promote`` checks the canary again (the registry may have moved while it ran). ``abort`` and
``shadow --off`` stop something and check nothing. The actions land in the deployment log with
who and why.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from common.bundle import Bundle, BundleError, load_bundle, metric
from common.deployments import CURRENT, PREVIOUS, Action, Deployments, Rollout
from common.settings import FeatureStoreSettings


class LifecycleError(RuntimeError):
    """An action was refused; the message says why and nothing was switched."""


def registry_views(settings: FeatureStoreSettings) -> dict[str, dict]:
    """The live registry's feature views as ``{view: {"entity", "features": [[name, type]]}}``."""
    from feature_store.feast_store import feature_store

    registry = Path(settings.data_dir) / "registry.db"
    if not registry.is_file():
        raise LifecycleError(f"no Feast registry at {registry}: run `make feature-apply` (or `make artifacts`) first")
    store = feature_store(settings)
    return {fv.name: {"entity": fv.entities[0] if fv.entities else None,
                      "features": [[f.name, str(f.dtype)] for f in fv.features]}
            for fv in store.list_feature_views()}


def registry_problems(bundle: Bundle, registry: dict[str, dict]) -> list[str]:
    """What in ``bundle``'s manifest the live registry does not serve (empty: it fits)."""
    out = []
    views = bundle.manifest.get("feature_views")
    if not views:
        return [f"bundle {bundle.version} records no feature_views (built by older code): rebuild it"]
    for name, spec in sorted(views.items()):
        live = registry.get(name)
        if live is None:
            out.append(f"feature view {name} is not in the live registry")
            continue
        if spec.get("entity") != live["entity"]:
            out.append(f"feature view {name}: entity {spec.get('entity')} in the bundle, {live['entity']} live")
        want = [list(f) for f in spec["features"]]
        if want != live["features"]:
            out.append(f"feature view {name}: features {want} in the bundle, {live['features']} live")
    served = {f"{v}:{f}" for v, spec in registry.items() for f, _ in spec["features"]}
    for feat in bundle.manifest.get("ranker_features", []):
        src = feat.get("source", "")
        if src.startswith("cross:"):
            continue  # computed from retrieval and the features above, not read
        if src not in served:
            out.append(f"ranker input {feat.get('name')} reads {src}, which the live registry does not serve")
    return out


def check(root: Path, version: str, settings: FeatureStoreSettings) -> Bundle:
    """The bundle ``version`` if it may be served (see the module docstring), else LifecycleError."""
    from models.pipeline import GateError, gate

    deployments = Deployments(root)
    if not (root / version).is_dir():
        known = ", ".join(b.version for b in deployments.versions()) or "none"
        raise LifecycleError(f"no bundle version {version!r} under {root} (known: {known})")
    try:
        bundle = load_bundle(root / version)  # every sha256
        gate(bundle.manifest["metrics"])
    except (BundleError, GateError, KeyError) as exc:
        raise LifecycleError(f"{version} refused: {exc}") from exc
    problems = registry_problems(bundle, registry_views(settings))
    if problems:
        raise LifecycleError(f"{version} refused: it does not fit the live Feast registry: " + "; ".join(problems))
    return bundle


def publish(root: Path, version: str, settings: FeatureStoreSettings, *, why: str, actor: str | None = None) -> Action:
    check(root, version, settings)
    try:
        return Deployments(root).switch(version, action="publish", why=why, actor=actor)
    except BundleError as exc:
        raise LifecycleError(str(exc)) from exc


def rollback(root: Path, settings: FeatureStoreSettings, *, why: str, actor: str | None = None) -> Action:
    deployments = Deployments(root)
    target = deployments.pointer(PREVIOUS)
    if target is None:
        raise LifecycleError("no previous version to roll back to (nothing was ever replaced)")
    check(root, target, settings)
    try:
        return deployments.rollback(why=why, actor=actor)
    except BundleError as exc:
        raise LifecycleError(str(exc)) from exc


def _run(action):
    try:
        return action()
    except BundleError as exc:  # what Deployments refuses (no such canary, already current...)
        raise LifecycleError(str(exc)) from exc


def canary(root: Path, version: str, percent: float, settings: FeatureStoreSettings, *, why: str,
           actor: str | None = None) -> Action:
    check(root, version, settings)
    return _run(lambda: Deployments(root).start_canary(version, percent, why=why, actor=actor))


def promote(root: Path, settings: FeatureStoreSettings, *, why: str, actor: str | None = None) -> Action:
    deployments = Deployments(root)
    state = _run(deployments.rollout)
    if state.canary is None:
        raise LifecycleError("no canary to promote (start one with `canary VERSION --percent P`)")
    check(root, state.canary.version, settings)
    return _run(lambda: deployments.promote(why=why, actor=actor))


def abort(root: Path, *, why: str, actor: str | None = None) -> Action:
    return _run(lambda: Deployments(root).abort(why=why, actor=actor))


def shadow(root: Path, version: str | None, settings: FeatureStoreSettings, *, why: str,
           actor: str | None = None) -> Action:
    if version is not None:
        check(root, version, settings)
    return _run(lambda: Deployments(root).set_shadow(version, why=why, actor=actor))


def rollout(root: Path) -> Rollout:
    return _run(Deployments(root).rollout)


@dataclass(frozen=True)
class Row:
    version: str
    created: str
    role: str  # "current", "previous", "canary 10%", "shadow" (comma-separated) or ""
    recall100: float | None
    ranked_ndcg10: float | None


def rows(root: Path) -> list[Row]:
    deployments = Deployments(root)
    roles: dict[str | None, list[str]] = {}
    for name in (CURRENT, PREVIOUS):
        roles.setdefault(deployments.pointer(name), []).append(name)
    state = _run(deployments.rollout)
    if state.canary is not None:
        roles.setdefault(state.canary.version, []).append(f"canary {state.canary.percent:g}%")
    if state.shadow is not None:
        roles.setdefault(state.shadow, []).append("shadow")

    def m(b: Bundle, dotted: str) -> float | None:
        try:
            return float(metric(b.manifest, dotted))
        except (KeyError, TypeError, ValueError):
            return None

    return [Row(b.version, b.manifest.get("created_at", ""), ", ".join(roles.get(b.version, [])),
                m(b, "retrieval.recall@100"), m(b, "ranked.ndcg@10")) for b in deployments.versions()]
