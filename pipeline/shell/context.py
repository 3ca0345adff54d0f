"""What every shell step is handed: settings, the `Ledger` (every read and state change of
the ledger goes through its methods), and factories for the outside world (the batch
backends, object stores) plus the clock. Tests pass their own.

A run's batches go to the backend of its channel (`backend_for`): the Gemini Developer API
unless the run's spec said `[channel] kind = "vertex"`; then a Vertex backend per (project,
location, staging prefix), made on first use.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pipeline.adapters.backend import BatchBackend
from pipeline.adapters.config import Settings
from pipeline.adapters.ledger.ledger import Ledger
from pipeline.adapters.log import get_logger
from pipeline.adapters.storage import ObjectStore, open_store
from pipeline.core.spec import ChannelSpec


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class Context:
    settings: Settings
    ledger: Ledger
    backend_factory: Callable[[], BatchBackend] | None = None
    store_factory: Callable[[str], ObjectStore] = open_store
    clock: Callable[[], datetime] = utcnow
    vertex_factory: Callable[[ChannelSpec], BatchBackend] | None = None
    _backend: BatchBackend | None = field(default=None, repr=False)
    _stores: dict[str, ObjectStore] = field(default_factory=dict, repr=False)
    _vertex: dict[ChannelSpec, BatchBackend] = field(default_factory=dict, repr=False)

    @property
    def backend(self) -> BatchBackend:
        """The Gemini backend, made on first use (plan and status never need a key)."""
        if self._backend is None:
            factory = self.backend_factory or self._default_backend
            self._backend = factory()
        return self._backend

    def backend_for(self, run: Any) -> BatchBackend:
        """The backend of a run's channel (its `channel` column; NULL: the Developer API)."""
        return self.channel_backend(channel_of(run))

    def channel_backend(self, channel: ChannelSpec) -> BatchBackend:
        """The backend of a channel: the Developer API's, or one per Vertex project,
        location and staging prefix, made on first use."""
        if not channel.is_vertex:
            return self.backend
        if channel not in self._vertex:
            factory = self.vertex_factory or self._default_vertex
            self._vertex[channel] = factory(channel)
        return self._vertex[channel]

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
        from pipeline.adapters.gemini import make_backend  # google.genai: only when needed

        return make_backend(s.api_key, s.api_key_variable, s.base_url)

    def _default_vertex(self, channel: ChannelSpec) -> BatchBackend:
        from pipeline.adapters.vertex import make_vertex_backend

        s = self.settings
        return make_vertex_backend(
            channel, s.vertex_base_url, placeholder=s.vertex_placeholder_token
        )


def channel_of(run: Any) -> ChannelSpec:
    """Where a run's batches go, from its ledger row."""
    return ChannelSpec.from_json(getattr(run, "channel", None))
