"""Online-store backends: chosen by FEAST_ONLINE_TYPE (default from REDIS_URL), one class per
store, and the same choice for Feast's writes and the reader's reads. No store needed."""

from __future__ import annotations

import subprocess
import sys

import pytest

from common.settings import REPO_ROOT, FeatureStoreSettings
from feature_store.backends import (
    BACKENDS,
    OnlineBackend,
    OnlineStoreConfigError,
    RedisBackend,
    SqliteBackend,
    backend_class,
    online_store_type,
)
from feature_store.feast_store import repo_config

URL = "redis://127.0.0.1:6399/1"


def test_type_defaults_to_redis_only_when_redis_url_is_set():
    assert online_store_type(FeatureStoreSettings(REDIS_URL=URL)) == "redis"
    assert online_store_type(FeatureStoreSettings(REDIS_URL=None)) == "sqlite"
    assert online_store_type(FeatureStoreSettings(REDIS_URL=URL, online_type="")) == "redis"  # empty = unset
    assert backend_class(FeatureStoreSettings(REDIS_URL=URL)) is RedisBackend
    assert backend_class(FeatureStoreSettings(REDIS_URL=URL, online_type="sqlite")) is SqliteBackend


def test_every_backend_is_an_online_backend_registered_under_its_type():
    assert set(BACKENDS) == {"redis", "sqlite"}
    for kind, cls in BACKENDS.items():
        assert issubclass(cls, OnlineBackend) and cls.type == kind


def test_unknown_type_is_one_line_naming_the_setting(monkeypatch):
    monkeypatch.setenv("FEAST_ONLINE_TYPE", "memcached")
    settings = FeatureStoreSettings()
    with pytest.raises(OnlineStoreConfigError) as info:
        online_store_type(settings)
    message = str(info.value)
    assert "\n" not in message and message.startswith("FEAST_ONLINE_TYPE='memcached'") and "redis, sqlite" in message
    with pytest.raises(OnlineStoreConfigError):
        repo_config(settings)  # Feast is never configured with it either


def test_redis_type_needs_a_redis_url():
    with pytest.raises(OnlineStoreConfigError, match="FEAST_ONLINE_TYPE=redis needs REDIS_URL"):
        online_store_type(FeatureStoreSettings(REDIS_URL=None, online_type="redis"))


def test_feast_writes_where_the_type_says(tmp_path):
    forced = repo_config(FeatureStoreSettings(data_dir=tmp_path, REDIS_URL=URL, online_type="sqlite"))
    assert forced.online_store.type == "sqlite" and forced.online_store.path == str(tmp_path / "online.db")
    redis = repo_config(FeatureStoreSettings(data_dir=tmp_path, REDIS_URL=URL, online_type="redis"))
    assert redis.online_store.type == "redis" and redis.online_store.connection_string == "127.0.0.1:6399,db=1"


def test_reader_and_store_modules_have_no_import_cycle():
    # store -> reader -> feast_store -> backends: importing the reader must not pull in the store
    code = ("import sys, feature_store.reader; assert 'feature_store.store' not in sys.modules; "
            "assert 'feast' not in sys.modules and 'redis' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, check=True, timeout=60)


def test_cli_refuses_an_unknown_type_in_one_line(monkeypatch):
    from typer.testing import CliRunner

    from feature_store.__main__ import app

    monkeypatch.setenv("FEAST_ONLINE_TYPE", "memcached")
    result = CliRunner().invoke(app, ["materialize"])
    assert result.exit_code == 1
    assert result.output.strip().startswith("FEAST_ONLINE_TYPE='memcached' is not a known online store type")
