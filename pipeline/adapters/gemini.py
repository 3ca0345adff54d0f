"""The Gemini Batch API through google-genai: upload a JSONL file, create, get, list and
cancel batches, and stream a results file to disk. With `vertex`, the only importer of
`google.genai` (a third of a second: commands that need no backend, such as `status`, never
import this module; the port they see is `backend`).

SDK errors become nanobatch errors here and nowhere else: 429 and 5xx (and connection
failures) are TransientApiError, a refused key is AuthError, other 4xx ApiError. No SDK type
crosses this module's edge.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx2
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from pipeline.adapters import wire
from pipeline.adapters.backend import RemoteBatch, RemoteFile, RemoteWebhook
from pipeline.core.errors import ApiError, AuthError, TransientApiError

T = TypeVar("T")


class SdkBatches:
    """Batch jobs through a google-genai client, the same calls on either channel: create,
    get, list and cancel, and the cheap probe `check_access` starts with. The hooks:
    `_client` (the SDK client), `_call` (runs an SDK call, its errors made nanobatch's) and
    `_remote` (an SDK job as a RemoteBatch: the two channels name the output differently)."""

    _client: genai.Client

    def _call(self, fn: Callable[[], T]) -> T:
        raise NotImplementedError

    def _remote(self, job: Any) -> RemoteBatch:
        raise NotImplementedError

    def _probe(self) -> None:
        """A one-entry batch list: the credentials are accepted and the service reachable."""
        self._call(lambda: self._client.batches.list(config={"page_size": 1}))

    def _create(self, model: str, src: str, config: types.CreateBatchJobConfig) -> RemoteBatch:
        return self._remote(
            self._call(lambda: self._client.batches.create(model=model, src=src, config=config))
        )

    def get_batch(self, name: str) -> RemoteBatch:
        return self._remote(self._call(lambda: self._client.batches.get(name=name)))

    def list_batches(self, page_size: int = 100) -> Iterator[RemoteBatch]:
        pager = self._call(lambda: self._client.batches.list(config={"page_size": page_size}))
        iterator = iter(pager)
        while True:
            job = self._call(lambda: next(iterator, None))
            if job is None:
                return
            yield self._remote(job)

    def cancel_batch(self, name: str) -> None:
        self._call(lambda: self._client.batches.cancel(name=name))


class GeminiBackend(SdkBatches):
    """BatchBackend over the real SDK (and so over the emulator through base_url)."""

    def __init__(self, api_key: str, key_variable: str, base_url: str | None = None) -> None:
        options = types.HttpOptions(base_url=base_url, timeout=120_000) if base_url else None
        self._key = api_key
        self._key_variable = key_variable
        # The Gemini Developer API whatever GOOGLE_GENAI_USE_VERTEXAI (or _ENTERPRISE) says:
        # left to the environment, the SDK would switch to Vertex AI and every batch name
        # would be refused (CONTRACT section 10: only a spec chooses the channel).
        self._client = genai.Client(vertexai=False, api_key=api_key, http_options=options)
        api = self._client._api_client
        # Read from GOOGLE_CLOUD_PROJECT/LOCATION even here; Vertex-only, so they must not leak.
        api.project = api.location = None
        http = api._http_options
        self._base = (http.base_url or "https://generativelanguage.googleapis.com/").rstrip("/")
        self._version = http.api_version or "v1beta"

    def check_access(self) -> None:
        """One cheap call (a one-entry batch list) that proves the key is accepted and the
        service reachable: AuthError, TransientApiError or ApiError otherwise. Spends nothing."""
        self._probe()

    def upload_jsonl(self, path: Path, display_name: str) -> RemoteFile:
        config = types.UploadFileConfig(mime_type="jsonl", display_name=display_name[:120])
        file = self._call(lambda: self._client.files.upload(file=str(path), config=config))
        return RemoteFile(name=file.name or "", expires_at=file.expiration_time)

    def upload_image(
        self, stream: io.IOBase, mime: str, name: str, display_name: str
    ) -> RemoteFile:
        """Upload a reference image from a seekable stream as `name` (files/<id>, chosen by
        the caller so a lost answer can be found again); ApiError 409 when it exists."""
        config = types.UploadFileConfig(mime_type=mime, name=name, display_name=display_name[:120])
        file = self._call(lambda: self._client.files.upload(file=stream, config=config))
        return _file(file)

    def get_file(self, name: str) -> RemoteFile | None:
        """The file, or None when the service says it does not exist (403 or 404: an expired
        or missing file answers 403)."""
        try:
            return _file(self._call(lambda: self._client.files.get(name=name)))
        except ApiError as exc:
            if exc.code in (403, 404) and not isinstance(exc, AuthError):
                return None
            raise

    def create_batch(
        self,
        model: str,
        file_name: str,
        display_name: str,
        webhook: tuple[str, dict[str, str]] | None = None,
    ) -> RemoteBatch:
        """Create a file batch; `webhook` (URL, user_metadata) becomes its webhook_config."""
        config = types.CreateBatchJobConfig(display_name=display_name)
        if webhook is not None:
            url, metadata = webhook
            config.webhook_config = types.WebhookConfig(uris=[url], user_metadata=metadata)
        return self._create(model, file_name, config)

    def download(self, file_name: str, destination: Path) -> int:
        """Stream a results file to `destination` (a plain GET in blocks of megabytes: the
        SDK's download, and an httpx stream, are slower for big files and take the
        interpreter far more often). Returns the number of bytes written."""
        file_id = file_name.removeprefix("files/")
        url = f"{self._base}/{self._version}/files/{file_id}:download"
        headers = {"x-goog-api-key": self._key}
        try:
            return wire.get_to_file(url, {"alt": "media"}, headers, destination)
        except wire.StatusError as exc:
            raise _http_error(exc.status, exc.text, self._key_variable) from None
        except wire.BrokenOff as exc:
            raise TransientApiError(f"download of {file_name} broke off: {exc}") from None

    def _remote(self, job: Any) -> RemoteBatch:
        return _remote(job)

    def _call(self, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except genai_errors.APIError as exc:
            raise _api_error(exc, self._key_variable) from None
        except (httpx2.HTTPError, OSError) as exc:
            raise TransientApiError(
                f"could not reach the Gemini API at {self._base}: {exc}"
            ) from None

    def _call_nextgen(self, fn: Callable[[], T]) -> T:
        """`_call` for `webhooks.*`, which the SDK serves through its NextGen client and its
        own errors (imported here: some 350 modules that only these commands need)."""
        from google.genai import _interactions

        try:
            return self._call(fn)
        except _interactions.APIStatusError as exc:
            raise _http_error(exc.status_code or 0, str(exc), self._key_variable) from None
        except _interactions.APIConnectionError as exc:
            raise TransientApiError(f"could not reach the Gemini API: {exc}") from None

    # ── static webhooks (the project's WebhookService) ──────────────────────

    def create_webhook(self, uri: str, events: list[str], name: str | None) -> RemoteWebhook:
        """Register a static webhook; the answer carries its signing secret, once."""
        # The SDK's Literal lacks batch.cancelled (reference/webhooks.md section 2); the
        # names go out as they are.
        wanted: Any = events
        made = self._call_nextgen(
            lambda: self._client.webhooks.create(uri=uri, subscribed_events=wanted, name=name)
        )
        return _webhook(made, secret=made.new_signing_secret)

    def list_webhooks(self) -> Iterator[RemoteWebhook]:
        token: str | None = None
        while True:
            page = self._list_page(token)
            yield from (_webhook(w) for w in page.webhooks or [])
            token = page.next_page_token
            if not token:
                return

    def _list_page(self, token: str | None) -> Any:
        return self._call_nextgen(
            lambda: self._client.webhooks.list(page_size=100, page_token=token)
        )

    def delete_webhook(self, webhook_id: str) -> None:
        self._call_nextgen(lambda: self._client.webhooks.delete(id=webhook_id))


def _file(file: Any) -> RemoteFile:
    state = file.state.name if file.state is not None else None
    return RemoteFile(
        name=file.name or "", expires_at=file.expiration_time, uri=file.uri, state=state
    )


def _remote(job: Any) -> RemoteBatch:
    state = job.state.name if job.state is not None else "JOB_STATE_UNSPECIFIED"
    dest = job.dest.file_name if job.dest is not None else None
    return RemoteBatch(
        name=job.name or "",
        display_name=job.display_name,
        state=str(state),
        output_file=dest,
        end_time=job.end_time,
    )


def _webhook(hook: Any, secret: str | None = None) -> RemoteWebhook:
    return RemoteWebhook(
        id=hook.id or "",
        uri=hook.uri,
        events=tuple(str(e) for e in hook.subscribed_events or ()),
        state=str(hook.state or ""),
        name=hook.name,
        secret=secret,
    )


def _api_error(exc: genai_errors.APIError, key_variable: str) -> ApiError:
    return _http_error(int(exc.code or 0), f"{exc.status}: {exc.message}", key_variable)


def _http_error(code: int, text: str, key_variable: str) -> ApiError:
    text = text[:500]
    if code == 429 or code >= 500:
        return TransientApiError(f"Gemini API {code} {text}", code=code)
    if code == 401 or "API_KEY_INVALID" in text or "API key not valid" in text:
        return AuthError(
            f"the Gemini API refused the key in {key_variable} ({code}); "
            f"set {key_variable} to a valid key",
            code=code,
        )
    if code == 403 and "unregistered callers" in text:
        return AuthError(f"no API key was sent; set {key_variable}", code=code)
    return ApiError(f"Gemini API {code} {text}", code=code)


def make_backend(api_key: str | None, key_variable: str, base_url: str | None) -> GeminiBackend:
    """The real backend; AuthError naming the variable when no key is set."""
    if not api_key:
        raise AuthError(
            "no Gemini API key: set GEMINI_API_KEY (or GOOGLE_API_KEY), "
            "or use `nanobatch run SPEC --emulator` to try nanobatch without one"
        )
    return GeminiBackend(api_key, key_variable, base_url)
