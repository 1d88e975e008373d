"""The exposure log: what ``/recommend`` showed, appended to :data:`common.realtime.EXPOSURES`.

Every answer (full, fallback or from the cache; not ``/debug/explain``) is offered with
:meth:`ExposureLog.offer`, which costs the request a sampling draw and a ``put_nowait``: a
``GATEWAY_EXPOSURE_SAMPLE_RATE`` share of them goes into a bounded queue
(``GATEWAY_EXPOSURE_QUEUE_SIZE``) and one background task (started in the lifespan) writes what is
queued in pipelined batches of ``XADD ... MAXLEN ~ GATEWAY_EXPOSURE_MAXLEN``. Nothing ever waits
for Redis on the request's path: a full queue drops the record, a failed write drops its batch,
both counted in ``gateway_exposures_total{outcome}`` (``written``, ``dropped``, ``sampled_out``,
``failed``). At shutdown what is queued is written within :data:`DRAIN_S` (best effort), the rest
counted as dropped.

Entry fields (UTF-8 strings): ``request_id``, ``user_id``, ``items`` (JSON list of
``[item_id, position]``, position 0 = shown first), ``model_version``, ``fallback`` (the rung, or
empty for a full answer), ``cached`` (``1`` / ``0``), ``bucket`` (the experiment bucket; empty:
there are no experiments yet), ``ts`` (epoch seconds of the answer).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time

import orjson

from common.realtime import EXPOSURES
from common.redis_client import async_client
from services.gateway.metrics import GatewayMetrics

log = logging.getLogger(__name__)

BATCH = 256  # most entries per pipelined write
DRAIN_S = 2.0  # at shutdown (uvicorn's graceful shutdown is 5 s)


class ExposureLog:
    def __init__(self, url: str, *, sample_rate: float, queue_size: int, maxlen: int, timeout_s: float,
                 metrics: GatewayMetrics, draw=random.random) -> None:
        self.sample_rate = sample_rate
        self.maxlen = maxlen
        self._draw = draw
        self._redis = async_client(url, timeout_s=timeout_s, max_connections=4)
        self._queue: asyncio.Queue[tuple] = asyncio.Queue(maxsize=queue_size)
        self._task: asyncio.Task | None = None
        self._closed = False
        self._count = {o: metrics.exposures.labels(outcome=o) for o in ("written", "dropped", "sampled_out", "failed")}

    def start(self) -> None:
        """Start the writer task (in the lifespan: needs the running loop)."""
        self._task = asyncio.create_task(self._run(), name="exposure-log")

    def offer(self, request_id: str, user_id: str, items: list[dict], model_version: str,
              fallback: str | None, cached: bool, bucket: str = "") -> None:
        """Queue one answer's record (sampled); never blocks, never raises for a full queue."""
        if self.sample_rate < 1.0 and self._draw() >= self.sample_rate:
            self._count["sampled_out"].inc()
            return
        if self._closed:
            self._count["dropped"].inc()
            return
        record = (request_id, user_id, [i["item_id"] for i in items], model_version, fallback or "",
                  cached, bucket, time.time())
        try:
            self._queue.put_nowait(record)
        except asyncio.QueueFull:
            self._count["dropped"].inc()

    @staticmethod
    def fields(record: tuple) -> dict[str, str]:
        request_id, user_id, item_ids, model_version, fallback, cached, bucket, ts = record
        return {"request_id": request_id, "user_id": user_id,
                "items": orjson.dumps([[item_id, pos] for pos, item_id in enumerate(item_ids)]).decode(),
                "model_version": model_version, "fallback": fallback, "cached": "1" if cached else "0",
                "bucket": bucket, "ts": repr(ts)}

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await self._write(batch)
            finally:
                for _ in batch:
                    self._queue.task_done()

    async def _write(self, batch: list[tuple]) -> None:
        pipe = self._redis.pipeline(transaction=False)
        for record in batch:
            pipe.xadd(EXPOSURES, self.fields(record), maxlen=self.maxlen, approximate=True)
        try:
            await pipe.execute()
        except asyncio.CancelledError:
            self._count["failed"].inc(len(batch))
            raise
        except Exception as exc:  # noqa: BLE001 - Redis down or slow: the batch is lost, counted
            self._count["failed"].inc(len(batch))
            log.debug("exposure write failed: %r", exc)
        else:
            self._count["written"].inc(len(batch))

    async def close(self, drain_s: float = DRAIN_S) -> None:
        """Write what is queued (at most ``drain_s``), then stop; the rest is counted as dropped."""
        self._closed = True
        if self._task is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._queue.join(), drain_s)
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        left = self._queue.qsize()
        if left:
            self._count["dropped"].inc(left)
        await self._redis.aclose()
