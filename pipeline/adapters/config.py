"""Settings: built once from the environment and CLI flags, then passed down. The only
reader of os.environ in nanobatch. The API key is kept out of repr so it cannot leak into
logs or tracebacks.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from decimal import Decimal, InvalidOperation
from pathlib import Path

from pipeline.core.errors import UsageError

DEFAULT_DATABASE_URL = "sqlite:///.nanobatch/ledger.db"
LOG_FORMATS = ("auto", "console", "json")


@dataclass(frozen=True)
class Settings:
    database_url: str = DEFAULT_DATABASE_URL
    """NANOBATCH_DATABASE_URL: the ledger, any SQLAlchemy URL."""
    api_key: str | None = field(default=None, repr=False)
    """GEMINI_API_KEY or GOOGLE_API_KEY; never printed, logged or stored."""
    api_key_variable: str = "GEMINI_API_KEY"
    """Which variable the key came from (for error messages)."""
    api_key_unused: str | None = None
    """The other key variable, when both are set: like google-genai, GOOGLE_API_KEY wins."""
    base_url: str | None = None
    """GOOGLE_GEMINI_BASE_URL: another endpoint, e.g. the emulator."""
    cloud_project: str | None = None
    """GOOGLE_CLOUD_PROJECT: the default `[channel] project` of a Vertex spec."""
    cloud_location: str | None = None
    """GOOGLE_CLOUD_LOCATION: the default `[channel] location` of a Vertex spec."""
    vertex_base_url: str | None = None
    """GOOGLE_VERTEX_BASE_URL: another Vertex AI endpoint, e.g. the emulator."""
    vertex_placeholder_token: bool = False
    """Send a placeholder token to Vertex even when Application Default Credentials exist
    (`run --emulator`: real credentials must never be refreshed for, or sent to, it)."""
    storage_emulator_host: str | None = None
    """STORAGE_EMULATOR_HOST: a GCS emulator (google-cloud-storage reads it itself)."""
    log_format: str = "auto"
    """NANOBATCH_LOG_FORMAT: console, json or auto (console on a terminal)."""
    state_dir: Path = Path(".nanobatch")
    """NANOBATCH_STATE_DIR: spool files for uploads and downloads."""
    daily_budget_usd: Decimal | None = None
    """NANOBATCH_DAILY_BUDGET_USD: optional cap on spending per UTC day across runs."""
    notify_url: str | None = None
    """NANOBATCH_NOTIFY_URL: receives a JSON summary when a run finishes."""
    harvest_workers: int = 4
    """NANOBATCH_HARVEST_WORKERS: threads that decode and store images."""
    create_backoff_s: float = 30.0
    """NANOBATCH_CREATE_BACKOFF_S: first wait after a batch create answered 429 or 5xx."""
    max_live_batches: int | None = None
    """NANOBATCH_MAX_LIVE_BATCHES: live-batch cap (None: the service's 100); benchmarks only."""
    webhook_secrets: tuple[str, ...] = field(default=(), repr=False)
    """NANOBATCH_WEBHOOK_SECRET: the whsec_ secrets of static webhooks, space-separated
    (several during a rotation); never printed, logged or stored."""
    worker_id: str = ""
    crash_at: str | None = None
    """NANOBATCH_CRASH_AT: a crash drill, `name` or `name:N` (see pipeline.adapters.drill);
    tests only."""

    @property
    def spool_dir(self) -> Path:
        return self.state_dir / "spool"

    @property
    def channel_defaults(self) -> dict[str, str]:
        """`[channel]` defaults of a Vertex spec: project and location from the environment."""
        found = {"project": self.cloud_project, "location": self.cloud_location}
        return {k: v for k, v in found.items() if v}

    def with_overrides(self, **changes: object) -> Settings:
        return replace(self, **changes)  # type: ignore[arg-type]


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Build Settings from the environment (os.environ unless `env` is given)."""
    env = os.environ if env is None else env
    key, key_var, unused = _api_key(env)
    return Settings(
        database_url=env.get("NANOBATCH_DATABASE_URL") or DEFAULT_DATABASE_URL,
        api_key=key,
        api_key_variable=key_var,
        api_key_unused=unused,
        base_url=env.get("GOOGLE_GEMINI_BASE_URL") or None,
        cloud_project=(env.get("GOOGLE_CLOUD_PROJECT") or "").strip() or None,
        cloud_location=(env.get("GOOGLE_CLOUD_LOCATION") or "").strip() or None,
        vertex_base_url=env.get("GOOGLE_VERTEX_BASE_URL") or None,
        storage_emulator_host=env.get("STORAGE_EMULATOR_HOST") or None,
        log_format=_log_format(env),
        state_dir=Path(env.get("NANOBATCH_STATE_DIR") or ".nanobatch"),
        daily_budget_usd=_decimal(env, "NANOBATCH_DAILY_BUDGET_USD"),
        notify_url=env.get("NANOBATCH_NOTIFY_URL") or None,
        harvest_workers=_int(env, "NANOBATCH_HARVEST_WORKERS", 4),
        create_backoff_s=float(env.get("NANOBATCH_CREATE_BACKOFF_S") or 30.0),
        max_live_batches=_int(env, "NANOBATCH_MAX_LIVE_BATCHES", 0) or None,
        webhook_secrets=tuple((env.get("NANOBATCH_WEBHOOK_SECRET") or "").split()),
        worker_id=f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}",
        crash_at=env.get("NANOBATCH_CRASH_AT") or None,
    )


def _api_key(env: Mapping[str, str]) -> tuple[str | None, str, str | None]:
    """(key, its variable, the other variable if it is set too). GOOGLE_API_KEY comes first,
    as in google-genai's `get_env_api_key`, so nanobatch and the SDK never disagree."""
    found = [
        (value, name)
        for name in ("GOOGLE_API_KEY", "GEMINI_API_KEY")
        if (value := (env.get(name) or "").strip())
    ]
    if not found:
        return None, "GEMINI_API_KEY", None
    (key, name), *rest = found
    return key, name, rest[0][1] if rest else None


def _log_format(env: Mapping[str, str]) -> str:
    raw = env.get("NANOBATCH_LOG_FORMAT") or ""
    value = raw.strip().lower() or "auto"
    if value not in LOG_FORMATS:
        raise UsageError(
            f"NANOBATCH_LOG_FORMAT={raw!r} is not a log format; use one of {', '.join(LOG_FORMATS)}"
        )
    return value


def _decimal(env: Mapping[str, str], name: str) -> Decimal | None:
    raw = env.get(name)
    if not raw:
        return None
    try:
        value = Decimal(raw)
    except InvalidOperation:
        raise UsageError(f"{name}={raw!r} is not a number of USD, e.g. 25.00") from None
    if value <= 0:
        raise UsageError(f"{name} must be more than 0, got {raw}")
    return value


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if not raw:
        return default
    if not raw.isdigit() or int(raw) < 1:
        raise UsageError(f"{name}={raw!r} must be a whole number of at least 1")
    return int(raw)
