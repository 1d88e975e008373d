"""The configuration reference, generated from the settings models.

``python -m common.config_doc`` prints the markdown table that README.md carries between the
``<!-- config:begin -->`` / ``<!-- config:end -->`` markers; ``--write`` rewrites that block.
tests/common/test_config_doc.py fails when README.md or .env.example drift from the models.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from dataclasses import dataclass

from pydantic_settings import BaseSettings

from common.settings import REPO_ROOT

# Every settings model of the project, in the order the reference lists them.
SETTINGS_MODELS = (
    "common.settings:ArtifactSettings",
    "common.settings:FeatureStoreSettings",
    "services.retrieval.settings:RetrievalSettings",
    "services.ranking.settings:RankingSettings",
    "services.gateway.settings:GatewaySettings",
    "services.events.settings:EventsSettings",
    "services.precompute.settings:PrecomputeSettings",
    "common.telemetry:TelemetrySettings",
)
BEGIN, END = "<!-- config:begin -->", "<!-- config:end -->"


@dataclass(frozen=True)
class Var:
    component: str
    name: str
    default: str
    description: str


def _load(path: str) -> type[BaseSettings]:
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)


def _default(field) -> str:
    value = field.get_default(call_default_factory=True)
    if value is None:
        return "(unset)"
    text = str(value)
    root = str(REPO_ROOT)
    return text.replace(root + "/", "").replace(root, ".") if text.startswith(root) else text


def variables() -> Iterator[Var]:
    seen: set[str] = set()
    for path in SETTINGS_MODELS:
        model = _load(path)
        prefix = model.model_config.get("env_prefix", "")
        for name, field in model.model_fields.items():
            alias = field.validation_alias
            env = getattr(alias, "choices", [alias])[0] if alias is not None else f"{prefix}{name}"
            env = str(env).upper()
            if env in seen:  # shared fields (REDIS_URL, ARTIFACTS_DIR) are listed once
                continue
            seen.add(env)
            yield Var(model.__name__, env, _default(field), field.description or "")


def table() -> str:
    rows = ["| variable | default | component | meaning |", "|---|---|---|---|"]
    rows += [f"| `{v.name}` | `{v.default}` | {v.component} | {v.description} |" for v in variables()]
    return "\n".join(rows)


def main(argv: list[str]) -> int:
    text = table()
    if "--write" in argv:
        readme = REPO_ROOT / "README.md"
        body = readme.read_text()
        head, _, rest = body.partition(BEGIN)
        _, _, tail = rest.partition(END)
        readme.write_text(f"{head}{BEGIN}\n{text}\n{END}{tail}")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
