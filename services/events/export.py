"""``python -m services.events export``: the stream's events -> a parquet or JSONL file for the
offline pipeline. Read-only (``XRANGE`` pages); columns ``event_id, user_id, item_id, type, ts,
value``; an entry that does not decode (poison) is skipped and counted, an event id seen twice is
kept once. The stream keeps ``EVENTS_STREAM_RETENTION_S`` of history: export more often.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from common.realtime import STREAM, PoisonEvent, decode_entry

COLUMNS = ("event_id", "user_id", "item_id", "type", "ts", "value")
PAGE = 10_000


def since_id(since: str | None) -> str:
    """A stream id (``1700000000000-0``), epoch seconds or an ISO 8601 time -> the XRANGE start."""
    if since is None or since in ("", "-"):
        return "-"
    s = since.strip()
    if "-" in s and s.replace("-", "").isdigit() and s.count("-") == 1:
        return s
    try:
        seconds = float(s)
    except ValueError:
        try:
            dt = datetime.fromisoformat(s.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"--since {since!r} is neither a stream id, epoch seconds nor an ISO 8601 time") from None
        if dt.tzinfo is None:
            raise ValueError(f"--since {since!r} has no time zone (add +00:00 or Z)") from None
        seconds = dt.timestamp()
    return f"{max(0, math.floor(seconds * 1000))}-0"


@dataclass
class ExportResult:
    path: Path
    events: int
    skipped: int
    last_id: str | None


def read_events(client, start: str = "-", stream: str = STREAM):
    """Yield (stream id, event or None for poison) over the stream from ``start``, page by page."""
    cursor = start
    while True:
        page = client.xrange(stream, min=cursor, max="+", count=PAGE)
        for sid, fields in page:
            sid = sid.decode() if isinstance(sid, bytes) else sid
            try:
                yield sid, decode_entry(fields)
            except PoisonEvent:
                yield sid, None
        if len(page) < PAGE:
            return
        cursor = "(" + (page[-1][0].decode() if isinstance(page[-1][0], bytes) else page[-1][0])


def export(client, out: Path, since: str | None = None, fmt: str | None = None) -> ExportResult:
    out = Path(out)
    fmt = fmt or ("jsonl" if out.suffix in (".jsonl", ".json", ".ndjson") else "parquet")
    if fmt not in ("parquet", "jsonl"):
        raise ValueError(f"unknown format {fmt!r} (parquet or jsonl)")
    rows: dict[str, tuple] = {}
    skipped, last = 0, None
    for sid, ev in read_events(client, since_id(since)):
        last = sid
        if ev is None:
            skipped += 1
            continue
        rows.setdefault(ev.event_id, (ev.event_id, ev.user_id, ev.item_id, ev.type, ev.ts, ev.value))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    if fmt == "jsonl":
        with open(tmp, "w") as f:
            for r in rows.values():
                f.write(json.dumps(dict(zip(COLUMNS, r, strict=True))) + "\n")
    else:
        import pandas as pd

        df = pd.DataFrame(list(rows.values()), columns=list(COLUMNS))
        df = df.astype({"event_id": "string", "user_id": "string", "item_id": "int64", "type": "string",
                        "ts": "float64", "value": "float64"})
        df.to_parquet(tmp, index=False)
    os.replace(tmp, out)
    return ExportResult(out, len(rows), skipped, last)
