"""`nanobatch webhooks create|list|delete`: the project's static Gemini webhook for batch
events (CONTRACT section 11). Create asks for every batch event; an event name the service
refuses is left out and said so, and the others are registered. The signing secret is handed
back once, for the command to print alone on stdout; nothing here logs or keeps it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from pipeline.adapters.backend import RemoteWebhook
from pipeline.adapters.log import get_logger
from pipeline.core.errors import ApiError, TransientApiError, UsageError
from pipeline.shell.context import Context

log = get_logger()
BATCH_EVENTS = ("batch.succeeded", "batch.failed", "batch.expired", "batch.cancelled")
UNLISTED = "batch.cancelled"
"""In the guide's catalog but not in google-genai 3.6's enum: the likeliest to be refused."""


@dataclass(frozen=True)
class Created:
    webhook: RemoteWebhook
    left_out: tuple[str, ...]
    """Event names the service refused."""


def create(ctx: Context, url: str, name: str | None = None) -> Created:
    """Register a static webhook for the batch events at `url` (https; http only to a
    loopback address, for the emulator)."""
    check_url(url)
    admin = _admin(ctx)
    events = list(BATCH_EVENTS)
    left_out: list[str] = []
    while True:
        try:
            made = admin.create_webhook(url, events, name)
            break
        except TransientApiError:
            raise
        except ApiError as exc:
            refused = _refused_events(exc, events)
            if exc.code != 400 or not refused or len(refused) == len(events):
                raise
            left_out += refused
            events = [e for e in events if e not in refused]
    log.info("webhook_created", id=made.id, uri=_scheme_host(url), events=",".join(events))
    return Created(made, tuple(left_out))


def _refused_events(exc: ApiError, events: list[str]) -> list[str]:
    """The event names a 400 names; or, when it names none, the one not in the SDK's enum."""
    named = [e for e in events if re.search(rf"(?<![\w.]){re.escape(e)}(?![\w.])", str(exc))]
    if named:
        return named
    return [UNLISTED] if UNLISTED in events else []


def webhooks(ctx: Context) -> Iterator[RemoteWebhook]:
    yield from _admin(ctx).list_webhooks()


def delete(ctx: Context, webhook_id: str) -> None:
    if not webhook_id or "/" in webhook_id:
        raise UsageError(
            f"{webhook_id!r} is not a webhook id; `nanobatch webhooks list` shows them"
        )
    _admin(ctx).delete_webhook(webhook_id)
    log.info("webhook_deleted", id=webhook_id)


def check_url(url: str) -> None:
    parts = urlsplit(url)
    try:
        host = parts.hostname or ""
    except ValueError:
        host = ""
    if parts.scheme == "https" and host:
        return
    if parts.scheme == "http" and _loopback(host):
        return
    raise UsageError(
        f"--url {url!r}: a webhook URL must be https (the service requires it); http only to a "
        "loopback address (the emulator)"
    )


def _loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _scheme_host(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or ''}"


def _admin(ctx: Context) -> Any:
    backend = ctx.backend
    if not hasattr(backend, "create_webhook"):
        raise UsageError("static webhooks need the Gemini Developer API (GEMINI_API_KEY)")
    return backend
