"""What every shell step is handed: settings, the ledger engine, and factories for the
outside world (the Gemini backend, object stores) plus the clock. Tests pass their own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine

from pipeline.adapters.config import Settings
from pipeline.adapters.gemini import BatchBackend, make_backend
from pipeline.adapters.log import get_logger
from pipeline.adapters.storage import ObjectStore, open_store


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class Context:
    settings: Settings
    engine: Engine
    backend_factory: Callable[[], BatchBackend] | None = None
    store_factory: Callable[[str], ObjectStore] = open_store
    clock: Callable[[], datetime] = utcnow
    _backend: BatchBackend | None = field(default=None, repr=False)
    _stores: dict[str, ObjectStore] = field(default_factory=dict, repr=False)

    @property
    def backend(self) -> BatchBackend:
        """The Gemini backend, made on first use (plan and status never need a key)."""
        if self._backend is None:
            factory = self.backend_factory or self._default_backend
            self._backend = factory()
        return self._backend

    def store(self, uri: str) -> ObjectStore:
        if uri not in self._stores:
            self._stores[uri] = self.store_factory(uri)
        return self._stores[uri]

    def now(self) -> datetime:
        return self.clock()

    def _default_backend(self) -> Any:
        s = self.settings
        if s.api_key_unused:
            get_logger().warning(
                "api_key_variable",
                variable=s.api_key_variable,
                unused=s.api_key_unused,
                reason="both are set; google-genai uses GOOGLE_API_KEY",
            )
        return make_backend(s.api_key, s.api_key_variable, s.base_url)
