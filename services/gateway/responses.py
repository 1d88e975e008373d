"""Response plumbing: the orjson response class and the gateway's error bodies."""

from __future__ import annotations

import orjson
from fastapi.responses import JSONResponse, Response


class JSONBytes(JSONResponse):
    """JSON from bytes already serialised (the hot path) or from a plain object, via orjson.
    A ``JSONResponse`` so that OpenAPI documents a route's ``response_model`` under it."""

    media_type = "application/json"

    def render(self, content) -> bytes:
        return content if isinstance(content, bytes) else orjson.dumps(content)


def error(status: int, message: str, detail: list | None = None) -> Response:
    """``{"error": message[, "detail": [...]]}``: every non-200 answer of the gateway has this shape."""
    body = {"error": message}
    if detail is not None:
        body["detail"] = detail
    return JSONBytes(body, status_code=status)


def readable(errors) -> list[str]:
    """Pydantic validation errors as ``"body.k: Input should be ..."`` lines."""
    out = []
    for e in errors:
        loc = ".".join(str(p) for p in e.get("loc", ()))
        out.append(f"{loc}: {e.get('msg', 'invalid')}" if loc else e.get("msg", "invalid"))
    return out
