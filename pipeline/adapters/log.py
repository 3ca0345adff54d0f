"""Logging: structlog key=value on a terminal, JSON lines with --log-format json or
NANOBATCH_LOG_FORMAT=json, always to stderr. stdlib loggers (SQLAlchemy, httpx, google)
go through the same renderer. A redaction processor masks anything that looks like a key.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

_SECRET_FIELDS = frozenset({"api_key", "key_value", "password", "authorization", "x-goog-api-key"})
_SECRETS: list[re.Pattern[str]] = []
_URL_PASSWORD = re.compile(r"(://[^:/@\s]+:)[^@\s]+@")
_TOKEN_CHAR = r"A-Za-z0-9_\-"
"""What API keys are made of: a secret is masked only where no such character touches it."""


def register_secret(value: str | None) -> None:
    """Mask this value wherever it stands as a whole token in a log line (a short key such
    as `k` must not mask every `k` of every word, which would also show where it is)."""
    if not value:
        return
    pattern = re.compile(rf"(?<![{_TOKEN_CHAR}]){re.escape(value)}(?![{_TOKEN_CHAR}])")
    if pattern not in _SECRETS:
        _SECRETS.append(pattern)


def redact(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: drop secret fields and mask registered secrets and URL passwords."""
    for name in list(event):
        if name.lower() in _SECRET_FIELDS:
            event[name] = "***"
        elif isinstance(event[name], str):
            event[name] = mask_text(event[name])
    return event


def mask_text(text: str) -> str:
    """Replace registered secrets (whole tokens) and URL passwords in text with ***."""
    for secret in _SECRETS:
        text = secret.sub("***", text)
    return _URL_PASSWORD.sub(r"\1***@", text)


def configure_logging(fmt: str = "auto", level: int = logging.INFO) -> None:
    """Set up structlog and the stdlib bridge; `fmt` is console, json or auto."""
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact,
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(processors=[*shared[1:], _drop_meta, renderer])
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)


def _drop_meta(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    event.pop("_record", None)
    event.pop("_from_structlog", None)
    return event


def get_logger(**context: Any) -> Any:
    """A bound structlog logger."""
    # A lazy proxy: each call uses the configuration current at that moment, so a module-level
    # logger follows a later configure_logging (another stream or format) instead of freezing.
    return structlog.get_logger("nanobatch", **context)
