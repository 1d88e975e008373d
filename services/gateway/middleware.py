"""ASGI middleware of the gateway."""

from __future__ import annotations

from services.gateway.responses import error


class BodyLimit:
    """Pure ASGI middleware: refuse request bodies above ``max_bytes`` with 413 (declared or streamed)."""

    def __init__(self, app, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        too_big = declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes)
        if not too_big and declared is None:  # chunked: buffer up to the limit, then replay
            chunks, size, more = [], 0, True
            while more:
                message = await receive()
                if message["type"] != "http.request":
                    return
                chunks.append(message.get("body", b""))
                size += len(chunks[-1])
                more = message.get("more_body", False)
                if size > self.max_bytes:
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
            response = error(413, f"request body larger than {self.max_bytes} bytes")
            return await response(scope, receive, send)
        return await self.app(scope, receive, send)
