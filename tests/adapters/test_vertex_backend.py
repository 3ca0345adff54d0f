"""The Vertex AI backend's Cloud Storage side on fake-gcs-server, and its credentials:
request files create-only under the staging prefix, predictions read back from every JSONL
file of an output folder in name order (streamed lines, or one spool file), the staging probe,
and Application Default Credentials or a placeholder token."""

from __future__ import annotations

from pathlib import Path

import pytest
from google.cloud import storage

from pipeline.adapters.vertex import (
    PLACEHOLDER_TOKEN,
    VertexBackend,
    staging_names,
    vertex_credentials,
)
from pipeline.core.errors import AuthError, StorageError, TransientApiError
from pipeline.core.spec import ChannelSpec
from pipeline.emulator import Emulator

pytestmark = pytest.mark.gcs


def backend(bucket: str, base_url: str = "http://127.0.0.1:9") -> VertexBackend:
    channel = ChannelSpec("vertex", "demo-proj", "us-central1", f"gs://{bucket}/staging")
    credentials = vertex_credentials(base_url, placeholder=True)
    return VertexBackend(channel, credentials=credentials, base_url=base_url)


def put(bucket: str, name: str, data: bytes) -> None:
    storage.Client(project="t").bucket(bucket).blob(name).upload_from_string(data)


def test_request_files_are_written_create_only(gcs_env: str, tmp_path: Path) -> None:
    vertex = backend(gcs_env)
    path = tmp_path / "a.jsonl"
    path.write_bytes(b'{"key":"a","request":{}}\n')
    first = vertex.upload_jsonl(path, "nb-run-00001")
    assert first.name == f"gs://{gcs_env}/staging/nb-run-00001/input.jsonl"
    assert first.name == staging_names(f"gs://{gcs_env}/staging", "nb-run-00001")[0]
    assert vertex.upload_jsonl(path, "nb-run-00001") == first  # the same bytes: adopted
    path.write_bytes(b'{"key":"b","request":{}}\n')
    with pytest.raises(StorageError, match="already exists with different bytes"):
        vertex.upload_jsonl(path, "nb-run-00001")


def test_predictions_are_read_from_every_jsonl_file_in_name_order(
    gcs_env: str, tmp_path: Path
) -> None:
    folder = "staging/nb-run-00001/predictions/prediction-model-2026-11-28T00:00:00.000Z"
    put(gcs_env, f"{folder}/predictions_0002.jsonl", b'{"key":"c"}\n{"key":"d"}')  # no newline
    put(gcs_env, f"{folder}/predictions_0001.jsonl", b'{"key":"a"}\n\n{"key":"b"}\n')
    put(gcs_env, f"{folder}/errors.txt", b"not a prediction\n")
    put(gcs_env, "staging/nb-run-00001/predictions/elsewhere.jsonl", b'{"key":"x"}\n')
    vertex = backend(gcs_env)
    output = f"gs://{gcs_env}/{folder}"
    assert list(vertex.results(output)) == [
        b'{"key":"a"}\n',
        b'{"key":"b"}\n',
        b'{"key":"c"}\n',
        b'{"key":"d"}\n',
    ]
    spool = tmp_path / "spool.jsonl"
    written = vertex.download(output, spool)
    data = spool.read_bytes()
    assert data == b'{"key":"a"}\n\n{"key":"b"}\n{"key":"c"}\n{"key":"d"}\n'
    assert written == len(data)


def test_access_check_lists_jobs_then_probes_the_staging_prefix(gcs_env: str) -> None:
    with Emulator() as emu:
        backend(gcs_env, emu.url).check_access()
        assert [e["kind"] for e in emu.request_log] == ["vertex_list"]
        with pytest.raises(StorageError, match="gs://no-such-bucket-for-vertex"):
            backend("no-such-bucket-for-vertex", emu.url).check_access()
    with pytest.raises(TransientApiError, match="could not reach Vertex AI"):
        backend(gcs_env).check_access()


def test_credentials_placeholder_only_for_an_emulator(monkeypatch: pytest.MonkeyPatch) -> None:
    """No Application Default Credentials: a placeholder token for an emulator endpoint,
    an AuthError naming the fix for the real service."""
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", "/nonexistent/key.json")
    token = vertex_credentials("http://127.0.0.1:9", placeholder=False)
    assert token.token == PLACEHOLDER_TOKEN
    with pytest.raises(AuthError, match="gcloud auth application-default login") as exc:
        vertex_credentials(None, placeholder=False)
    assert exc.value.exit_code == 2
