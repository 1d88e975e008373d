"""`python -m models run --skip-if-current`: skips a complete current bundle, rebuilds one that
lacks a file the code writes (a bundle from before ``item_neighbors``)."""

from __future__ import annotations

import dataclasses
import json
import shutil

from typer.testing import CliRunner

from common.bundle import load_bundle
from models import pipeline as P
from models.config import PipelineConfig


def _invoke(monkeypatch, tmp_path, bundle_path, drop: str | None):
    from models import __main__ as cli

    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    shutil.copytree(load_bundle(bundle_path).root, artifacts / "v1")
    if drop is not None:  # an older bundle: manifest and folder without that file
        mpath = artifacts / "v1" / "manifest.json"
        manifest = json.loads(mpath.read_text())
        (artifacts / "v1" / manifest["files"].pop(drop)["path"]).unlink()
        mpath.write_text(json.dumps(manifest))
    (artifacts / "current").symlink_to("v1", target_is_directory=True)
    cfg = dataclasses.replace(PipelineConfig(), artifacts_dir=artifacts)
    monkeypatch.setattr(cli, "PipelineConfig", lambda: cfg)
    calls = []

    def fake_run(*args, **kwargs):
        calls.append(1)
        b = load_bundle(bundle_path)
        return b.root, b.manifest

    monkeypatch.setattr(P, "run", fake_run)
    return CliRunner().invoke(cli.app, ["run", "--skip-if-current", "--no-materialize"]), calls


def test_complete_current_bundle_is_skipped(monkeypatch, tmp_path, bundle_path):
    result, calls = _invoke(monkeypatch, tmp_path, bundle_path, None)
    assert result.exit_code == 0, result.output
    assert "skipping" in result.output and not calls


def test_bundle_without_item_neighbors_is_rebuilt(monkeypatch, tmp_path, bundle_path):
    result, calls = _invoke(monkeypatch, tmp_path, bundle_path, "item_neighbors")
    assert result.exit_code == 0, result.output
    assert "lacks item_neighbors" in result.output and calls == [1]
