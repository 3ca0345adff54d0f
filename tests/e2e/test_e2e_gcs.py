"""`nanobatch run` to gs:// on fake-gcs-server: objects, content types and metadata."""

from __future__ import annotations

import csv
import io
from decimal import Decimal
from typing import Any

import pyarrow.parquet as pq
import pytest
from e2e_checks import sha256
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage

pytestmark = pytest.mark.gcs

METADATA_KEYS = {
    "nanobatch-run",
    "nanobatch-key",
    "nanobatch-model",
    "nanobatch-prompt-sha256",
    "nanobatch-input-tokens",
    "nanobatch-output-image-tokens",
    "nanobatch-output-text-tokens",
    "nanobatch-thinking-tokens",
    "nanobatch-cost-usd",
}


def _client() -> storage.Client:
    return storage.Client(project="nanobatch-test", credentials=AnonymousCredentials())


def test_run_to_gcs(e2e: Any, gcs_env: str) -> None:
    """Images are image/png with the contract's metadata; manifest and rejects beside them."""
    bucket_name = gcs_env
    e2e.write_spec(output=f"gs://{bucket_name}/{{job}}/{{date}}")
    result = e2e.run("--json")
    assert result.code == 0, result.stderr
    report = result.json()
    bucket = _client().bucket(bucket_name)
    items = report["items"]
    assert len(items) == 4
    prefix = None
    for item in items:
        assert item["uri"].startswith(f"gs://{bucket_name}/e2e-job/")
        name = item["uri"].removeprefix(f"gs://{bucket_name}/")
        prefix = name.rsplit("/", 1)[0]
        blob = bucket.get_blob(name)
        assert blob is not None, name
        assert blob.content_type == "image/png"
        data = blob.download_as_bytes()
        assert sha256(data) == item["sha256"]
        meta = blob.metadata or {}
        assert set(meta) >= METADATA_KEYS, sorted(meta)
        assert meta["nanobatch-run"] == report["run"]
        assert meta["nanobatch-key"] == item["key"]
        assert meta["nanobatch-model"] == item["model"]
        assert len(meta["nanobatch-prompt-sha256"]) == 64
        assert int(meta["nanobatch-input-tokens"]) == item["input_tokens"]
        assert int(meta["nanobatch-output-image-tokens"]) == item["output_image_tokens"]
        assert int(meta["nanobatch-output-text-tokens"]) == item["output_text_tokens"]
        assert int(meta["nanobatch-thinking-tokens"]) == item["thinking_tokens"]
        cost = meta["nanobatch-cost-usd"]
        assert Decimal(cost) == Decimal(str(item["cost_usd"])), (cost, item["cost_usd"])
        assert "e" not in cost.lower()  # a plain decimal string, not scientific notation

    manifest = bucket.get_blob(f"{prefix}/manifest.parquet")
    assert manifest is not None
    assert manifest.content_type == "application/vnd.apache.parquet"
    table = pq.read_table(io.BytesIO(manifest.download_as_bytes()))
    assert sorted(table.column("key").to_pylist()) == sorted(i["key"] for i in items)

    rejects = bucket.get_blob(f"{prefix}/rejects.csv")
    assert rejects is not None
    assert (rejects.content_type or "").startswith("text/csv")
    rows = list(csv.reader(io.StringIO(rejects.download_as_text())))
    assert rows[0] == ["row", "key", "reason"]
    assert [r[:2] for r in rows[1:]] == [["5", "stool-202"]]


def test_missing_bucket_spends_nothing(e2e: Any, gcs_env: str) -> None:
    """submit to a bucket that does not exist exits 1 naming it, before any API call."""
    missing = f"{gcs_env}-missing"
    e2e.write_spec(output=f"gs://{missing}/{{job}}")
    result = e2e.invoke("submit", str(e2e.spec_path))
    assert result.code == 1, (result.stdout, result.stderr)
    assert missing in result.stderr
    assert result.stdout == ""
    assert e2e.kinds() == []
    status = e2e.invoke("status", "--json")
    assert status.json() == {"runs": []}
