"""Vertex AI batch prediction through google-genai in Vertex mode: the second BatchBackend
(CONTRACT section 10). Request files go to Cloud Storage under the run's `staging_uri`
(create-only), jobs are created, read, listed and cancelled through the SDK, and their
predictions are read back from the job's output directory in Cloud Storage.

Owns the Vertex client (Application Default Credentials; a placeholder token for an
emulator reached through GOOGLE_VERTEX_BASE_URL when there are none, or always under
`run --emulator`) and turning SDK, auth and storage errors into nanobatch errors, as
`gemini` does for the Developer API. Project and location are always passed to the SDK
as arguments: it ignores a base URL otherwise (reference/vertex-batch.md section 7).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, TypeVar

import httpx2
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from pipeline.adapters.backend import RemoteBatch, RemoteFile
from pipeline.adapters.gemini import SdkBatches
from pipeline.adapters.storage.retry import is_transient_gcs_error, retry_call
from pipeline.core.errors import ApiError, AuthError, StorageError, TransientApiError
from pipeline.core.spec import ChannelSpec

if TYPE_CHECKING:
    from google.cloud.storage import Client

T = TypeVar("T")
SCOPES = ["https://www.googleapis.com/auth/cloud-platform"]
PLACEHOLDER_TOKEN = "nanobatch-placeholder-token"
"""Sent to an emulator instead of real credentials (never refreshed: it has no expiry)."""
INPUT_NAME = "input.jsonl"
OUTPUT_DIR = "predictions"
_CREDENTIALS_FIX = (
    "run `gcloud auth application-default login` (or set GOOGLE_APPLICATION_CREDENTIALS to a "
    "service-account key file); the account needs roles/aiplatform.user on the project"
)


def staging_names(staging_uri: str, display_name: str) -> tuple[str, str]:
    """(request file uri, output uri prefix) of a batch: both under the staging prefix, in
    a folder named after the batch's display name (unique, so never shared)."""
    base = f"{staging_uri.rstrip('/')}/{display_name}"
    return f"{base}/{INPUT_NAME}", f"{base}/{OUTPUT_DIR}"


def split_gs(uri: str) -> tuple[str, str]:
    """("bucket", "key or prefix") of gs://bucket/key."""
    bucket, _, key = uri.removeprefix("gs://").partition("/")
    return bucket, key.strip("/")


class VertexBackend(SdkBatches):
    """BatchBackend over google-genai in Vertex mode and Cloud Storage."""

    def __init__(
        self,
        channel: ChannelSpec,
        *,
        credentials: Any,
        base_url: str | None = None,
        storage_client: Client | None = None,
    ) -> None:
        assert channel.project and channel.location and channel.staging_uri
        self.channel = channel
        options = types.HttpOptions(base_url=base_url, timeout=120_000) if base_url else None
        self._client = genai.Client(
            vertexai=True,
            project=channel.project,
            location=channel.location,
            credentials=credentials,
            http_options=options,
        )
        self._storage = storage_client

    # ── the port ─────────────────────────────────────────────────────────────

    def check_access(self) -> None:
        """Cheap calls that prove the credentials are accepted, Vertex AI is reachable and
        the staging prefix can be written (a probe object, created and deleted). Spends
        nothing."""
        from pipeline.adapters.storage.gcs import GcsStore

        self._probe()
        staging = self.channel.staging_uri or ""
        GcsStore(staging, project=self.channel.project, client=self._storage).check_writable()

    def upload_jsonl(self, path: Path, display_name: str) -> RemoteFile:
        """Write the request file under the staging prefix, create-only: a file already there
        with the same bytes (an earlier try) is adopted, other bytes are refused."""
        from pipeline.adapters.storage.gcs import GcsStore
        from pipeline.core.errors import ObjectConflict

        staging = self.channel.staging_uri or ""
        uri, _ = staging_names(staging, display_name)
        name = uri.removeprefix(staging.rstrip("/") + "/")
        store = GcsStore(staging, project=self.channel.project, client=self._storage)
        try:
            stored = store.put_file_once(
                name, path, content_type="application/jsonl", metadata={"nanobatch-batch": name}
            )
        except ObjectConflict as exc:
            raise StorageError(
                f"{exc}: a request file of another batch with this name is in the way"
            ) from None
        return RemoteFile(name=stored.uri, expires_at=None)

    def upload_image(
        self, stream: io.IOBase, mime: str, name: str, display_name: str
    ) -> RemoteFile:
        """Reference images travel through the Files API, which Vertex AI does not have (a
        Vertex spec with [input] images is refused when it is read)."""
        raise ApiError(
            "reference images are not sent on the Vertex AI channel; use the Gemini channel",
            code=400,
        )

    def get_file(self, name: str) -> RemoteFile | None:
        return None

    def create_batch(
        self,
        model: str,
        file_name: str,
        display_name: str,
        webhook: tuple[str, dict[str, str]] | None = None,
    ) -> RemoteBatch:
        if webhook is not None:  # a Vertex spec refuses [notify] webhook_url; never sent
            raise ApiError("webhooks are for the Gemini Developer API, not Vertex AI", code=400)
        _, dest = staging_names(self.channel.staging_uri or "", display_name)
        config = types.CreateBatchJobConfig(display_name=display_name, dest=dest)
        return self._create(model, file_name, config)

    def download(self, file_name: str, destination: Path) -> int:
        """Every prediction file under the job's output directory `file_name` (gs://...),
        in name order, each whole and ending in a newline, streamed into `destination`.
        Returns the bytes written."""
        out = _Tail(destination.open("wb"))
        try:
            for blob in self._output_blobs(file_name):
                # Not retried here: a broken download leaves a partial spool, and the
                # harvest starts the whole download again on a later tick.
                self._gcs(partial(blob.download_to_file, out, retry=None), file_name, tries=1)
                if out.last not in (b"", b"\n"):
                    out.write(b"\n")
        finally:
            out.close()
        return out.written

    def results(self, output_dir: str) -> Iterator[bytes]:
        """The lines of every prediction file under `output_dir`, files in name order, each
        in line order, read from Cloud Storage in bounded memory."""
        for blob in self._output_blobs(output_dir):
            reader = self._gcs(partial(blob.open, "rb", chunk_size=8 << 20), output_dir)
            with reader:
                for line in reader:
                    if line.strip():
                        yield line if line.endswith(b"\n") else line + b"\n"

    # ── internals ───────────────────────────────────────────────────────────

    def _output_blobs(self, output_dir: str) -> list[Any]:
        bucket, prefix = split_gs(output_dir)
        client = self._storage_client()
        blobs = self._gcs(
            lambda: list(client.list_blobs(bucket, prefix=f"{prefix}/" if prefix else None)),
            output_dir,
        )
        # Every JSONL file the job wrote (predictions.jsonl, predictions_0001.jsonl, ...):
        # the layout is not fixed by the documentation, so no single name is assumed.
        return sorted((b for b in blobs if b.name.endswith(".jsonl")), key=lambda b: b.name)

    def _storage_client(self) -> Client:
        if self._storage is None:
            from google.cloud import storage

            self._storage = storage.Client(project=self.channel.project)
        return self._storage

    def _gcs(self, fn: Callable[[], T], where: str, tries: int = 5) -> T:
        from pipeline.adapters.storage.gcs import storage_error

        try:
            return retry_call(fn, is_transient=is_transient_gcs_error, tries=tries)
        except Exception as exc:
            bucket, _ = split_gs(where)
            error = storage_error(exc, "read predictions from", bucket, tries)
            if error is None:
                raise
            if is_transient_gcs_error(exc):
                raise TransientApiError(str(error)) from None
            raise error from exc

    def _remote(self, job: Any) -> RemoteBatch:
        return _remote(job)

    def _call(self, fn: Callable[[], T]) -> T:
        from google.auth import exceptions as auth_exceptions

        try:
            return fn()
        except genai_errors.APIError as exc:
            raise _api_error(exc) from None
        except auth_exceptions.RefreshError as exc:
            raise AuthError(
                f"Vertex AI credentials could not be refreshed ({exc}); {_CREDENTIALS_FIX}"
            ) from None
        except auth_exceptions.TransportError as exc:
            raise TransientApiError(f"could not reach the Google token endpoint: {exc}") from None
        except (httpx2.HTTPError, OSError) as exc:
            raise TransientApiError(f"could not reach Vertex AI: {exc}") from None


class _Tail:
    """A file that remembers its last byte and how much was written."""

    def __init__(self, fh: IO[bytes]) -> None:
        self._fh, self.last, self.written = fh, b"", 0

    def write(self, data: bytes) -> int:
        if data:
            self._fh.write(data)
            self.last = data[-1:]
            self.written += len(data)
        return len(data)

    def flush(self) -> None:
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()


def _remote(job: Any) -> RemoteBatch:
    state = job.state.name if job.state is not None else "JOB_STATE_UNSPECIFIED"
    info = job.output_info
    output = info.gcs_output_directory if info is not None else None
    return RemoteBatch(
        name=job.name or "",
        display_name=job.display_name,
        state=str(state),
        output_file=output or None,
        end_time=job.end_time,
    )


def _api_error(exc: genai_errors.APIError) -> ApiError:
    code = int(exc.code or 0)
    text = f"{exc.status}: {exc.message}"[:500]
    if code == 429 or code >= 500:
        return TransientApiError(f"Vertex AI {code} {text}", code=code)
    if code == 401:
        return AuthError(f"Vertex AI refused the credentials ({code} {text}); {_CREDENTIALS_FIX}")
    return ApiError(f"Vertex AI {code} {text}", code=code)


def vertex_credentials(base_url: str | None, placeholder: bool) -> Any:
    """Application Default Credentials; a placeholder token for an emulator (`base_url`)
    when there are none, or when `placeholder` says so. AuthError otherwise."""
    import google.auth
    import google.oauth2.credentials
    from google.auth import exceptions as auth_exceptions

    def stand_in() -> Any:
        return google.oauth2.credentials.Credentials(token=PLACEHOLDER_TOKEN)

    if placeholder and base_url:
        return stand_in()
    try:
        credentials, _ = google.auth.default(scopes=SCOPES)
    except auth_exceptions.DefaultCredentialsError:
        if base_url:
            return stand_in()
        raise AuthError(
            f"no Application Default Credentials for Vertex AI: {_CREDENTIALS_FIX}"
        ) from None
    return credentials


def make_vertex_backend(
    channel: ChannelSpec, base_url: str | None, *, placeholder: bool = False
) -> VertexBackend:
    """The backend of a Vertex run; AuthError naming the fix when there are no credentials."""
    credentials = vertex_credentials(base_url, placeholder)
    return VertexBackend(channel, credentials=credentials, base_url=base_url)
