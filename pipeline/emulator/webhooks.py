"""Webhooks of the emulator (reference/webhooks.md): the webhooks API (create returns the
signing secret once; list, get, update, delete, ping, rotateSigningSecret; snake_case JSON as
the SDK sends and reads it), the JWKS at /.well-known/jwks.json, and a message for every batch
that ends: to the batch's own `webhookConfig.uris` (dynamic, JWT) when it has them, else to
every enabled static webhook subscribed to the event (HMAC).

Batch states are computed lazily (see batches.py), so while any webhook or dynamic config
exists a background sweep refreshes the batches a few times a second to notice ends.
`WebhookBatches` is the batch store that remembers each create's webhookConfig.
"""

from __future__ import annotations

import ipaddress
import json
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from pipeline.emulator.batches import END_ERRORS, LIVE, Batch, Batches
from pipeline.emulator.push import RETRY_FOR, Message, Sender, Signer, new_secret
from pipeline.emulator.state import State
from pipeline.emulator.wire import ApiError, new_id, pick, rfc3339

EVENTS = {
    "BATCH_STATE_SUCCEEDED": "batch.succeeded",
    "BATCH_STATE_FAILED": "batch.failed",
    "BATCH_STATE_EXPIRED": "batch.expired",
    "BATCH_STATE_CANCELLED": "batch.cancelled",
}
KNOWN_EVENTS = frozenset(
    {
        *EVENTS.values(),
        "interaction.requires_action",
        "interaction.completed",
        "interaction.failed",
        "interaction.cancelled",
        "video.generated",
    }
)
SWEEP_S = 0.1
GRACE = timedelta(hours=24)


@dataclass
class Hook:
    """A static webhook."""

    id: str
    name: str | None
    uri: str
    events: list[str]
    created: datetime
    updated: datetime
    state: str = "enabled"
    secrets: list[tuple[str, datetime | None]] = field(default_factory=list)
    """(secret, expiry): a rotated-out secret signs on until its expiry."""

    def live_secrets(self, now: datetime) -> list[str]:
        return [s for s, until in self.secrets if until is None or now < until]

    def to_json(self) -> dict[str, Any]:
        shown = [
            {"truncated_secret": f"whsec_...{s[-4:]}"} | ({"expire_time": rfc3339(u)} if u else {})
            for s, u in self.secrets
        ]
        out: dict[str, Any] = {"id": self.id, "uri": self.uri, "subscribed_events": self.events}
        if self.name:
            out["name"] = self.name
        return out | {
            "state": self.state,
            "signing_secrets": shown,
            "create_time": rfc3339(self.created),
            "update_time": rfc3339(self.updated),
        }


class Webhooks:
    """Static webhooks, dynamic configs, and the messages for batches that end."""

    def __init__(self, state: State, batches: Batches) -> None:
        self.state, self.batches = state, batches
        self.signer = Signer()
        self.sender = Sender(
            self.signer, state.clock.now, lambda: state.get_faults().spoil_signature()
        )
        self.refused_events: set[str] = set()
        """Event names create refuses (400), to act out a service that knows fewer."""
        self.hooks: dict[str, Hook] = {}
        self.dynamic: dict[str, dict[str, Any]] = {}
        self._announced: set[str] = set()
        self._held: list[Message] = []
        self._held_since = 0.0
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._sweeper: threading.Thread | None = None
        self._serving = False

    @property
    def log(self) -> list[dict[str, Any]]:
        """One entry per delivery attempt (id, uri, event, batch, scheme, attempt, status...)."""
        return self.sender.log

    @property
    def retry_base_s(self) -> float:
        return self.sender.retry_base_s

    @retry_base_s.setter
    def retry_base_s(self, value: float) -> None:
        self.sender.retry_base_s = value

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Serving: the sweep and sender threads start with the first webhook or dynamic
        config (an emulator nobody registers a webhook with runs no extra thread)."""
        self._serving = True

    def _ensure_threads(self) -> None:
        with self._lock:
            if self._sweeper is not None or not self._serving:
                return
            self._stop.clear()
            self.sender.start()
            self._sweeper = threading.Thread(target=self._sweep_loop, name="emu-hooks", daemon=True)
            self._sweeper.start()

    def stop(self) -> None:
        self._serving = False
        self._stop.set()
        with self._lock:
            sweeper, self._sweeper = self._sweeper, None
        if sweeper is not None:
            sweeper.join(timeout=5)
            self.sender.stop()

    # --- the API ------------------------------------------------------------------------------

    def handle(self, method: str, args: list[str], body: dict[str, Any], query: Any) -> Any:
        """The answer (JSON) to a webhooks API call; ApiError on a bad one."""
        if not args:
            if method == "POST":
                return self._create(body)
            if method == "GET":
                return self._list(query)
        elif len(args) == 1:
            hook_id, _, verb = args[0].partition(":")
            hook = self._get(hook_id)
            action = {
                ("GET", ""): lambda: hook.to_json(),
                ("PATCH", ""): lambda: self._update(hook, body),
                ("DELETE", ""): lambda: self._delete(hook),
                ("POST", "ping"): lambda: self._ping(hook),
                ("POST", "rotateSigningSecret"): lambda: self._rotate(hook, body),
            }.get((method, verb))
            if action is not None:
                return action()
        raise ApiError(404, f"Method not found: {method} /webhooks/{'/'.join(args)}")

    def _create(self, body: dict[str, Any]) -> dict[str, Any]:
        uri = _check_uri(pick(body, "uri"))
        events = self._check_events(pick(body, "subscribedEvents"))
        now = self.state.clock.now()
        secret = new_secret()
        hook = Hook(new_id(16), pick(body, "name"), uri, events, now, now, secrets=[(secret, None)])
        self._quiet_ended()
        with self._lock:
            self.hooks[hook.id] = hook
        self._ensure_threads()
        return hook.to_json() | {"new_signing_secret": secret}

    def _list(self, query: Any) -> dict[str, Any]:
        with self._lock:
            hooks = sorted(self.hooks.values(), key=lambda h: h.created)
        size = int(((query.get("page_size") or query.get("pageSize") or ["0"])[0]) or 0) or 50
        start = int(((query.get("page_token") or query.get("pageToken") or ["0"])[0]) or 0)
        page = hooks[start : start + size]
        out: dict[str, Any] = {"webhooks": [h.to_json() for h in page]}
        if start + size < len(hooks):
            out["next_page_token"] = str(start + size)
        return out

    def _get(self, hook_id: str) -> Hook:
        with self._lock:
            hook = self.hooks.get(hook_id)
        if hook is None:
            raise ApiError(404, f"Webhook webhooks/{hook_id} not found.")
        return hook

    def _update(self, hook: Hook, body: dict[str, Any]) -> dict[str, Any]:
        if pick(body, "uri") is not None:
            hook.uri = _check_uri(pick(body, "uri"))
        if pick(body, "subscribedEvents") is not None:
            hook.events = self._check_events(pick(body, "subscribedEvents"))
        if pick(body, "name") is not None:
            hook.name = str(pick(body, "name"))
        state = pick(body, "state")
        if state is not None:
            if state not in ("enabled", "disabled"):
                raise ApiError(400, f"Invalid value for state: {state!r}")
            hook.state = state
        hook.updated = self.state.clock.now()
        return hook.to_json()

    def _delete(self, hook: Hook) -> dict[str, Any]:
        with self._lock:
            self.hooks.pop(hook.id, None)
        return {}

    def _ping(self, hook: Hook) -> dict[str, Any]:
        body = {"type": "webhook.ping", "version": "v1", "data": {"id": hook.id}}
        self._push([self._static_message(hook, "webhook.ping", None, body)])
        return {}

    def _rotate(self, hook: Hook, body: dict[str, Any]) -> dict[str, Any]:
        now = self.state.clock.now()
        behaviour = str(pick(body, "revocationBehavior") or "").lower()
        until = now if behaviour.endswith("immediately") else now + GRACE
        hook.secrets = [(s, until if u is None else min(u, until)) for s, u in hook.secrets]
        secret = new_secret()
        hook.secrets.append((secret, None))
        return {"secret": secret}

    def _check_events(self, events: Any) -> list[str]:
        if not isinstance(events, list) or not events:
            raise ApiError(400, "subscribed_events is required: a list of event names.")
        for name in events:
            if name not in KNOWN_EVENTS or name in self.refused_events:
                raise ApiError(
                    400, f"Invalid value for subscribed_events: {name!r} is not supported."
                )
        return [str(e) for e in events]

    def jwks(self) -> dict[str, Any]:
        return self.signer.jwks()

    # --- batches that end ---------------------------------------------------------------------

    def remember(self, batch: Batch, body: dict[str, Any]) -> None:
        """Keep a created batch's webhookConfig (its URIs replace the static webhooks)."""
        config = pick(pick(body, "batch"), "webhookConfig")
        if isinstance(config, dict) and pick(config, "uris"):
            self._quiet_ended()
            with self._lock:
                self.dynamic[batch.id] = config
            self._ensure_threads()

    def _watching(self) -> bool:
        with self._lock:
            return bool(self.hooks or self.dynamic)

    def _quiet_ended(self) -> None:
        """Batches that ended before anyone listened send nothing."""
        if self._watching():
            return
        self.batches.refresh_all()
        with self.state.lock:
            ended = [b.id for b in self.batches.items.values() if b.state not in LIVE]
        with self._lock:
            self._announced.update(ended)

    def _sweep_loop(self) -> None:
        while not self._stop.wait(SWEEP_S):
            if self._watching():
                self.sweep()
            self._release_held()

    def sweep(self) -> None:
        """Refresh every batch and send the messages of those that ended since last time."""
        self.batches.refresh_all()
        with self.state.lock:
            ended = [b for b in self.batches.items.values() if b.state not in LIVE]
        with self._lock:
            fresh = [b for b in ended if b.id not in self._announced]
            self._announced.update(b.id for b in fresh)
        messages: list[Message] = []
        for batch in sorted(fresh, key=lambda b: (b.ended or b.created, b.id)):
            messages.extend(self._messages(batch))
        self._push(messages)

    def _messages(self, batch: Batch) -> list[Message]:
        event = EVENTS[batch.state]
        data: dict[str, Any] = {"id": batch.id}
        if batch.state == "BATCH_STATE_SUCCEEDED" and batch.output_file:
            data["output_file_uri"] = batch.output_file
        if batch.state == "BATCH_STATE_FAILED":
            error = END_ERRORS[batch.state]
            data |= {"error_code": error["code"], "error_message": error["message"]}
        with self._lock:
            config = self.dynamic.pop(batch.id, None)
            hooks = [h for h in self.hooks.values() if h.state == "enabled" and event in h.events]
        if config is not None and isinstance(pick(config, "userMetadata"), dict):
            data["user_metadata"] = pick(config, "userMetadata")
        when = batch.ended or self.state.clock.now()
        body = {"type": event, "version": "v1", "timestamp": rfc3339(when), "data": data}
        name = f"batches/{batch.id}"
        if config is not None:
            msg_id = "msg_" + new_id(24)
            raw = json.dumps(body, separators=(",", ":")).encode()
            deadline = when + RETRY_FOR
            return [
                Message(msg_id, str(u), raw, event, name, deadline) for u in pick(config, "uris")
            ]
        return [self._static_message(h, event, name, body) for h in hooks]

    def _static_message(
        self, hook: Hook, event: str, batch: str | None, body: dict[str, Any]
    ) -> Message:
        raw = json.dumps(body, separators=(",", ":")).encode()
        deadline = self.state.clock.now() + RETRY_FOR
        clock = self.state.clock

        def secrets() -> list[str]:
            return hook.live_secrets(clock.now())

        return Message("msg_" + new_id(24), hook.uri, raw, event, batch, deadline, secrets)

    def _push(self, messages: list[Message]) -> None:
        """Hand messages to the sender, through the duplicate, delay and reorder faults."""
        faults = self.state.get_faults().webhooks
        copies = [m for m in messages for _ in range(1 + max(0, faults.duplicates))]
        if faults.reorder:
            with self._lock:
                if not self._held:
                    self._held_since = time.monotonic()
                self._held.extend(copies)
            return
        for message in copies:
            self.sender.add(message, faults.delay_seconds)

    def _release_held(self) -> None:
        faults = self.state.get_faults().webhooks
        with self._lock:
            if (
                not self._held
                or time.monotonic() - self._held_since < faults.reorder_window_seconds
            ):
                return
            held, self._held = self._held, []
        for message in reversed(held):
            self.sender.add(message, faults.delay_seconds)


class WebhookBatches(Batches):
    """The batch store with its webhooks, told about each create's webhookConfig."""

    def __init__(self, state: State) -> None:
        super().__init__(state)
        self.webhooks = Webhooks(state, self)

    def create(self, model: str, body: dict[str, Any], *args: Any, **kwargs: Any) -> Batch:
        batch = super().create(model, body, *args, **kwargs)
        self.webhooks.remember(batch, body)
        return batch


def _check_uri(uri: Any) -> str:
    """An https URI, or http to a loopback address (the emulator's allowance for tests)."""
    if not isinstance(uri, str) or not uri:
        raise ApiError(400, "uri is required.")
    parts = urlsplit(uri)
    if parts.scheme == "https" and parts.hostname:
        return uri
    if parts.scheme == "http" and _loopback(parts.hostname or ""):
        return uri
    raise ApiError(400, f"Invalid uri {uri!r}: it must be https (http only for loopback).")


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
