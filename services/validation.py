"""Request validation shared by the gRPC servicers (retrieval, ranking).

Each check returns ``None`` when the value is fine, else the reason as a message that names the
field, so a servicer's ``validate`` is a chain ``check_a(...) or check_b(...) or ...`` that stops
at the first problem. :func:`reject_invalid` turns that reason into ``INVALID_ARGUMENT`` (the
gateway does not count it against the dependency's breaker: the request was bad, not the
service); :func:`loaded` answers ``UNAVAILABLE`` while the artifacts are still loading.

The servicers' shared core (``services.retrieval.server.retrieve``, ``services.ranking.server.rank``)
raises :class:`InvalidRequest` instead, so that the same code runs behind gRPC (where it becomes
``INVALID_ARGUMENT`` via ``context.abort``) and in the gateway's process (``services.inprocess``).
"""

from __future__ import annotations

from typing import TypeVar

import grpc

MAX_USER_ID_LEN = 256  # ids are short strings; a longer one is a client bug, not a user

T = TypeVar("T")


class InvalidRequest(ValueError):
    """The request is invalid; the message names the field and what is wrong."""


def check(reason: str | None) -> None:
    """Raise :class:`InvalidRequest` with ``reason`` unless it is ``None``."""
    if reason is not None:
        raise InvalidRequest(reason)


def user_id_problem(user_id: str) -> str | None:
    if not user_id.strip():
        return "user_id is required"
    if len(user_id) > MAX_USER_ID_LEN:
        return f"user_id is longer than {MAX_USER_ID_LEN} characters"
    return None


def positive(field: str, value: int) -> str | None:
    return f"{field} must be positive, got {value}" if value <= 0 else None


def not_above(field: str, value: int, limit: int) -> str | None:
    return f"{field} must be at most {limit}, got {value}" if value > limit else None


def not_empty(field: str, n: int) -> str | None:
    return f"{field} must not be empty" if n == 0 else None


def at_most_entries(field: str, n: int, limit: int) -> str | None:
    """A repeated field with at most ``limit`` entries."""
    return f"at most {limit} {field}, got {n}" if n > limit else None


def same_length(field: str, n: int, reference: str, n_reference: int) -> str | None:
    """Parallel arrays (``candidates.scores`` next to ``candidates.item_ids``) must line up."""
    return f"{field} has {n} entries, {reference} has {n_reference}" if n != n_reference else None


async def loaded(context: grpc.aio.ServicerContext, pipeline: T | None, service: str) -> T:
    """The pipeline, or ``UNAVAILABLE`` while the service is still loading its artifacts."""
    if pipeline is None:
        await context.abort(grpc.StatusCode.UNAVAILABLE, f"{service} is loading its artifacts")
    return pipeline


async def reject_invalid(context: grpc.aio.ServicerContext, reason: str | None) -> None:
    """``INVALID_ARGUMENT`` with ``reason`` (the field and what is wrong) unless it is ``None``."""
    if reason is not None:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, reason)
