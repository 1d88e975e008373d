"""REDIS_URL forms -> what the clients and Feast's online store are given (no server needed;
the clients themselves are exercised on real servers and a real cluster by the feature store
contract tests and tests/integration/test_redis_cluster.py)."""

from __future__ import annotations

import pytest

from common.redis_client import RedisTarget, feast_online_store, parse_redis_url


@pytest.mark.parametrize(("url", "want"), [
    ("redis://127.0.0.1:6390/2", RedisTarget("standalone", (("127.0.0.1", 6390),), 2)),
    ("redis://redis", RedisTarget("standalone", (("redis", 6379),), 0)),
    ("rediss://u:p%40ss@h:1/0", RedisTarget("standalone", (("h", 1),), 0, "u", "p@ss", True)),
    ("redis://:s3cret@redis:6379?db=3", RedisTarget("standalone", (("redis", 6379),), 3, None, "s3cret")),
    ("redis+cluster://a:7000,b:7001,c", RedisTarget("cluster", (("a", 7000), ("b", 7001), ("c", 6379)))),
    ("rediss+cluster://:pw@a:7000,b:7001/0", RedisTarget("cluster", (("a", 7000), ("b", 7001)), 0, None, "pw", True)),
    ("redis+sentinel://s1:26379,s2/mymaster/1",
     RedisTarget("sentinel", (("s1", 26379), ("s2", 26379)), 1, master="mymaster")),
])
def test_url_forms(url, want):
    assert parse_redis_url(url) == want


@pytest.mark.parametrize(("url", "says"), [
    ("http://localhost:6379", "scheme must be one of"),
    ("localhost:6379", "must look like"),
    ("redis://a:1,b:2", "several hosts need redis+cluster://"),
    ("redis+cluster://a:1,b:2/3", "database 0 only"),
    ("redis+sentinel://s1:26379", "names the primary"),
    ("redis://h:notaport/0", "bad port"),
    ("redis://h:1/zero", "must be a number"),
    ("redis+cluster://", "names no host"),
])
def test_bad_urls_are_refused_naming_the_setting(url, says):
    with pytest.raises(ValueError, match="REDIS_URL") as err:
        parse_redis_url(url)
    assert says in str(err.value)


def test_feast_online_store_fields():
    assert feast_online_store("redis://127.0.0.1:6390/2") == {
        "redis_type": "redis", "connection_string": "127.0.0.1:6390,db=2"}
    assert feast_online_store("redis+cluster://:pw@a:7000,b:7001") == {
        "redis_type": "redis_cluster", "connection_string": "a:7000,b:7001,skip_full_coverage_check=true,password=pw"}
    assert feast_online_store("rediss+sentinel://u:p@s1:26379/primary/0") == {
        "redis_type": "redis_sentinel", "sentinel_master": "primary",
        "connection_string": "s1:26379,db=0,username=u,password=p,ssl=true"}


def test_the_password_never_shows_in_the_redacted_form():
    for url in ("redis://:s3cret@h:1/0", "redis+cluster://u:s3cret@a:1,b:2", "redis+sentinel://:s3cret@s:1/m/0"):
        text = parse_redis_url(url).redacted()
        assert "s3cret" not in text and "***" in text
    assert parse_redis_url("redis+cluster://a:1,b:2").redacted() == "redis+cluster://a:1,b:2"
