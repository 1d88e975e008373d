"""``models.experiment_report``: CTR per variant from a real Redis's exposure log and event stream.

Entries are written with the gateway's and the consumer's own field functions
(:meth:`ExposureLog.fields`, :meth:`Event.fields`) into a database of its own in the session's
Redis; the statistics are checked against published values (Wilson; Newcombe 1998, table II;
R's ``prop.test(correct=FALSE)``).
"""

from __future__ import annotations

import io
import json
import math
import random
import time
import uuid
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis

from common.net import free_port
from common.realtime import EXPOSURES, STREAM, Event
from models import experiment_report as R
from services.events.export import export
from services.gateway.exposures import ExposureLog

DB = 9  # a database of its own in the session's Redis
T0 = 1_700_000_000.0
W = R.WINDOW_S


def db_url(url: str, db: int) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{db}"))


@pytest.fixture()
def client(redis_url):
    c = redis.Redis.from_url(db_url(redis_url, DB), socket_timeout=5.0)
    c.flushdb()
    yield c
    c.flushdb()
    c.close()


class Log:
    """Writes exposures and events the way the gateway does (pipelined XADD of the same fields)."""

    def __init__(self, client) -> None:
        self.pipe = client.pipeline(transaction=False)
        self.exposure_fields: list[dict] = []

    def expose(self, user, items, bucket, ts, *, fallback="", cached=False) -> None:
        fields = ExposureLog.fields((uuid.uuid4().hex, str(user), list(items), "v1", fallback, cached, bucket, ts))
        self.exposure_fields.append(fields)
        self.pipe.xadd(EXPOSURES, fields)

    def event(self, user, item, ts, *, type="click", event_id=None) -> None:
        ev = Event(event_id or uuid.uuid4().hex, str(user), int(item), type, ts, received=ts)
        self.pipe.xadd(STREAM, ev.fields())

    def flush(self) -> None:
        self.pipe.execute()


# -- statistics against published values ----------------------------------------------------------

def test_wilson_known_values():
    lo, hi = R.wilson(10, 100)
    assert (round(lo, 4), round(hi, 4)) == (0.0552, 0.1744)
    lo, hi = R.wilson(0, 50)
    assert lo == 0.0 and hi == pytest.approx(1.959964 ** 2 / (50 + 1.959964 ** 2), abs=1e-6)
    assert all(math.isnan(x) for x in R.wilson(0, 0))  # no trial, no interval


@pytest.mark.parametrize(("k1", "n1", "k2", "n2", "lo", "hi"), [
    # Newcombe (1998) table II, method 10; the difference is k2/n2 - k1/n1
    (48, 80, 56, 70, 0.0524, 0.3339),
    (3, 10, 9, 10, 0.1705, 0.8090),
    (0, 29, 5, 56, -0.0381, 0.1926),
    (0, 10, 0, 10, -0.2775, 0.2775),
    (0, 20, 10, 10, 0.6791, 1.0000),
])
def test_newcombe_known_values(k1, n1, k2, n2, lo, hi):
    got = R.newcombe_diff(k1, n1, k2, n2)
    assert (round(got[0], 4), round(got[1], 4)) == (lo, hi)


def test_two_proportion_z_matches_prop_test():
    z, p = R.two_proportion_z(10, 100, 20, 100)  # prop.test(c(10, 20), c(100, 100), correct = FALSE)
    assert z * z == pytest.approx(3.9216, abs=1e-4) and p == pytest.approx(0.04767, abs=1e-5)
    assert R.two_proportion_z(0, 10, 0, 20) == (0.0, 1.0)


def test_parse_bucket():
    assert R.parse_bucket("ranker_depth:wide,i2i:off") == {"ranker_depth": "wide", "i2i": "off"}
    assert R.parse_bucket(" a : x , junk, b:, :y, a:z") == {"a": "x"}
    assert R.parse_bucket("") == {}


# -- reports from Redis ---------------------------------------------------------------------------

def test_hand_computed_report(client):
    """control: 100 exposures, 10 clicked; wide: 100 exposures, 20 clicked (plus extra clicks that
    must not change the binomial counts), next to exposures of other experiments and of none."""
    log = Log(client)
    for i in range(100):
        ts = T0 + i
        log.expose(f"c{i}", [10, 11, 12], "i2i:off,ranker_depth:control", ts, fallback="popular" if i < 5 else "",
                   cached=i < 20)
        log.expose(f"w{i}", [20, 21, 22, 23], "ranker_depth:wide,i2i:on", ts)
        log.expose(f"n{i}", [30], "", ts)  # in no experiment
        log.expose(f"o{i}", [40], "other:x", ts)  # in another experiment
        if i < 10:
            log.event(f"c{i}", 12, ts + 60)  # position 2
        if i < 20:
            log.event(f"w{i}", 20, ts + 60)  # position 0
        if i < 3:  # a second item of the same exposure: one clicked exposure, two item clicks
            log.event(f"w{i}", 23, ts + 90)  # position 3
            log.event(f"w{i}", 20, ts + 95)  # the same item again: no new item click
        log.event(f"n{i}", 30, ts + 60)  # to an exposure outside the experiment
        log.event(f"c{i}", 10, ts + 30, type="view")  # not a click
    log.event("c0", 12, T0 + 61, event_id="dup")
    log.event("c0", 12, T0 + 62, event_id="dup")  # the same event id twice: one click
    log.event("nobody", 10, T0 + 10)  # a user without exposures
    log.flush()

    r = R.report("ranker_depth", client=client)
    assert r.control == "control" and [v.variant for v in r.variants] == ["control", "wide"]
    ctl, wide = r.variants
    assert (ctl.exposures, ctl.clicked, ctl.item_clicks, ctl.users) == (100, 10, 10, 100)
    assert (wide.exposures, wide.clicked, wide.item_clicks, wide.users) == (100, 20, 23, 100)
    assert ctl.ctr == 0.10 and wide.ctr == 0.20
    assert (round(ctl.ctr_ci[0], 4), round(ctl.ctr_ci[1], 4)) == (0.0552, 0.1744)
    assert ctl.positions == {2: 10} and ctl.mean_position == 2.0
    assert wide.positions == {0: 20, 3: 3} and wide.mean_position == pytest.approx(9 / 23)
    assert (ctl.fallback, ctl.fallback_share, ctl.cached, ctl.cached_share) == (5, 0.05, 20, 0.2)
    assert (wide.fallback, wide.cached) == (0, 0)

    (c,) = r.comparisons
    assert (c.variant, c.control) == ("wide", "control")
    assert c.diff == pytest.approx(0.10) and c.relative_lift == pytest.approx(1.0)
    assert c.diff_ci == pytest.approx(R.newcombe_diff(10, 100, 20, 100))
    assert c.p_value == pytest.approx(0.04767, abs=1e-5) and c.z > 0
    assert (round(c.diff_ci[0], 4), round(c.diff_ci[1], 4)) == (0.0001, 0.1995)  # just excludes 0, as p < 0.05
    assert c.significant

    # 10 + 20 + 3 * 2 + the "dup" click (once) to the experiment, 100 to "no experiment", 1 to nobody's
    assert (r.clicks, r.clicks_attributed, r.clicks_elsewhere, r.clicks_unattributed) == (138, 37, 100, 1)
    assert r.exposures_total == 400 and r.exposures_skipped == 0 and r.users_in_several_variants == 0
    assert r.experiments_seen == ("i2i", "other", "ranker_depth")

    # the other experiment of the same buckets; explicit control
    r2 = R.report("i2i", client=client, control="on")
    assert r2.control == "on" and [v.variant for v in r2.variants] == ["on", "off"]
    assert r2.comparisons[0].diff == pytest.approx(-0.10)

    text = R.render(r)
    assert "10.00 [5.52, 17.44]" in text and "+10.00 [+0.01, +19.95]" in text and "0.048" in text
    assert "\x1b[" not in text
    d = r.to_dict()
    json.dumps(d, allow_nan=False)
    assert d["variants"][1]["positions"] == {"0": 20, "3": 3} and d["comparisons"][0]["significant"] is True


def test_attribution_window_edges(client):
    log = Log(client)
    t = T0 + 10_000
    log.expose("u", [1, 2, 3, 4], "exp:a", t)
    log.expose("v", [1], "exp:a", t)  # another user, never clicks
    log.event("u", 1, t - 1)  # before the exposure
    log.event("u", 1, t)  # at the exposure's own ts: not after it
    log.event("u", 2, t + W + 0.5)  # after the window
    log.event("u", 9, t + 10)  # an item that was not shown
    log.event("u", 1, t + 5)  # two clicks on one item of one exposure ...
    log.event("u", 1, t + 6)
    log.event("u", 3, t + W)  # ... and one on the window's edge (included)
    log.expose("u", [4], "", t + 100)  # a later exposure outside the experiment with item 4:
    log.event("u", 4, t + 200)  # the click is its, not the earlier exposure's
    log.event("u", 4, t + 50)  # before that later exposure: the experiment's
    log.flush()

    r = R.report("exp", client=client)
    (a,) = r.variants
    assert (a.exposures, a.clicked, a.item_clicks, a.users) == (2, 1, 3, 2)
    assert a.positions == {0: 1, 2: 1, 3: 1}
    assert r.comparisons == ()
    assert (r.clicks, r.clicks_attributed, r.clicks_elsewhere, r.clicks_unattributed) == (9, 4, 1, 4)

    r = R.report("exp", client=client, window_s=60)
    assert (r.variant("a").clicked, r.variant("a").item_clicks) == (1, 2)  # the edge click is out now


def test_latest_exposure_with_the_item_wins(client):
    log = Log(client)
    log.expose("u", [1, 2], "exp:a", T0)
    log.expose("u", [3], "exp:b", T0 + 10)  # later, without item 1: skipped over
    log.expose("u", [2], "exp:b", T0 + 20)  # later, with item 2: takes the click on 2
    log.event("u", 1, T0 + 30)
    log.event("u", 2, T0 + 31)
    log.flush()
    r = R.report("exp", client=client)
    assert (r.variant("a").clicked, r.variant("b").clicked, r.variant("b").exposures) == (1, 1, 2)
    assert r.users_in_several_variants == 1


def test_variant_with_zero_clicks(client):
    log = Log(client)
    for i in range(50):
        log.expose(f"a{i}", [1, 2], "exp:control", T0 + i)
        log.expose(f"b{i}", [1, 2], "exp:treat", T0 + i)
        if i < 5:
            log.event(f"a{i}", 1, T0 + i + 1)
    log.flush()
    r = R.report("exp", client=client)
    b = r.variant("treat")
    assert (b.clicked, b.ctr, b.item_clicks, b.positions) == (0, 0.0, 0, {})
    assert b.ctr_ci[0] == 0.0 and b.ctr_ci[1] == pytest.approx(0.0713, abs=1e-4)
    assert math.isnan(b.mean_position)
    c = r.comparison("treat")
    assert c.diff == pytest.approx(-0.10) and c.relative_lift == pytest.approx(-1.0)
    assert c.diff_ci == pytest.approx(R.newcombe_diff(5, 50, 0, 50)) and 0 < c.p_value < 0.05
    json.dumps(r.to_dict(), allow_nan=False)  # nan mean position -> null
    assert "—" in R.render(r)

    # the control without clicks: no relative lift, still valid JSON
    r = R.report("exp", client=client, control="treat")
    assert math.isnan(r.comparison("control").relative_lift)
    assert r.to_dict()["comparisons"][0]["relative_lift"] is None


def test_control_defaults_to_the_alphabetically_first(client):
    log = Log(client)
    for v in ("zeta", "beta", "gamma"):
        log.expose(f"u-{v}", [1], f"exp:{v}", T0)
    log.flush()
    r = R.report("exp", client=client)
    assert r.control == "beta" and [v.variant for v in r.variants] == ["beta", "gamma", "zeta"]
    with pytest.raises(R.ReportError, match="control variant 'control' has no exposure.*beta, gamma, zeta"):
        R.report("exp", client=client, control="control")


def test_unknown_experiment(client):
    log = Log(client)
    log.expose("u", [1], "ranker_depth:wide,i2i:off", T0)
    log.expose("v", [1], "", T0)
    log.flush()
    with pytest.raises(R.UnknownExperiment) as exc:
        R.report("nope", client=client)
    assert exc.value.experiments == ("i2i", "ranker_depth")
    msg = str(exc.value)
    assert "\n" not in msg and "'nope'" in msg and "2 exposures" in msg and "i2i, ranker_depth" in msg

    client.flushdb()  # no exposure log at all
    with pytest.raises(R.UnknownExperiment, match="among 0 exposures; experiments seen: none"):
        R.report("nope", client=client)


def test_redis_unreachable():
    url = f"redis://127.0.0.1:{free_port()}/0"
    with pytest.raises(R.RedisUnavailable, match="unreachable"):
        R.report("exp", redis_url=url)
    err = io.StringIO()
    assert R.main_report("exp", redis_url=url, out=io.StringIO(), err=err) == R.EXIT_ERROR
    line = err.getvalue()
    assert line.startswith("experiment-report: Redis at redis://127.0.0.1:") and line.count("\n") == 1


def test_since_until(client):
    """The XRANGE bounds come from since / until (a stream id is the append's time): the times
    here are around now, as the gateway's are."""
    T0 = time.time() - 500  # noqa: N806 - the module's T0, moved to now
    log = Log(client)
    log.expose("u", [1], "exp:a", T0 - 100)  # before since: not counted
    log.event("u", 1, T0 - 50)
    log.expose("u", [1], "exp:a", T0 + 100)  # counted
    log.expose("u", [2], "exp:a", T0 + 1000)  # at until: not counted ...
    log.event("u", 2, T0 + 1010)  # ... and its click is not credited to anything counted
    log.expose("x", [3], "exp:a", T0 + 900)  # counted; clicked after until but within the window
    log.event("x", 3, T0 + 1500)
    log.event("u", 1, T0 + 1150)  # the T0 + 100 exposure's window is over: unattributed
    log.event("x", 3, T0 + 2000)  # at until + window: not read
    log.flush()
    r = R.report("exp", client=client, since=T0, until=T0 + 1000, window_s=1000)
    a = r.variant("a")
    assert (a.exposures, a.clicked, a.users) == (2, 1, 2)
    assert r.exposures_total == 2
    assert (r.clicks, r.clicks_attributed, r.clicks_elsewhere, r.clicks_unattributed) == (3, 1, 1, 1)
    with pytest.raises(R.ReportError, match="not after"):
        R.report("exp", client=client, since=T0, until=T0)


def test_files_give_the_same_report(client, tmp_path):
    log = Log(client)
    rng = random.Random(7)
    for i in range(300):
        items = rng.sample(range(100), 5)
        log.expose(f"u{i % 60}", items, f"exp:{'ab'[i % 2]}", T0 + 10 * i)
        if rng.random() < 0.3:
            item = rng.choice(items) if rng.random() < 0.8 else rng.randrange(100)
            log.event(f"u{i % 60}", item, T0 + 10 * i + 5)
    log.flush()
    for fields in log.exposure_fields[:100]:  # rows of a file may hold `items` parsed
        fields["items"] = json.loads(fields["items"])
    exposures = tmp_path / "exposures.jsonl"
    exposures.write_text("".join(json.dumps(f) + "\n" for f in log.exposure_fields))
    from_redis = R.report("exp", client=client)
    for name in ("events.jsonl", "events.parquet"):
        export(client, tmp_path / name)
        got = R.report("exp", events_path=tmp_path / name, exposures_path=exposures)
        assert got == from_redis
    with pytest.raises(R.ReportError, match="no such file"):
        R.report("exp", events_path=tmp_path / "missing.parquet", exposures_path=exposures)


def test_main_report_json_and_table(client, redis_url):
    log = Log(client)
    log.expose("u", [1, 2], "exp:control", T0)
    log.expose("v", [1, 2], "exp:b", T0)
    log.event("v", 2, T0 + 1)
    log.flush()
    url = db_url(redis_url, DB)
    out = io.StringIO()
    assert R.main_report("exp", redis_url=url, since=str(T0), until="2100-01-01T00:00:00Z", as_json=True,
                         out=out) == R.EXIT_OK
    d = json.loads(out.getvalue())
    assert d["experiment"] == "exp" and d["until"] == 4102444800.0
    assert [(v["variant"], v["exposures"], v["clicked"]) for v in d["variants"]] == [("control", 1, 0), ("b", 1, 1)]
    out = io.StringIO()
    assert R.main_report("exp", redis_url=url, out=out) == R.EXIT_OK
    assert "experiment exp" in out.getvalue()
    err = io.StringIO()
    assert R.main_report("exp", redis_url=url, since="yesterday", err=err) == R.EXIT_ERROR
    assert "neither epoch seconds nor an ISO 8601 time" in err.getvalue()


def test_simulated_ab_test_recovers_the_truth(client):
    """4000 exposures per variant, true CTR 0.10 vs 0.15 (fixed seed): each variant's interval
    holds its truth, the difference's excludes 0 and holds 0.05."""
    rng = random.Random(20240607)
    truth = {"control": 0.10, "treat": 0.15}
    log = Log(client)
    n = 0
    for variant, p in truth.items():
        for i in range(4000):
            user, ts = f"{variant}-{i % 1000}", T0 + 4 * W * (i // 1000) + i % 1000  # 4 exposures per user, apart
            items = rng.sample(range(1, 500), 10)
            log.expose(user, items, f"exp:{variant},other:{rng.choice('xy')}", ts)
            if rng.random() < p:
                for _ in range(rng.choice((1, 1, 1, 2, 3))):  # several clicks sometimes: one Bernoulli trial
                    log.event(user, rng.choice(items), ts + rng.uniform(1, W - 1))
            n += 1
            if n % 2000 == 0:
                log.flush()
    log.flush()
    r = R.report("exp", client=client)
    assert [v.exposures for v in r.variants] == [4000, 4000]
    for v in r.variants:
        assert v.ctr_ci[0] < truth[v.variant] < v.ctr_ci[1], v
        assert v.item_clicks >= v.clicked
    c = r.comparison("treat")
    assert c.significant and c.diff_ci[0] > 0 and c.diff_ci[0] < 0.05 < c.diff_ci[1] and c.p_value < 1e-4
    assert r.clicks_elsewhere == r.clicks_unattributed == 0


def test_unparseable_entries_and_other_field_orders(client, redis_url):
    log = Log(client)
    log.expose("u", [1, 2], "exp:a", T0)
    log.flush()
    client.xadd(EXPOSURES, {"user_id": "v", "ts": "nan", "items": "[[1,0]]", "bucket": "exp:a"})  # no finite ts
    client.xadd(EXPOSURES, {"user_id": "w", "ts": str(T0), "items": "[[1,0", "bucket": "exp:a"})  # bad JSON
    client.xadd(EXPOSURES, {"user_id": "x", "ts": str(T0), "items": '{"1": 0}', "bucket": "exp:a"})  # not a list
    client.xadd(EXPOSURES, {"bucket": "exp:a", "ts": str(T0), "items": "[3, 4]", "user_id": "y"})  # other order, bare ids
    client.xadd(STREAM, {"event_id": "e1", "user_id": "u", "item_id": "one", "type": "click", "ts": str(T0 + 1)})
    client.xadd(STREAM, {"type": "click", "ts": str(T0 + 1), "item_id": "2", "user_id": "u", "event_id": "e2"})
    client.xadd(STREAM, {"type": "click", "ts": str(T0 + 1), "item_id": "4", "user_id": "y", "event_id": "e3"})
    r = R.report("exp", client=client)
    a = r.variant("a")
    assert (a.exposures, a.clicked, a.item_clicks, a.positions) == (2, 2, 2, {1: 2})
    assert r.exposures_skipped == 3 and r.clicks == 2

    # a client that decodes answers: the same report; the caller's client keeps its own parsing
    decoding = redis.Redis.from_url(db_url(redis_url, DB), decode_responses=True)
    assert R.report("exp", client=decoding) == r
    assert isinstance(decoding.xrange(EXPOSURES, count=1)[0][1], dict)
    decoding.close()
    assert isinstance(client.xrange(EXPOSURES, count=1)[0][1], dict)

    client.delete(EXPOSURES)
    client.set(EXPOSURES, "not a stream")
    with pytest.raises(R.ReportError, match="WRONGTYPE") as exc:
        R.report("exp", client=client)
    assert not isinstance(exc.value, R.RedisUnavailable)
