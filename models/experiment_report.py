"""``python -m models experiment-report NAME``: click-through rate per variant of one experiment,
from the exposure log and the event stream (read-only).

Data (see :mod:`common.realtime` and :mod:`services.gateway.exposures`):

* **exposures** — the entries of :data:`common.realtime.EXPOSURES` (one per ``/recommend`` answer
  that was logged): ``user_id``, ``items`` (JSON list of ``[item_id, position]``), ``fallback``,
  ``cached``, ``ts`` and ``bucket``, a comma-separated list of ``experiment:variant`` pairs
  (``ranker_depth:wide,i2i:off``; empty when the user is in no experiment; a pair without a colon
  is ignored, and for an experiment named twice the first pair counts);
* **clicks** — the events of :data:`common.realtime.STREAM` whose ``type`` is ``click``, each
  event id counted once (as the export does).

Attribution: a click by user U on item I at time t goes to the *latest* exposure of U with
``t - window_s <= ts < t`` (the edge ``t - ts == window_s`` is in, a click at the exposure's own
``ts`` is not) whose items contain I. Every exposure of U is a candidate, whatever its bucket: a
click whose latest such exposure is outside experiment NAME is not credited to NAME (counted in
``clicks_elsewhere``). An exposure is *clicked* when at least one click is attributed to it, however
many there are (one Bernoulli trial per exposure), and an *item click* is a distinct (exposure,
item) pair clicked, whose position (0 = shown first) goes into the variant's position histogram.

Statistics, per variant of NAME:

* CTR = clicked exposures / exposures with a Wilson score interval (``confidence``, default 95 %);
* for every variant other than the control: the difference ``CTR(variant) - CTR(control)`` with
  **Newcombe's hybrid score interval** (method 10 of Newcombe 1998, built from the two Wilson
  intervals; better coverage than the normal "Wald" interval at small counts or CTRs near 0), and
  the two-sided p-value of the pooled **two-proportion z-test** (the chi-square test without
  continuity correction). No correction for several variants is applied (Bonferroni: multiply).

The control is ``control`` when given, else the variant named ``control`` when there is one, else
the alphabetically first variant (there is no experiment config in the repo to give an order).

Exposures answered by a fallback rung (``fallback`` non-empty) stay in the CTR (intention to
treat: the variant's users saw them; leaving them out would bias a variant that falls back more
often) and are reported separately as each variant's ``fallback`` count and share; so are cached
answers.

Time range: ``since`` / ``until`` (epoch seconds, optional) select the exposures counted,
``since <= ts < until``. Clicks with ``since <= t < until + window_s`` are read, so the last
exposures get their whole window, and so are the exposures up to ``until + window_s`` — not
counted, but a click that belongs to one of them is not credited to an earlier one. ``XRANGE``
bounds are derived from those times with :data:`SLACK_S` of margin for clock skew (a stream id is
the time of the append, ``ts`` the time of the answer or of the event).

Caveats: the exposure log is sampled (``GATEWAY_EXPOSURE_SAMPLE_RATE``; an experiment wants 1.0, or
clicks on an answer that was not logged go to an older one that contains the item, or nowhere) and
trimmed (``GATEWAY_EXPOSURE_MAXLEN``); records dropped by a full queue are missing too. The
intervals treat exposures as independent trials, while users are what is randomised: with many
exposures per user they are somewhat too narrow (a per-user / delta-method analysis is the remedy).

Cost: the exposures are indexed per user (timestamps sorted, item ids in flat arrays), and each
click is one ``bisect`` plus a backward walk over that user's exposures inside the window. XRANGE
answers are read without redis-py's per-entry dict (:func:`xrange_pages`) and the cyclic garbage
collector is paused while the index is built. Measured: 1M exposures of 10 items (100k users)
plus 400k events (100k clicks) from a local Redis, end to end in about 14 s and 400 MB.

Use :func:`report` (or :func:`compute` on records already read) for an :class:`ExperimentReport`,
:func:`render` for its table and :func:`main_report` for the command line.
"""

from __future__ import annotations

import gc
import io
import json
import math
import sys
from array import array
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime
from itertools import chain
from pathlib import Path
from statistics import NormalDist
from typing import Any, NamedTuple

import orjson

from common.realtime import EXPOSURES, STREAM

PAGE = 10_000  # entries per XRANGE
WINDOW_S = 1800.0  # default attribution window
SLACK_S = 300.0  # margin of the XRANGE bounds around since / until (clock skew, write delay)
CLICK = "click"

EXIT_OK, EXIT_ERROR = 0, 1


# -- errors ---------------------------------------------------------------------------------------

class ReportError(Exception):
    """The report cannot be made; the message is one line, for the user."""


class UnknownExperiment(ReportError):
    """No exposure of that experiment in the data (``experiments``: the ones that were seen)."""

    def __init__(self, name: str, experiments: Iterable[str], exposures: int) -> None:
        self.name = name
        self.experiments = tuple(sorted(experiments))
        seen = ", ".join(self.experiments) if self.experiments else "none (every bucket is empty)"
        super().__init__(f"no exposure for experiment {name!r} among {exposures} exposures; experiments seen: {seen}")


class RedisUnavailable(ReportError):
    """Redis refused, failed or timed out."""


# -- statistics -----------------------------------------------------------------------------------

def z_value(confidence: float = 0.95) -> float:
    """The two-sided standard normal quantile (1.959964 for 0.95)."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence {confidence} is not between 0 and 1")
    return NormalDist().inv_cdf(0.5 + confidence / 2.0)


def wilson(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion ``k / n``; ``(nan, nan)`` when ``n == 0``."""
    if n <= 0:
        return (math.nan, math.nan)
    z = z_value(confidence)
    p = k / n
    z2 = z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1.0 - p) / n + z2 / (4.0 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def newcombe_diff(k1: int, n1: int, k2: int, n2: int, confidence: float = 0.95) -> tuple[float, float]:
    """Newcombe's hybrid score interval (1998, method 10) of ``k2/n2 - k1/n1``."""
    if n1 <= 0 or n2 <= 0:
        return (math.nan, math.nan)
    p1, p2 = k1 / n1, k2 / n2
    l1, u1 = wilson(k1, n1, confidence)
    l2, u2 = wilson(k2, n2, confidence)
    d = p2 - p1
    return (d - math.sqrt((p2 - l2) ** 2 + (u1 - p1) ** 2), d + math.sqrt((u2 - p2) ** 2 + (p1 - l1) ** 2))


def two_proportion_z(k1: int, n1: int, k2: int, n2: int) -> tuple[float, float]:
    """Pooled two-proportion z-test of ``k2/n2`` vs ``k1/n1`` -> (z, two-sided p-value).

    ``(0.0, 1.0)`` when the pooled proportion is 0 or 1 (no variance: nothing to tell apart)."""
    if n1 <= 0 or n2 <= 0:
        return (math.nan, math.nan)
    pooled = (k1 + k2) / (n1 + n2)
    se = math.sqrt(pooled * (1.0 - pooled) * (1.0 / n1 + 1.0 / n2))
    if se == 0.0:
        return (0.0, 1.0)
    z = (k2 / n2 - k1 / n1) / se
    return (z, math.erfc(abs(z) / math.sqrt(2.0)))


# -- the result -----------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class VariantResult:
    variant: str
    exposures: int
    clicked: int  # exposures with at least one attributed click
    ctr: float  # clicked / exposures
    ctr_ci: tuple[float, float]  # Wilson score interval
    item_clicks: int  # distinct (exposure, item) pairs clicked
    users: int
    fallback: int  # exposures answered by a fallback rung (kept in the CTR)
    cached: int  # exposures answered from the response cache
    positions: dict[int, int] = field(default_factory=dict)  # position -> item clicks

    @property
    def fallback_share(self) -> float:
        return self.fallback / self.exposures if self.exposures else math.nan

    @property
    def cached_share(self) -> float:
        return self.cached / self.exposures if self.exposures else math.nan

    @property
    def mean_position(self) -> float:
        """Mean position (0 = first) of the clicked items; nan without item clicks."""
        n = sum(self.positions.values())
        return sum(p * c for p, c in self.positions.items()) / n if n else math.nan


@dataclass(frozen=True, slots=True)
class Comparison:
    variant: str
    control: str
    diff: float  # CTR(variant) - CTR(control)
    diff_ci: tuple[float, float]  # Newcombe's hybrid score interval
    relative_lift: float  # diff / CTR(control); nan when the control's CTR is 0
    z: float  # pooled two-proportion z statistic
    p_value: float  # two-sided

    @property
    def significant(self) -> bool:
        """The difference's interval excludes 0."""
        lo, hi = self.diff_ci
        return lo > 0.0 or hi < 0.0


@dataclass(frozen=True, slots=True)
class ExperimentReport:
    experiment: str
    control: str
    variants: tuple[VariantResult, ...]  # the control first, then by name
    comparisons: tuple[Comparison, ...]  # one per variant other than the control
    window_s: float
    since: float | None
    until: float | None
    confidence: float
    exposures_total: int  # counted exposures of the period, any experiment or none
    exposures_skipped: int  # entries that do not parse (no user, no ts, bad items)
    clicks: int  # distinct click events read (since <= t < until + window_s)
    clicks_attributed: int  # to an exposure of this experiment in the period
    clicks_elsewhere: int  # to another exposure (other experiments, none, or after until)
    clicks_unattributed: int  # no exposure of that user with that item in the window
    users_in_several_variants: int  # users seen in more than one variant of this experiment
    experiments_seen: tuple[str, ...]

    def variant(self, name: str) -> VariantResult:
        for v in self.variants:
            if v.variant == name:
                return v
        raise KeyError(name)

    def comparison(self, name: str) -> Comparison:
        for c in self.comparisons:
            if c.variant == name:
                return c
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (nan -> None, positions keyed by strings)."""
        out = asdict(self)
        for v, raw in zip(self.variants, out["variants"], strict=True):
            raw.update(fallback_share=v.fallback_share, cached_share=v.cached_share, mean_position=v.mean_position,
                       positions={str(p): c for p, c in sorted(v.positions.items())})
        for c, raw in zip(self.comparisons, out["comparisons"], strict=True):
            raw["significant"] = c.significant
        return _json_safe(out)


def _json_safe(x: Any) -> Any:
    if isinstance(x, float):
        return None if not math.isfinite(x) else x
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_json_safe(v) for v in x]
    return x


# -- the records ----------------------------------------------------------------------------------

class ExposureRow(NamedTuple):
    user_id: str
    ts: float
    items: Any  # the entry's JSON text (str or bytes) or an already parsed list
    bucket: str
    fallback: bool
    cached: bool


class Click(NamedTuple):
    event_id: str
    user_id: str
    item_id: int
    ts: float


def parse_bucket(bucket: str) -> dict[str, str]:
    """``"a:x,b:y"`` -> ``{"a": "x", "b": "y"}`` (blanks stripped; a pair without ``:`` ignored)."""
    out: dict[str, str] = {}
    for part in bucket.split(","):
        exp, sep, variant = part.partition(":")
        exp, variant = exp.strip(), variant.strip()
        if sep and exp and variant:
            out.setdefault(exp, variant)
    return out


def _text(v: Any) -> str:
    if v is None:
        return ""
    return v.decode(errors="replace") if isinstance(v, bytes) else str(v)


def _bytes_exposure(user, ts, items, bucket, fallback, cached) -> ExposureRow | None:
    """An exposure from the raw bytes of its fields (XRANGE); None without a user or a finite ts."""
    if not user or not ts or not items:
        return None
    try:
        t = float(ts)
    except ValueError:
        return None
    if not math.isfinite(t):
        return None
    return ExposureRow(user.decode(errors="replace"), t, items, bucket.decode(errors="replace") if bucket else "",
                       bool(fallback), cached == b"1")


def exposure_row(fields: dict) -> ExposureRow | None:
    """An exposure entry's fields (str or bytes keys and values, as XRANGE or a JSON line gives
    them) -> :class:`ExposureRow`; None when it has no user or no finite ``ts``."""
    get = fields.get
    if isinstance(next(iter(fields), None), bytes):  # XRANGE: the fast path
        return _bytes_exposure(get(b"user_id"), get(b"ts"), get(b"items"), get(b"bucket"), get(b"fallback"),
                               get(b"cached"))
    user, ts, items = get("user_id"), get("ts"), get("items")
    bucket, fallback, cached = get("bucket"), get("fallback"), get("cached")
    if not user or ts is None or items is None:
        return None
    try:
        t = float(ts)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(t):
        return None
    cached_s = _text(cached).strip().lower()
    return ExposureRow(_text(user), t, items, _text(bucket), bool(_text(fallback)),
                       cached_s in ("1", "true") or cached is True)


def click_row(fields: dict) -> Click | None:
    """An event entry's fields -> :class:`Click`, None for another type or an entry that does not
    parse (the consumer's :func:`common.realtime.decode_entry` rules for the fields used here)."""
    get = fields.get
    if isinstance(next(iter(fields), None), bytes):
        typ = get(b"type")
        if typ != b"click":
            return None
        event_id, user, item, ts = get(b"event_id"), get(b"user_id"), get(b"item_id"), get(b"ts")
    else:
        if get("type") != CLICK:
            return None
        event_id, user, item, ts = get("event_id"), get("user_id"), get("item_id"), get("ts")
    if not event_id or not user or item is None or ts is None:
        return None
    try:
        item_id, t = int(item), float(ts)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(t):
        return None
    return Click(_text(event_id), _text(user), item_id, t)


# -- the index and the attribution ----------------------------------------------------------------

class _Index:
    """Every exposure loaded, in flat arrays, with each user's exposures sorted by ``ts``."""

    def __init__(self, name: str, since: float | None, until: float | None) -> None:
        self.name = name
        self.since = -math.inf if since is None else since
        self.until = math.inf if until is None else until
        self.ts = array("d")
        self.variant = array("i")  # code of the variant of NAME; -1: not in NAME or not counted
        self.offsets = array("q", [0])  # exposure e's items are item_ids[offsets[e]:offsets[e + 1]]
        self.item_ids = array("q")
        self.positions = array("q")
        self.users: dict[str, list[int]] = {}
        self.variants: list[str] = []
        self._codes: dict[str, int] = {}
        self._buckets: dict[str, int] = {}  # bucket string -> variant code (-1: not in NAME)
        self.experiments: set[str] = set()
        self.counted = 0  # exposures in [since, until)
        self.skipped = 0
        self.n_exp: list[int] = []  # per variant code
        self.n_fallback: list[int] = []
        self.n_cached: list[int] = []
        self.user_variants: dict[str, set[int]] = {}
        self._sorted: dict[str, tuple[list[float], list[int]]] = {}

    def _code(self, bucket: str) -> int:
        code = self._buckets.get(bucket)
        if code is None:
            pairs = parse_bucket(bucket)
            self.experiments.update(pairs)
            variant = pairs.get(self.name)
            if variant is None:
                code = -1
            else:
                code = self._codes.get(variant)
                if code is None:
                    code = self._codes[variant] = len(self.variants)
                    self.variants.append(variant)
                    self.n_exp.append(0)
                    self.n_fallback.append(0)
                    self.n_cached.append(0)
            self._buckets[bucket] = code
        return code

    def add(self, row: ExposureRow) -> None:
        items = row.items
        try:
            if not isinstance(items, list):
                items = orjson.loads(items)
            if not isinstance(items, list):
                raise TypeError("items is not a list")
            try:  # the gateway's [[item_id, position], ...]: flattened in C
                flat = array("q", chain.from_iterable(items))
            except TypeError:
                flat = None
            if flat is not None and len(flat) == 2 * len(items):
                self.item_ids.extend(flat[0::2])
                self.positions.extend(flat[1::2])
            else:
                ids, pos = [], []
                for k, it in enumerate(items):
                    if isinstance(it, int):  # a bare item id: its index is its position
                        ids.append(it)
                        pos.append(k)
                    else:
                        ids.append(int(it[0]))
                        pos.append(int(it[1]))
                self.item_ids.extend(ids)
                self.positions.extend(pos)
        except (orjson.JSONDecodeError, TypeError, ValueError, IndexError, KeyError, OverflowError):
            del self.item_ids[self.offsets[-1]:]
            del self.positions[self.offsets[-1]:]
            self.skipped += 1
            return
        e = len(self.ts)
        self.ts.append(row.ts)
        self.offsets.append(len(self.item_ids))
        code = -1
        if self.since <= row.ts < self.until:
            self.counted += 1
            code = self._code(row.bucket)
            if code >= 0:
                self.n_exp[code] += 1
                self.n_fallback[code] += row.fallback
                self.n_cached[code] += row.cached
                self.user_variants.setdefault(row.user_id, set()).add(code)
        self.variant.append(code)
        self.users.setdefault(row.user_id, []).append(e)

    def _user(self, user_id: str) -> tuple[list[float], list[int]] | None:
        got = self._sorted.get(user_id)
        if got is None:
            idx = self.users.get(user_id)
            if idx is None:
                return None
            ts = self.ts
            idx.sort(key=ts.__getitem__)  # nearly sorted already (stream order): linear
            got = self._sorted[user_id] = ([ts[e] for e in idx], idx)
        return got

    def attribute(self, user_id: str, item_id: int, t: float, window_s: float) -> tuple[int, int] | None:
        """(exposure, position) the click goes to, or None."""
        got = self._user(user_id)
        if got is None:
            return None
        tsl, idx = got
        lo = t - window_s
        j = bisect_left(tsl, t) - 1  # exposures strictly before t
        item_ids, offsets = self.item_ids, self.offsets
        while j >= 0 and tsl[j] >= lo:
            e = idx[j]
            try:
                k = item_ids.index(item_id, offsets[e], offsets[e + 1])
            except ValueError:
                j -= 1
                continue
            return e, self.positions[k]
        return None


@contextmanager
def _gc_paused() -> Iterator[None]:
    """No cyclic garbage collection while millions of small acyclic objects are made (it would
    scan them again and again: up to 1.5x the time for 1M exposures)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def compute(name: str, exposures: Iterable[ExposureRow | None], clicks: Iterable[Click | None], *,
            window_s: float = WINDOW_S, since: float | None = None, until: float | None = None,
            control: str | None = None, confidence: float = 0.95) -> ExperimentReport:
    """The report from records (``None``: an entry that did not parse); see the module docstring
    for every rule."""
    with _gc_paused():
        return _compute(name, exposures, clicks, window_s=window_s, since=since, until=until, control=control,
                        confidence=confidence)


def _compute(name: str, exposures: Iterable[ExposureRow | None], clicks: Iterable[Click | None], *,
             window_s: float, since: float | None, until: float | None, control: str | None,
             confidence: float) -> ExperimentReport:
    if not window_s >= 0:
        raise ReportError(f"window_s must be >= 0 (got {window_s})")
    z_value(confidence)  # validates it
    index = _Index(name, since, until)
    load_until = math.inf if until is None else until + window_s
    for row in exposures:
        if row is None:
            index.skipped += 1
        elif row.ts < load_until:
            index.add(row)
    if not index.variants:
        raise UnknownExperiment(name, index.experiments, index.counted)
    variants = sorted(index.variants)
    if control is None:
        control = "control" if "control" in index._codes else variants[0]
    elif control not in index._codes:
        raise ReportError(f"control variant {control!r} has no exposure in experiment {name!r}; "
                          f"variants: {', '.join(variants)}")

    lo_t = -math.inf if since is None else since
    seen: set[str] = set()
    clicked: set[int] = set()
    item_clicked: set[tuple[int, int]] = set()
    nv = len(index.variants)
    n_clicked, n_items = [0] * nv, [0] * nv
    pos_hist: list[dict[int, int]] = [{} for _ in range(nv)]
    n_clicks = attributed = elsewhere = unattributed = 0
    for c in clicks:
        if c is None or not lo_t <= c.ts < load_until or c.event_id in seen:
            continue
        seen.add(c.event_id)
        n_clicks += 1
        hit = index.attribute(c.user_id, c.item_id, c.ts, window_s)
        if hit is None:
            unattributed += 1
            continue
        e, pos = hit
        code = index.variant[e]
        if code < 0:
            elsewhere += 1
            continue
        attributed += 1
        if e not in clicked:
            clicked.add(e)
            n_clicked[code] += 1
        if (e, c.item_id) not in item_clicked:
            item_clicked.add((e, c.item_id))
            n_items[code] += 1
            pos_hist[code][pos] = pos_hist[code].get(pos, 0) + 1

    users = [0] * nv
    several = 0
    for codes in index.user_variants.values():
        several += len(codes) > 1
        for code in codes:
            users[code] += 1

    def result(v: str) -> VariantResult:
        c = index._codes[v]
        n, k = index.n_exp[c], n_clicked[c]
        return VariantResult(v, n, k, k / n, wilson(k, n, confidence), n_items[c], users[c],
                             index.n_fallback[c], index.n_cached[c], dict(sorted(pos_hist[c].items())))

    ctl = result(control)
    others = [result(v) for v in variants if v != control]
    comparisons = []
    for v in others:
        z, p = two_proportion_z(ctl.clicked, ctl.exposures, v.clicked, v.exposures)
        diff = v.ctr - ctl.ctr
        comparisons.append(Comparison(
            v.variant, control, diff, newcombe_diff(ctl.clicked, ctl.exposures, v.clicked, v.exposures, confidence),
            diff / ctl.ctr if ctl.ctr > 0 else math.nan, z, p))
    return ExperimentReport(
        experiment=name, control=control, variants=(ctl, *others), comparisons=tuple(comparisons),
        window_s=float(window_s), since=since, until=until, confidence=confidence,
        exposures_total=index.counted, exposures_skipped=index.skipped, clicks=n_clicks,
        clicks_attributed=attributed, clicks_elsewhere=elsewhere, clicks_unattributed=unattributed,
        users_in_several_variants=several, experiments_seen=tuple(sorted(index.experiments)))


# -- sources --------------------------------------------------------------------------------------

def _stream_id(seconds: float | None, default: str) -> str:
    if seconds is None or not math.isfinite(seconds):
        return default
    return f"{max(0, math.floor(seconds * 1000))}-0"


def _redacted(url: str) -> str:
    from common.redis_client import parse_redis_url

    try:
        return parse_redis_url(url).redacted()
    except ValueError:
        return "<unparseable url>"


def _identity(response, **options):
    return response


def _raw(client, key: str):
    """A client on the connection pool of ``key``'s server whose XRANGE answers are left as Redis
    sent them (``[[id, [field, value, ...]], ...]``: no dict per entry, 2-3x faster to read); the
    caller's client is not changed."""
    from common.redis_client import node_client_for

    raw = node_client_for(client, key)
    raw.set_response_callback("XRANGE", _identity)
    return raw


def xrange_pages(client, key: str, start: str = "-", end: str = "+", count: int = PAGE) -> Iterator[list]:
    """Every entry of ``key`` between the stream ids ``start`` and ``end`` as its flat field list
    ``[field, value, ...]`` (bytes, or str for a client that decodes), ``count`` a page (read-only)."""
    raw = _raw(client, key)
    cursor = start
    while True:
        page = raw.xrange(key, min=cursor, max=end, count=count)
        for _, fields in page:
            yield fields
        if len(page) < count:
            return
        last = page[-1][0]
        cursor = "(" + (last.decode() if isinstance(last, bytes) else last)


# the orders ExposureLog.fields and Event.fields write: read by index when an entry has it
_EXPOSURE_KEYS = (b"request_id", b"user_id", b"items", b"model_version", b"fallback", b"cached", b"bucket", b"ts")
_EVENT_KEYS = (b"event_id", b"user_id", b"item_id", b"type", b"ts")


def _pairs(flat: list) -> dict:
    it = iter(flat)
    return dict(zip(it, it, strict=False))


def exposure_from_entry(flat: list) -> ExposureRow | None:
    """:func:`exposure_row` of a flat XRANGE field list, without a dict in the gateway's field order."""
    if len(flat) == 16 and tuple(flat[0::2]) == _EXPOSURE_KEYS:
        return _bytes_exposure(flat[3], flat[15], flat[5], flat[13], flat[9], flat[11])
    return exposure_row(_pairs(flat))


def click_from_entry(flat: list) -> Click | None:
    """:func:`click_row` of a flat XRANGE field list (other types are dropped on the type field alone)."""
    if len(flat) >= 10 and flat[6] == b"type" and tuple(flat[0:10:2]) == _EVENT_KEYS:
        if flat[7] != b"click":
            return None
        event_id, user, item, ts = flat[1], flat[3], flat[5], flat[9]
        if not event_id or not user:
            return None
        try:
            item_id, t = int(item), float(ts)
        except ValueError:
            return None
        if not math.isfinite(t):
            return None
        return Click(event_id.decode(errors="replace"), user.decode(errors="replace"), item_id, t)
    return click_row(_pairs(flat))


def redis_client(url: str, *, timeout_s: float = 30.0):
    """A client for the report (raw bytes, no retries); :class:`RedisUnavailable` when it does not answer."""
    import redis

    from common.redis_client import sync_client

    try:
        client = sync_client(url, socket_timeout=timeout_s, connect_timeout=min(timeout_s, 5.0), fail_fast=True)
        client.ping()
    except (redis.RedisError, OSError, ValueError) as exc:
        raise RedisUnavailable(f"Redis at {_redacted(url)} is unreachable: {_one_line(exc)}") from None
    return client


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _guarded(gen: Iterator, what: str) -> Iterator:
    import redis

    try:
        yield from gen
    except redis.ResponseError as exc:  # e.g. WRONGTYPE: Redis answered, the key is not a stream
        raise ReportError(f"reading {what} from Redis: {_one_line(exc)}") from None
    except (redis.RedisError, OSError) as exc:
        raise RedisUnavailable(f"reading {what} from Redis failed: {_one_line(exc)}") from None


def redis_exposures(client, *, since: float | None = None, until: float | None = None, window_s: float = WINDOW_S,
                    key: str = EXPOSURES) -> Iterator[ExposureRow | None]:
    start = _stream_id(None if since is None else since - SLACK_S, "-")
    end = _stream_id(None if until is None else until + window_s + SLACK_S, "+")
    return (exposure_from_entry(f) for f in _guarded(xrange_pages(client, key, start, end), "exposures"))


def redis_clicks(client, *, since: float | None = None, key: str = STREAM) -> Iterator[Click | None]:
    """The click events (no upper bound on the stream id: a late event is appended long after its ``ts``)."""
    start = _stream_id(None if since is None else since - SLACK_S, "-")
    return (click_from_entry(f) for f in _guarded(xrange_pages(client, key, start, "+"), "events"))


def _lines(path: Path) -> Iterator[dict]:
    with open(path, "rb") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError:
                raise ReportError(f"{path}:{n}: not a JSON line") from None
            yield obj if isinstance(obj, dict) else {}  # not an object: an entry that does not parse


def _check_file(path: Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise ReportError(f"no such file: {path}")
    return path


def file_exposures(path: Path) -> Iterator[ExposureRow | None]:
    """A JSON-lines file of exposure entries (the fields :meth:`ExposureLog.fields` writes; ``items``
    may also be a JSON list rather than its text)."""
    path = _check_file(path)
    return (exposure_row(obj) for obj in _lines(path))


def file_clicks(path: Path) -> Iterator[Click | None]:
    """The clicks of a file ``python -m services.events export`` wrote: parquet, or JSON lines
    (``.jsonl``, ``.json``, ``.ndjson``)."""
    path = _check_file(path)
    if path.suffix in (".jsonl", ".json", ".ndjson"):
        return (click_row(obj) for obj in _lines(path))
    import pandas as pd

    try:
        df = pd.read_parquet(path, columns=["event_id", "user_id", "item_id", "type", "ts"])
    except Exception as exc:  # noqa: BLE001 - pyarrow raises many kinds; the user gets one line
        raise ReportError(f"{path}: cannot read it as parquet: {_one_line(exc)}") from None
    df = df[df["type"] == CLICK]
    return (Click(str(e), str(u), int(i), float(t))
            for e, u, i, t in zip(df["event_id"], df["user_id"], df["item_id"], df["ts"], strict=True))


def report(name: str, *, redis_url: str | None = None, client=None, events_path: Path | None = None,
           exposures_path: Path | None = None, window_s: float = WINDOW_S, since: float | None = None,
           until: float | None = None, control: str | None = None, confidence: float = 0.95) -> ExperimentReport:
    """The report of experiment ``name``. Exposures come from ``exposures_path`` when given, else
    from Redis; clicks from ``events_path`` when given, else from Redis (``client``, or one made
    for ``redis_url``). :class:`ReportError` (one line) when it cannot be made."""
    if since is not None and until is not None and until <= since:
        raise ReportError(f"until ({until}) is not after since ({since})")
    if (events_path is None or exposures_path is None) and client is None:
        if not redis_url:
            raise ReportError("REDIS_URL is not set (or give both an events file and an exposures file)")
        client = redis_client(redis_url)
    exposures = (file_exposures(exposures_path) if exposures_path is not None
                 else redis_exposures(client, since=since, until=until, window_s=window_s))
    clicks = file_clicks(events_path) if events_path is not None else redis_clicks(client, since=since)
    return compute(name, exposures, clicks, window_s=window_s, since=since, until=until, control=control,
                   confidence=confidence)


# -- output ---------------------------------------------------------------------------------------

def _pct(x: float, digits: int = 2) -> str:
    return "—" if not math.isfinite(x) else f"{100 * x:.{digits}f}%"


def _ci(ci: tuple[float, float], signed: bool = False) -> str:
    lo, hi = ci
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return "—"
    f = "{:+.2f}" if signed else "{:.2f}"
    return f"[{f.format(100 * lo)}, {f.format(100 * hi)}]"


def _p(p: float) -> str:
    if not math.isfinite(p):
        return "—"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _time(x: float | None) -> str:
    return "…" if x is None else datetime.fromtimestamp(x).astimezone().isoformat(timespec="seconds")


def render(result: ExperimentReport, *, width: int = 200) -> str:
    """The report as a plain-text table (rich's layout, no colour codes; lines right-stripped)."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    r = result
    conf = f"{100 * r.confidence:g}%"
    by_name = {c.variant: c for c in r.comparisons}
    table = Table(title=f"experiment {r.experiment}: CTR per variant (attribution window {r.window_s:g} s)",
                  box=box.SIMPLE_HEAD)
    for col in ("variant", "exposures", "users", "clicked", f"CTR % [{conf} CI]", "item clicks", "mean pos",
                "fallback", "cached", f"Δ vs {r.control}, pp [{conf} CI]", "lift", "p"):
        table.add_column(col, justify="left" if col == "variant" else "right", no_wrap=True)
    for v in r.variants:
        c = by_name.get(v.variant)
        cmp = (["control", "", ""] if c is None else
               [f"{100 * c.diff:+.2f} {_ci(c.diff_ci, signed=True)}",
                "—" if not math.isfinite(c.relative_lift) else f"{100 * c.relative_lift:+.1f}%", _p(c.p_value)])
        table.add_row(v.variant, f"{v.exposures:,}", f"{v.users:,}", f"{v.clicked:,}",
                      f"{100 * v.ctr:.2f} {_ci(v.ctr_ci)}", f"{v.item_clicks:,}",
                      "—" if not math.isfinite(v.mean_position) else f"{v.mean_position:.2f}",
                      _pct(v.fallback_share, 1), _pct(v.cached_share, 1), *cmp)
    lines = [
        f"period {_time(r.since)} – {_time(r.until)}: {r.exposures_total:,} exposures (any experiment), "
        f"{r.exposures_skipped:,} unparseable entries skipped",
        f"{r.clicks:,} clicks: {r.clicks_attributed:,} to this experiment, {r.clicks_elsewhere:,} to other exposures, "
        f"{r.clicks_unattributed:,} to none; {r.users_in_several_variants:,} users seen in several variants",
        "CTR = clicked exposures / exposures (fallback answers included), Wilson interval; "
        "Δ: Newcombe hybrid score interval; p: pooled two-proportion z-test",
    ]
    buf = io.StringIO()
    console = Console(file=buf, width=width, color_system=None, force_terminal=False, highlight=False)
    console.print(table)
    for line in lines:
        console.print(line, soft_wrap=True)
    return "\n".join(line.rstrip() for line in buf.getvalue().splitlines()) + "\n"


def parse_time(value: str | float | None) -> float | None:
    """``since`` / ``until`` from the command line: epoch seconds or an ISO 8601 time with a zone."""
    if value is None or value == "":
        return None
    if isinstance(value, int | float):
        return float(value)
    s = value.strip()
    try:
        return float(s)
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(s.replace("Z", "+00:00"))
    except ValueError:
        raise ReportError(f"{value!r} is neither epoch seconds nor an ISO 8601 time") from None
    if dt.tzinfo is None:
        raise ReportError(f"{value!r} has no time zone (add +00:00 or Z)")
    return dt.timestamp()


def main_report(name: str, *, redis_url: str | None = None, window_s: float = WINDOW_S,
                since: str | float | None = None, until: str | float | None = None, control: str | None = None,
                events_path: Path | None = None, exposures_path: Path | None = None, as_json: bool = False,
                confidence: float = 0.95, out=None, err=None) -> int:
    """The CLI's body: print the report (table, or JSON with ``as_json``) -> exit code; a
    :class:`ReportError` is one line on stderr and exit code 1. ``redis_url`` None: ``REDIS_URL``
    (:class:`common.settings.FeatureStoreSettings`)."""
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        if redis_url is None and (events_path is None or exposures_path is None):
            from common.settings import FeatureStoreSettings

            redis_url = FeatureStoreSettings().redis_url
        result = report(name, redis_url=redis_url, events_path=events_path, exposures_path=exposures_path,
                        window_s=window_s, since=parse_time(since), until=parse_time(until), control=control,
                        confidence=confidence)
    except ReportError as exc:
        print(f"experiment-report: {exc}", file=err)
        return EXIT_ERROR
    if as_json:
        out.write(json.dumps(result.to_dict(), indent=2) + "\n")
    else:
        out.write(render(result))
    return EXIT_OK
