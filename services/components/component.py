"""What every component has: a ``name`` (its metrics label and explain key), the bundle files it
needs (``artifacts``, checked before it loads) and ``load_artifacts`` (everything expensive,
once). The constructor takes the component's ``options`` from the pipeline config and nothing
else; a subclass declares the options it takes as keyword arguments, so an unknown one is an
error at start-up."""

from __future__ import annotations

from typing import Any

from common.bundle import Bundle


class Component:
    #: Bundle files the component cannot work without (checked before ``load_artifacts``).
    artifacts: tuple[str, ...] = ()

    def __init__(self, name: str, **options: Any) -> None:
        if options:
            raise ValueError(f"unknown option(s) {', '.join(sorted(options))}")
        self.name = name

    def load_artifacts(self, bundle: Bundle) -> None:
        """Load what the component needs from the bundle (once, before serving)."""

    def attach(self, live: Any) -> None:
        """The events loop's live state (:class:`services.live.LiveState`), given after
        ``load_artifacts`` when the online store has one; a component that reads none ignores it."""
