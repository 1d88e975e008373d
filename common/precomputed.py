"""The precomputed list: one user's top-N as ``python -m services.precompute`` writes it and the
gateway's ``precomputed`` / ``hybrid`` serving modes read it (key :func:`common.realtime.precomputed_key`).

A small packed binary (no pickle, no JSON parse on the hot path: the arrays are ``np.frombuffer``
views of the value), little-endian::

    header   magic "RPL1" | computed_at f64 (epoch s) | n u32 | id width u8 (4 or 8)
             | n_sources u8 | version length u8                                   19 bytes
    version  UTF-8 bytes (the bundle version that retrieved and ranked the list)
    sources  n_sources x (length u8, UTF-8 name)
    arrays   item ids  int32 or int64 [n]   (int32 whenever every id fits)
             ranking scores     float32 [n] (best first: the list's order)
             retrieval scores   float32 [n] (what ranking takes as input: hybrid re-ranks with them)
             source codes       uint8 [n]   (index into the source names)

300 items with int32 ids and the shipped sources: 19 + version + ~30 + 300 x 13 bytes ≈ 3.97 KB.
:func:`decode` never raises on a bad value: anything that does not parse whole (wrong magic,
truncated, codes out of range) is ``None``, which the gateway treats as a missing list.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

MAGIC = b"RPL1"
_HEADER = struct.Struct("<4sdIBBB")
_INT32 = np.iinfo(np.int32)


@dataclass(frozen=True)
class PrecomputedList:
    version: str
    computed_at: float  # epoch seconds
    item_ids: np.ndarray  # int64 or int32 [n], best first
    scores: np.ndarray  # float32 [n], the ranking scores
    retrieval_scores: np.ndarray  # float32 [n]
    source_codes: np.ndarray  # uint8 [n], index into source_names
    source_names: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.item_ids.size)


def encode(lst: PrecomputedList) -> bytes:
    ids = np.asarray(lst.item_ids, np.int64)
    n = int(ids.size)
    scores = np.asarray(lst.scores, "<f4")
    retrieval = np.asarray(lst.retrieval_scores, "<f4")
    codes = np.asarray(lst.source_codes, np.uint8)
    if not (scores.size == retrieval.size == codes.size == n):
        raise ValueError(f"parallel arrays of different lengths: {n}, {scores.size}, {retrieval.size}, {codes.size}")
    names = [s.encode() for s in lst.source_names]
    version = lst.version.encode()
    if len(names) > 255 or any(len(s) > 255 for s in names) or len(version) > 255:
        raise ValueError("at most 255 sources, names and version of at most 255 bytes")
    if n and int(codes.max()) >= len(names):
        raise ValueError("a source code beyond the source names")
    narrow = n == 0 or (int(ids.min()) >= _INT32.min and int(ids.max()) <= _INT32.max)
    width = 4 if narrow else 8
    parts = [_HEADER.pack(MAGIC, float(lst.computed_at), n, width, len(names), len(version)), version]
    parts += [bytes([len(s)]) + s for s in names]
    parts += [ids.astype("<i4" if narrow else "<i8").tobytes(), scores.tobytes(), retrieval.tobytes(), codes.tobytes()]
    return b"".join(parts)


def decode(raw: bytes | None) -> PrecomputedList | None:
    """The list in ``raw``, or None when there is none or it is not a whole, valid value."""
    if not raw:
        return None
    try:
        return _decode(memoryview(raw))
    except (struct.error, ValueError, UnicodeDecodeError, IndexError):
        return None


def _decode(buf: memoryview) -> PrecomputedList | None:
    magic, computed_at, n, width, n_sources, version_len = _HEADER.unpack_from(buf, 0)
    if magic != MAGIC or width not in (4, 8):
        return None
    at = _HEADER.size
    version = bytes(buf[at:at + version_len]).decode()
    at += version_len
    names = []
    for _ in range(n_sources):
        size = buf[at]
        names.append(bytes(buf[at + 1:at + 1 + size]).decode())
        at += 1 + size
    if len(buf) != at + n * (width + 9):  # ids + two float32 + one uint8 per item
        return None
    ids = np.frombuffer(buf, "<i4" if width == 4 else "<i8", n, at)
    at += n * width
    scores = np.frombuffer(buf, "<f4", n, at)
    retrieval = np.frombuffer(buf, "<f4", n, at + 4 * n)
    codes = np.frombuffer(buf, np.uint8, n, at + 8 * n)
    if n and (int(codes.max()) >= n_sources or not np.isfinite(computed_at)):
        return None
    return PrecomputedList(version, computed_at, ids, scores, retrieval, codes, tuple(names))
