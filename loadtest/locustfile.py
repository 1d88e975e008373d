"""Locust traffic model for ``/recommend``.

Run it through ``python -m loadtest`` (headless, reports, SLO check), or directly::

    locust -f loadtest/locustfile.py --host http://127.0.0.1:8000

Traffic:

* known users drawn Zipf-like from the catalog's users: ids from the bundle's ``user_ids`` npy
  (``--bundle``, default ``artifacts/current``) when readable, else MovieLens' 1..943; a fixed
  random permutation decides who is popular, weight ``1 / rank**s`` (``--zipf-s``);
* ``--unknown-ratio`` (default 10 %) of requests for users the model has never seen (cold start);
* varied ``k``; GET and POST (``--post-ratio``); POSTs sometimes carry a session context (recent
  item ids) and exclusions, which the gateway keys its response cache on;
* about one event batch (``POST /events``) per four recommendations (``--event-ratio``): the
  simulated user clicks one of the items it was just recommended (sometimes adds it to the cart
  too), so the events loop's freshness is exercised by the same traffic (``make loadtest``
  reports ``/events`` next to ``/recommend``; a non-202 is a failure).

Every response is checked (HTTP 200, JSON with a list of at most k items, each with an
``item_id``); anything else is a locust failure. The ``fallback`` and ``cached`` fields are
counted, and every ``/recommend`` latency is recorded exactly (locust's own percentiles are
rounded). With ``--summary-json PATH`` those figures are written to PATH when locust quits;
``python -m loadtest`` reads it for the SLO check.
"""

from __future__ import annotations

import json
import random
import time
import uuid
from pathlib import Path
from typing import Any

from locust import FastHttpUser, between, events, tag, task

# locust puts this file's folder on sys.path, so the sibling module imports as `traffic` both
# from `python -m loadtest` and from a plain `locust -f loadtest/locustfile.py`.
from traffic import Population, Tally  # noqa: I001

K_CHOICES = (5, 10, 10, 10, 20, 20, 50, 100)
REQUEST_NAME = "/recommend"
EVENTS_NAME = "/events"


@events.init_command_line_parser.add_listener
def _add_options(parser: Any) -> None:
    group = parser.add_argument_group("recsys traffic model (loadtest/locustfile.py)")
    group.add_argument("--bundle", default="artifacts/current", help="Bundle whose user_ids/item_ids npy are read.")
    group.add_argument("--zipf-s", type=float, default=1.07, help="Zipf exponent of user activity.")
    group.add_argument("--unknown-ratio", type=float, default=0.10, help="Share of requests from unknown users.")
    group.add_argument("--post-ratio", type=float, default=0.30, help="Share of requests sent as POST.")
    group.add_argument("--wait-min", type=float, default=0.05, help="Min think time per simulated user (s).")
    group.add_argument("--wait-max", type=float, default=0.25, help="Max think time per simulated user (s).")
    group.add_argument("--event-ratio", type=float, default=0.25,
                       help="Event batches posted per recommendation (task weight; 0 = no events).")
    group.add_argument("--seed", type=int, default=7, help="Seed of the population and of each user's choices.")
    group.add_argument("--summary-json", default="", help="Write exact latencies and fallback counts here on quit.")


@events.init.add_listener
def _on_init(environment: Any, **_: Any) -> None:
    options = environment.parsed_options
    if options is None:  # used as a library without CLI options
        return
    environment.recsys_population = Population.from_options(options)
    environment.recsys_tally = tally = Tally()

    @environment.events.request.add_listener
    def _latency(request_type: str, name: str, response_time: float, exception: Any, **__: Any) -> None:
        if name.startswith(REQUEST_NAME):
            tally.request(response_time, exception is not None, time.time())

    @environment.events.quitting.add_listener
    def _write_summary(environment: Any, **__: Any) -> None:
        if options.summary_json:
            path = Path(options.summary_json)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(tally.as_dict()))


# ---------------------------------------------------------------- the simulated user
class RecommendUser(FastHttpUser):
    """One client of the gateway: asks for recommendations, sometimes with session context."""

    def wait_time(self) -> float:  # think time, from --wait-min/--wait-max
        o = self.environment.parsed_options
        return between(o.wait_min, o.wait_max)(self)

    def on_start(self) -> None:
        o = self.environment.parsed_options
        self.population: Population = self.environment.recsys_population
        self.tally: Tally = self.environment.recsys_tally
        self.rng = random.Random(f"{o.seed}-{id(self)}")
        self.post_ratio = o.post_ratio
        self.event_ratio = o.event_ratio
        self.last: tuple[str, list[int]] | None = None  # the last answer: (user, item ids)

    def _check(self, resp: Any, k: int, known: bool) -> None:
        if resp.status_code != 200:
            resp.failure(f"HTTP {resp.status_code}: {(resp.text or '')[:200]}")
            return
        try:
            body = resp.json()
        except Exception:
            resp.failure(f"not JSON: {(resp.text or '')[:200]}")
            return
        items = body.get("items") if isinstance(body, dict) else None
        if not isinstance(items, list) or not items or len(items) > k:
            resp.failure(f"expected 1..{k} items, got {body!r:.200}")
            return
        if any(not isinstance(it, dict) or "item_id" not in it for it in items):
            resp.failure(f"item without item_id: {items[0]!r:.200}")
            return
        self.tally.record(body, known)
        self.last = (str(body.get("user_id", "")), [int(it["item_id"]) for it in items])
        resp.success()

    @task(4)
    def recommend(self) -> None:
        user_id, known = self.population.user_id(self.rng)
        k = self.rng.choice(K_CHOICES)
        if self.rng.random() >= self.post_ratio:
            with self.client.get(REQUEST_NAME, params={"user_id": user_id, "k": k},
                                 name=f"{REQUEST_NAME} [GET]", catch_response=True) as resp:
                self._check(resp, k, known)
            return
        body: dict[str, Any] = {"user_id": user_id, "k": k}
        if self.rng.random() < 0.5:  # an in-session request: what the user just looked at
            body["context"] = {"recent_item_ids": self.population.items_sample(self.rng, self.rng.randint(1, 5))}
        if self.rng.random() < 0.3:  # e.g. items already on screen
            body["exclude_item_ids"] = self.population.items_sample(self.rng, self.rng.randint(1, 10))
        with self.client.post(REQUEST_NAME, json=body, name=f"{REQUEST_NAME} [POST]",
                              catch_response=True) as resp:
            self._check(resp, k, known)

    @tag("events")
    @task(1)
    def post_event(self) -> None:
        """A click on one of the items just recommended (sometimes followed by add-to-cart);
        weighted so that there is about one batch per 1 / --event-ratio recommendations."""
        if self.last is None or self.rng.random() >= self.event_ratio * 4:
            return  # task weights are 4:1; --event-ratio scales the share of batches actually sent
        user_id, items = self.last
        self.last = None  # one batch per answer at most
        item = self.rng.choice(items[: min(5, len(items))])
        now = time.time()
        batch = [{"event_id": uuid.uuid4().hex, "user_id": user_id, "item_id": item, "type": "click", "ts": now}]
        if self.rng.random() < 0.2:
            batch.append({"event_id": uuid.uuid4().hex, "user_id": user_id, "item_id": item,
                          "type": "add_to_cart", "ts": now})
        with self.client.post(EVENTS_NAME, json={"events": batch}, name=EVENTS_NAME, catch_response=True) as resp:
            if resp.status_code != 202:
                resp.failure(f"HTTP {resp.status_code}: {(resp.text or '')[:200]}")
            else:
                resp.success()
