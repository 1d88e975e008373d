"""ASGI middleware of the gateway."""

from __future__ import annotations

from collections.abc import Callable

from services.gateway.responses import error


class BodyLimit:
    """Pure ASGI middleware: refuse request bodies above ``max_bytes`` with 413 (declared or streamed).
    ``per_path``: another limit for the paths named (``/events`` takes batches); ``on_refused(path)``
    is called for each 413 (metrics)."""

    def __init__(self, app, max_bytes: int, per_path: dict[str, int] | None = None,
                 on_refused: Callable[[str], None] | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.per_path = dict(per_path or {})
        self.on_refused = on_refused

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        limit = self.per_path.get(scope["path"], self.max_bytes)
        declared = dict(scope["headers"]).get(b"content-length")
        too_big = declared is not None and (not declared.isdigit() or int(declared) > limit)
        if not too_big and declared is None:  # chunked: buffer up to the limit, then replay
            chunks, size, more = [], 0, True
            while more:
                message = await receive()
                if message["type"] != "http.request":
                    return
                chunks.append(message.get("body", b""))
                size += len(chunks[-1])
                more = message.get("more_body", False)
                if size > limit:
                    too_big = True
                    break
            if not too_big:
                body, sent = b"".join(chunks), False

                async def replay():
                    nonlocal sent
                    if not sent:
                        sent = True
                        return {"type": "http.request", "body": body, "more_body": False}
                    return await receive()

                return await self.app(scope, replay, send)
        if too_big:
            if self.on_refused is not None:
                self.on_refused(scope["path"])
            response = error(413, f"request body larger than {limit} bytes")
            return await response(scope, receive, send)
        return await self.app(scope, receive, send)
