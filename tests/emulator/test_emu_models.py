"""Text and embedding models, countTokens, and the 404 for a model the service does not serve."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

import pytest
from emu_helpers import PRO, finish, http, line_results, request, results, upload
from google.genai import errors

from pipeline.emulator import Emulator

TEXT = "gemini-2.5-flash"
EMBED = "gemini-embedding-001"


def _docs_inline_requests() -> list[dict[str, Any]]:
    """The Batch API guide's first example: two inline requests to gemini-2.5-flash."""
    return [
        {"contents": [{"parts": [{"text": "Tell me a one-sentence joke."}], "role": "user"}]},
        {"contents": [{"parts": [{"text": "Why is the sky blue?"}], "role": "user"}]},
    ]


def test_text_model_inline_batch_from_the_docs(emu: Emulator, client: Any) -> None:
    texts = []
    for name in ("inlined-requests-job-1", "inlined-requests-job-2"):
        job = client.batches.create(
            model=f"models/{TEXT}", src=_docs_inline_requests(), config={"display_name": name}
        )
        job = finish(emu, client, job.name)
        assert job.state.name == "JOB_STATE_SUCCEEDED"
        answers = [r.response for r in job.dest.inlined_responses]
        texts.append([a.text for a in answers])
        for answer, prompt_tokens in zip(answers, (7, 5), strict=True):
            usage = answer.usage_metadata
            assert usage.prompt_token_count == prompt_tokens
            assert usage.candidates_token_count > 0 and usage.thoughts_token_count > 0
            total = prompt_tokens + usage.candidates_token_count + usage.thoughts_token_count
            assert usage.total_token_count == total
            assert answer.candidates[0].finish_reason.name == "STOP"
            assert answer.model_version == TEXT
    assert texts[0] == texts[1]  # deterministic
    assert texts[0][0] != texts[0][1] and all(texts[0])


def test_text_model_file_batch_and_its_refusals(emu: Emulator, client: Any, tmp_path: Path) -> None:
    capped = {"contents": [{"parts": [{"text": "Write an essay."}]}]}
    capped["generationConfig"] = {"maxOutputTokens": 60}
    rows = [
        {"key": "plain", "request": {"contents": [{"parts": [{"text": "Why is the sky blue?"}]}]}},
        {"key": "capped", "request": capped},
        {"key": "image", "request": request("a cat")},
    ]
    out = line_results(emu, client, tmp_path, rows, model=TEXT)
    assert out["plain"]["response"]["candidates"][0]["content"]["parts"][0]["text"]
    cut = out["capped"]["response"]
    usage = cut["usageMetadata"]
    assert cut["candidates"][0]["finishReason"] == "MAX_TOKENS"
    assert usage.get("candidatesTokenCount", 0) + usage["thoughtsTokenCount"] == 60
    assert out["image"]["error"] == {
        "code": 3,
        "message": "Model does not support the requested response modalities: image",
    }


def test_embeddings_batch_inline_through_the_sdk(emu: Emulator, client: Any) -> None:
    src = {"inlined_requests": {"contents": ["hello world", "a second text"]}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # create_embeddings is experimental
        job = client.batches.create_embeddings(model=EMBED, src=src, config={"display_name": "e"})
        small = client.batches.create_embeddings(
            model=EMBED,
            src={
                "inlined_requests": {
                    "contents": ["hello world"],
                    "config": {"output_dimensionality": 768, "task_type": "RETRIEVAL_DOCUMENT"},
                }
            },
        )
    job = finish(emu, client, job.name)
    assert job.state.name == "JOB_STATE_SUCCEEDED"
    vectors = [r.response.embedding.values for r in job.dest.inlined_embed_content_responses]
    assert [len(v) for v in vectors] == [3072, 3072]  # the documented default size
    assert math.isclose(sum(x * x for x in vectors[0]), 1.0, abs_tol=1e-3)
    assert vectors[0] != vectors[1]
    small = client.batches.get(name=small.name)
    (one,) = small.dest.inlined_embed_content_responses
    assert one.response.embedding.values == vectors[0][:768]
    raw = emu.request_log
    assert any(e["path"].endswith(f"{EMBED}:asyncBatchEmbedContent") for e in raw if "path" in e)


def test_embeddings_batch_from_a_file_over_raw_http(
    emu: Emulator, client: Any, tmp_path: Path
) -> None:
    path = tmp_path / "embed.jsonl"
    lines = [
        {"key": "a", "request": {"content": {"parts": [{"text": "first"}]}}},
        {"key": "b", "request": {"content": {"parts": [{"text": "x"}]}, "outputDimensionality": 9}},
        {"key": "c", "request": {"contents": [{"parts": [{"text": "wrong field"}]}]}},
    ]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    file_name = upload(client, path).name
    body = {"batch": {"display_name": "emb-file", "input_config": {"file_name": file_name}}}
    status, op = http(emu, "POST", f"/v1beta/models/{EMBED}:asyncBatchEmbedContent", body)
    assert status == 200 and op["metadata"]["@type"].endswith(".EmbedContentBatch")
    job = finish(emu, client, op["name"])
    out = {r["key"]: r for r in results(client, job, tmp_path)}
    assert len(out["a"]["response"]["embedding"]["values"]) == 3072
    assert (
        out["b"]["error"]["code"] == 3 and "output_dimensionality" in out["b"]["error"]["message"]
    )
    assert out["c"]["error"]["message"] == (
        "Invalid JSON payload received. Unknown name \"contents\" at 'request': Cannot find field."
    )


def test_count_tokens(emu: Emulator, client: Any) -> None:
    got = client.models.count_tokens(model=TEXT, contents="a watercolor fox in the snow")
    assert got.total_tokens == 7  # ceil(28 bytes / 4), the emulator's usageMetadata count
    got = client.models.count_tokens(model=PRO, contents=["a", "bb"])
    assert got.total_tokens == 1
    body = {"contents": [{"parts": [{"text": "a watercolor fox in the snow"}]}]}
    status, answer = http(emu, "POST", f"/v1beta/models/{TEXT}:countTokens", body)
    assert (status, answer) == (
        200,
        {"totalTokens": 7, "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 7}]},
    )
    inner = {"generateContentRequest": {"model": f"models/{TEXT}", **body}}
    assert http(emu, "POST", f"/v1beta/models/{TEXT}:countTokens", inner)[1]["totalTokens"] == 7
    status, answer = http(emu, "POST", f"/v1beta/models/{TEXT}:countTokens", {"content": "x"})
    assert status == 400
    assert answer["error"]["message"] == (
        'Invalid JSON payload received. Unknown name "content": Cannot find field.'
    )


@pytest.mark.parametrize(
    ("path", "method"),
    [
        ("/v1beta/models/gemini-9-ultra:batchGenerateContent", "batchGenerateContent"),
        ("/v1alpha/models/gemini-9-ultra:countTokens", "countTokens"),
        (f"/v1beta/models/{EMBED}:batchGenerateContent", "batchGenerateContent"),
        (f"/v1/models/{PRO}:asyncBatchEmbedContent", "asyncBatchEmbedContent"),
    ],
)
def test_unknown_model_404_names_the_version_asked(emu: Emulator, path: str, method: str) -> None:
    status, answer = http(emu, "POST", path, {"batch": {}})
    version, model = path.split("/")[1], path.split("/")[3].split(":")[0]
    assert status == 404 and answer["error"]["status"] == "NOT_FOUND"
    assert answer["error"]["message"] == (
        f"models/{model} is not found for API version {version}, or is not supported for "
        f"{method}. Call ListModels to see the list of available models and their supported "
        "methods."
    )


def test_unknown_model_404_through_the_sdk(client: Any) -> None:
    with pytest.raises(errors.ClientError) as exc:
        client.batches.create(model="gemini-9-ultra", src=[{"contents": "x"}])
    assert exc.value.code == 404
    assert "is not found for API version v1," in exc.value.message  # SDK 3.x asks on /v1/
