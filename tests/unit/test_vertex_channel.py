"""The Vertex AI channel in the pure core (CONTRACT section 10): `[channel]` in the spec, the
channel's limits and prices from the data file, shard limits, the plan, and the per-line
`status` of Vertex prediction lines."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.core import shard
from pipeline.core.catalog import load_catalog
from pipeline.core.errors import SpecError
from pipeline.core.results import classify_line, classify_status
from pipeline.core.spec import ChannelSpec, spec_record
from pipeline.core.spec_parse import parse_spec
from pipeline.shell.planning import make_plan

CAT = load_catalog()
BASE = """\
name = "shots"
model = "gemini-3-pro-image-preview"
[input]
path = "p.csv"
id_column = "sku"
prompt = "Photo of {title}"
[image]
size = "1K"
[output]
uri = "out"
"""
VERTEX = """
[channel]
kind = "vertex"
project = "my-project"
location = "europe-west4"
staging_uri = "gs://my-bucket/nb/"
"""


def parse(text: str, defaults: dict[str, str] | None = None, folder: Path = Path("/jobs")):
    return parse_spec(text, folder / "job.toml", CAT, defaults)


def test_vertex_channel_is_parsed_and_resolved() -> None:
    spec = parse(BASE + VERTEX)
    assert spec.channel == ChannelSpec("vertex", "my-project", "europe-west4", "gs://my-bucket/nb")
    assert ChannelSpec.from_json(spec.channel.to_json()) == spec.channel


def test_project_and_location_default_from_the_environment() -> None:
    text = BASE + '[channel]\nkind = "vertex"\nstaging_uri = "gs://b/p"\n'
    spec = parse(text, {"project": "env-proj", "location": "us-central1"})
    assert (spec.channel.project, spec.channel.location) == ("env-proj", "us-central1")
    explicit = parse(BASE + VERTEX, {"project": "env-proj", "location": "us-central1"})
    assert explicit.channel.project == "my-project"


@pytest.mark.parametrize(
    ("table", "needle"),
    [
        ('kind = "vertex"\nlocation = "l1"\nstaging_uri = "gs://b/p"', "GOOGLE_CLOUD_PROJECT"),
        ('kind = "vertex"\nproject = "p1"\nstaging_uri = "gs://b/p"', "GOOGLE_CLOUD_LOCATION"),
        ('kind = "vertex"\nproject = "p1"\nlocation = "l1"', "channel.staging_uri"),
        ('kind = "vertex"\nproject = "p1"\nlocation = "l1"\nstaging_uri = "/tmp/x"', "gs://"),
        ('kind = "bedrock"', "gemini, vertex"),
        ('kind = "gemini"\nproject = "p1"', 'kind = "vertex"'),
        ('kind = "vertex"\nregion = "x"', "channel.region: unknown key"),
    ],
)
def test_bad_channel_tables_exit_2(table: str, needle: str) -> None:
    with pytest.raises(SpecError) as exc:
        parse(BASE + "[channel]\n" + table + "\n")
    assert needle in str(exc.value)
    assert exc.value.exit_code == 2


def test_sizes_vertex_batch_does_not_serve_exit_2() -> None:
    with pytest.raises(SpecError) as exc:
        parse(BASE.replace('size = "1K"', 'size = "2K"') + VERTEX)
    message = str(exc.value)
    assert "image.size" in message and "Vertex AI batch prediction serves 1K" in message
    assert message.endswith("valid: 1K")
    # The Developer API serves 2K.
    assert parse(BASE.replace('size = "1K"', 'size = "2K"')).image.size == "2K"


def test_webhooks_are_not_on_vertex() -> None:
    text = BASE + VERTEX + '[notify]\nwebhook_url = "https://example.com/hook"\n'
    with pytest.raises(SpecError) as exc:
        parse(text)
    assert "notify.webhook_url" in str(exc.value) and "not on Vertex" in str(exc.value)


def test_more_requests_per_batch_than_a_vertex_job_holds_exit_2() -> None:
    text = BASE + "[limits]\nmax_requests_per_batch = 200001\n" + VERTEX
    with pytest.raises(SpecError) as exc:
        parse(text)
    assert "200,000 requests" in str(exc.value)


def test_a_gemini_spec_keeps_its_record_and_so_its_run_identity() -> None:
    """Adding [channel] changed nothing for specs without one: no `channel` in the record."""
    record = spec_record(parse(BASE))
    assert "channel" not in record
    assert set(record) == {
        "name",
        "model",
        "fallback_model",
        "input",
        "image",
        "output",
        "limits",
        "source",
    }
    assert spec_record(parse(BASE + VERTEX))["channel"]["kind"] == "vertex"


def test_data_file_gives_vertex_limits_sizes_and_prices_with_sources() -> None:
    limits = CAT.limits("vertex")
    assert limits is not None
    assert (limits.max_requests_per_job, limits.max_file_bytes) == (200_000, 1_000_000_000)
    assert limits.enqueued_token_quota is False
    assert limits.batch_image_sizes == ("1K",)
    assert "batch-inference" in limits.source and limits.prices == "developer"
    assert "pricing" in limits.prices_source
    vertex = CAT.for_channel("vertex")
    for name in CAT.names():
        info, served = CAT.get(name), vertex.get(name)
        assert served.sizes == tuple(s for s in info.sizes if s == "1K")
        assert (served.batch, served.standard) == (info.batch, info.standard)
    assert vertex.get("gemini-2.5-flash-image").size_limit == ""  # takes no size anyway
    assert CAT.for_channel("gemini") is CAT


def test_shard_limits_on_vertex() -> None:
    limits = shard.limits_for(parse(BASE + VERTEX), CAT)
    assert limits.max_requests == 200_000
    assert limits.max_bytes == 950_000_000
    assert limits.max_tokens == shard.NO_TOKEN_QUOTA
    small = parse(BASE + "[limits]\nmax_requests_per_batch = 10\n" + VERTEX)
    assert shard.limits_for(small, CAT).max_requests == 10


def test_plan_on_vertex_rejects_per_row_sizes_and_has_one_quota_window(tmp_path: Path) -> None:
    (tmp_path / "p.csv").write_text(
        "sku,title,image_size\na,a mug,\nb,a lamp,2K\nc,a vase,1K\n", encoding="utf-8"
    )
    text = BASE + "[limits]\nmax_enqueued_tokens = 1000\n" + VERTEX
    plan = make_plan(parse(text, folder=tmp_path), CAT)
    assert (plan.items, plan.rejected, plan.batches) == (2, 1, 1)
    (reject,) = plan.rejects
    assert reject.key == "b" and "2K" in reject.reason
    assert "Vertex AI batch prediction serves 1K images only" in reject.reason
    shown = plan.asdict()
    assert shown["quota_windows"] == 1  # no enqueued-token quota: the spec's is ignored
    assert shown["max_enqueued_tokens"] is None and shown["channel"] == "vertex"


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        ('{"error": {"code": 400, "message": "bad", "status": "INVALID_ARGUMENT"}}', "final"),
        ('{"code": 13, "message": "internal"}', "retry"),
        ("PERMISSION_DENIED: the service agent cannot read gs://b/x.png", "final"),
        ("NOT_FOUND: gs://b/x.png", "final"),
        ("FAILED_PRECONDITION", "final"),
        ("RESOURCE_EXHAUSTED: try later", "retry"),
        ("UNAVAILABLE", "retry"),
        ("HTTP 404 Not Found", "final"),
        ("code: 429 Too Many Requests", "retry"),
        ("400 Bad Request", "final"),
        ("503 Service Unavailable", "retry"),
        ("Internal error encountered.", "retry"),
        ("something went wrong", "retry"),
    ],
)
def test_vertex_line_status_is_classified(status: str, kind: str) -> None:
    outcome = classify_line({"key": "k", "status": status, "request": {}})
    assert (outcome.key, outcome.kind) == ("k", kind)
    assert outcome.image_b64 is None and outcome.reason
    assert classify_status(status)[0] == kind


def test_vertex_success_line_is_read_like_a_developer_line() -> None:
    response = {
        "candidates": [
            {"content": {"parts": [{"inlineData": {"mimeType": "image/png", "data": "AAAA"}}]}}
        ],
        "usageMetadata": {"promptTokenCount": 7, "candidatesTokenCount": 1290},
    }
    line = {"key": "k", "status": "", "processed_time": "t", "request": {}, "response": response}
    outcome = classify_line(line)
    assert outcome.kind == "succeeded" and outcome.image_b64 == "AAAA"
    assert outcome.usage is not None and outcome.usage.input == 7
