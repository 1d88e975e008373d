"""``models run --events``: logged events folded into the training interactions (real ml-100k)."""

from __future__ import annotations

import json

import pytest

from models import data as D
from models.config import PipelineConfig


@pytest.fixture(scope="module")
def raw_dir():
    cfg = PipelineConfig()
    if not (cfg.raw_dir / "ml-100k.inter").is_file():
        pytest.fail("no data/raw/ml-100k: run `make data` (make test does it first)")
    return cfg.raw_dir


def _write(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_events_of_known_users_on_known_items_become_their_latest_interactions(raw_dir, tmp_path):
    now = 1_796_000_000  # 2026: later than every MovieLens rating
    rows = [
        {"event_id": "e1", "user_id": "1", "item_id": 50, "type": "click", "ts": now, "value": None},
        {"event_id": "e1", "user_id": "1", "item_id": 50, "type": "click", "ts": now, "value": None},  # replayed
        {"event_id": "e2", "user_id": "2", "item_id": 100, "type": "rating", "ts": now + 1, "value": 2.0},
        {"event_id": "e3", "user_id": "3", "item_id": 100, "type": "impression", "ts": now, "value": None},
        {"event_id": "e4", "user_id": "somebody", "item_id": 100, "type": "click", "ts": now, "value": None},
        {"event_id": "e5", "user_id": "4", "item_id": 999999, "type": "purchase", "ts": now, "value": None},
    ]
    base = D.load(raw_dir)
    ds = D.load(raw_dir, events=_write(tmp_path / "events.jsonl", rows))
    assert len(ds.interactions) == len(base.interactions) + 2
    assert ds.events["events"] == 5 and ds.events["folded"] == 2
    assert ds.events["dropped"] == {"unknown_user": 1, "unknown_item": 1, "not_an_interaction": 1}
    u1 = ds.interactions[ds.interactions["user_id"] == 1]
    latest = u1[u1["ts"] == u1["ts"].max()]
    assert latest[["item_id", "rating", "split"]].values.tolist() == [[50, 4.0, "test"]]
    u2 = ds.interactions[(ds.interactions["user_id"] == 2) & (ds.interactions["ts"] == now + 1)]
    assert u2["rating"].tolist() == [2.0]  # an explicit rating keeps its value


def test_an_events_file_without_the_columns_is_refused(raw_dir, tmp_path):
    with pytest.raises(ValueError, match="lacks column"):
        D.load(raw_dir, events=_write(tmp_path / "bad.jsonl", [{"user_id": "1", "item_id": 5}]))
    with pytest.raises(FileNotFoundError, match="services.events export"):
        D.load(raw_dir, events=tmp_path / "missing.jsonl")
