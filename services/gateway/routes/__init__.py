"""The gateway's routes, one module per concern, each with a ``register(app)`` that adds its
endpoints to the app (called by ``create_app``, never at import). :func:`register_all` keeps the
order OpenAPI lists them in.
"""

from __future__ import annotations

from fastapi import FastAPI

from services.gateway.routes import admin, events, explain, health, metrics, recommend


def register_all(app: FastAPI) -> None:
    for module in (recommend, events, explain, admin, health, metrics):
        module.register(app)
