"""Strict proto-JSON validation: request lines, inline requests and create bodies are refused as
the service's JSON parser refuses them (unknown names at any depth, wrong types, unknown enum
values), with its wording; valid variants (snake_case, enum case, numbers as strings, a single
value for a list) pass."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
from emu_helpers import FLASH25, PRO, http, line_results, request
from google.genai import errors

from pipeline.emulator import Emulator
from pipeline.emulator.png import make_png
from pipeline.emulator.schema import Schema

V1 = "type.googleapis.com/google.ai.generativelanguage.v1"  # SDK 3.x creates on /v1/
PNG = base64.b64encode(make_png("ref", 8, 8)).decode("ascii")


def _req(**config: Any) -> dict[str, Any]:
    return {"contents": [{"role": "user", "parts": [{"text": "a cat"}]}], **config}


# (key, line, the per-line error message) as the service words it.
REFUSED: list[tuple[str, dict[str, Any], str]] = [
    (
        "ratio-under-generation-config",
        {"key": "k", "request": _req(generationConfig={"aspectRatio": "16:9"})},
        'Invalid JSON payload received. Unknown name "aspectRatio" at '
        "'request.generation_config': Cannot find field.",
    ),
    (
        "top-level-thinking-config",
        {"key": "k", "request": _req(thinking_config={"thinkingBudget": 0})},
        "Invalid JSON payload received. Unknown name \"thinking_config\" at 'request': "
        "Cannot find field.",
    ),
    (
        "deep-unknown",
        {"key": "k", "request": _req(contents=[{"parts": [{"text": "x", "colour": "red"}]}])},
        'Invalid JSON payload received. Unknown name "colour" at '
        "'request.contents[0].parts[0]': Cannot find field.",
    ),
    (
        "line-level-unknown",
        {"key": "k", "request": _req(), "metadata": {"a": 1}},
        'Invalid JSON payload received. Unknown name "metadata": Cannot find field.',
    ),
    (
        "contents-a-string",
        {"key": "k", "request": {"contents": "a cat"}},
        f"Invalid value at 'request.contents' ({V1}.Content), \"a cat\"",
    ),
    (
        "string-for-number",
        {"key": "k", "request": _req(generationConfig={"maxOutputTokens": "many"})},
        "Invalid value at 'request.generation_config.max_output_tokens' (TYPE_INT32), \"many\"",
    ),
    (
        "number-for-string",
        {"key": "k", "request": _req(generationConfig={"imageConfig": {"aspectRatio": 1.5}})},
        "Invalid value at 'request.generation_config.image_config.aspect_ratio' (TYPE_STRING), 1.5",
    ),
    (
        "unknown-enum",
        {"key": "k", "request": _req(generationConfig={"responseModalities": ["PICTURE"]})},
        "Invalid value at 'request.generation_config.response_modalities[0]' "
        f'({V1}.GenerationConfig.Modality), "PICTURE"',
    ),
    (
        "list-for-message",
        {"key": "k", "request": _req(generationConfig={"imageConfig": [{"aspectRatio": "1:1"}]})},
        'Invalid JSON payload received. Unknown name "imageConfig" at '
        "'request.generation_config': Proto field is not repeating, cannot start list.",
    ),
    (
        "object-for-scalar",
        {"key": "k", "request": _req(generationConfig={"temperature": {"value": 1}})},
        "Invalid value at 'request.generation_config' (temperature), "
        "Starting an object on a scalar field",
    ),
    (
        "bad-base64",
        {
            "key": "k",
            "request": _req(
                contents=[{"parts": [{"inlineData": {"mimeType": "image/png", "data": "@@"}}]}]
            ),
        },
        "Invalid value at 'request.contents[0].parts[0].inline_data.data' (TYPE_BYTES), "
        'Base64 decoding failed for "@@"',
    ),
    (
        "two-of-a-oneof",
        {
            "key": "k",
            "request": _req(
                contents=[{"parts": [{"text": "x", "inlineData": {"mimeType": "image/png"}}]}]
            ),
        },
        "Invalid value at 'request.contents[0].parts[0]' (oneof), oneof field 'data' is "
        "already set. Cannot set 'inlineData'",
    ),
    (
        "key-a-number",
        {"key": 7, "request": _req()},
        "Invalid value at 'key' (TYPE_STRING), 7",
    ),
]


def test_each_refusal_fails_its_line_with_the_service_wording(
    emu: Emulator, client: Any, tmp_path: Path
) -> None:
    rows = [{**line, "key": name} if name != "key-a-number" else line for name, line, _ in REFUSED]
    rows.append({"key": "fine", "request": request("a cat")})
    out = line_results(emu, client, tmp_path, rows)
    for name, _, message in REFUSED:
        got = out["7" if name == "key-a-number" else name]
        assert got["error"] == {"code": 3, "message": message}, name
    assert "response" in out["fine"]
    job = emu.batches()[0]
    assert job["state"] == "BATCH_STATE_SUCCEEDED"
    outcomes = [e["outcome"] for e in emu.request_log if e["kind"] == "line"]
    assert outcomes.count("invalid") == len(REFUSED) and outcomes.count("ok") == 1


def test_every_violation_of_a_line_is_reported(emu: Emulator, client: Any, tmp_path: Path) -> None:
    bad = _req(generationConfig={"aspectRatio": "1:1", "seed": "x", "topK": 1.5})
    out = line_results(emu, client, tmp_path, [{"key": "k", "request": bad}])
    assert out["k"]["error"]["message"].split("\n") == [
        'Invalid JSON payload received. Unknown name "aspectRatio" at '
        "'request.generation_config': Cannot find field.",
        "Invalid value at 'request.generation_config.seed' (TYPE_INT32), \"x\"",
        "Invalid value at 'request.generation_config.top_k' (TYPE_INT32), 1.5",
    ]


ACCEPTED: list[tuple[str, dict[str, Any]]] = [
    (
        "snake-case",
        {
            "contents": [{"role": "user", "parts": [{"text": "a cat"}]}],
            "generation_config": {
                "response_modalities": ["IMAGE"],
                "image_config": {"aspect_ratio": "16:9", "image_size": "2K"},
            },
        },
    ),
    (
        "enum-any-case-and-number",
        _req(generationConfig={"responseModalities": ["image", "Text", 2]}),
    ),
    ("number-as-string", _req(generationConfig={"maxOutputTokens": "4000", "seed": "7"})),
    ("float-integral", _req(generationConfig={"candidateCount": 1.0, "temperature": "0.5"})),
    ("single-for-list", _req(generationConfig={"responseModalities": "IMAGE"})),
    ("contents-one-object", {"contents": {"role": "user", "parts": {"text": "a cat"}}}),
    ("nulls", _req(tools=None, generationConfig={"seed": None, "imageConfig": None})),
    (
        "sdk-fields",
        _req(
            systemInstruction={"parts": [{"text": "be brief"}]},
            safetySettings=[
                {"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_ONLY_HIGH"}
            ],
            labels={"team": "art"},
            generationConfig={
                "thinkingConfig": {"includeThoughts": True, "thinkingLevel": "high"},
                "imageConfig": {"aspectRatio": "1:1", "imageSize": "4K"},
            },
        ),
    ),
    (
        "inline-image-reference",
        _req(
            contents=[
                {
                    "parts": [
                        {"text": "make it blue"},
                        {"inlineData": {"mimeType": "image/png", "data": PNG}},
                    ]
                }
            ]
        ),
    ),
]


def test_valid_variants_are_accepted(emu: Emulator, client: Any, tmp_path: Path) -> None:
    rows = [{"key": name, "request": req} for name, req in ACCEPTED]
    out = line_results(emu, client, tmp_path, rows)
    for name, _ in ACCEPTED:
        assert "response" in out[name], (name, out[name])


def test_inline_request_refused_at_create_through_the_sdk(emu: Emulator, client: Any) -> None:
    """The SDK checks its own inline types, but extra_body reaches the wire as written: the
    whole create body is parsed, so an unknown name in an inline request fails the create."""
    extra = {"batch": {"inputConfig": {"requests": {"requests": [{"request": _req(foo=1)}]}}}}
    with pytest.raises(errors.ClientError) as exc:
        client.batches.create(
            model=PRO,
            src=[{"contents": "a cat"}],
            config={"display_name": "x", "http_options": {"extra_body": extra}},
        )
    assert exc.value.code == 400 and exc.value.status == "INVALID_ARGUMENT"
    message = (
        'Invalid JSON payload received. Unknown name "foo" at '
        "'batch.input_config.requests.requests[0].request': Cannot find field."
    )
    assert exc.value.message == message
    (detail,) = exc.value.details["error"]["details"]
    assert detail == {
        "@type": "type.googleapis.com/google.rpc.BadRequest",
        "fieldViolations": [
            {"field": "batch.input_config.requests.requests[0].request", "description": message}
        ],
    }
    assert emu.batches() == []


def test_inline_and_create_body_refusals_over_raw_http(emu: Emulator) -> None:
    """The documentation's curl example for an inline batch, with mistakes in it."""
    inline = {
        "request": {
            "contents": [{"parts": [{"text": "Describe the process of photosynthesis."}]}],
            "generation_config": {"aspectRatio": "1:1"},
        },
        "metadata": {"key": "request-1"},
    }
    body = {
        "batch": {
            "display_name": "my-batch-requests",
            "input_config": {"requests": {"requests": [inline]}},
            "priority": "high",
        },
        "dry_run": True,
    }
    status, answer = http(emu, "POST", f"/v1beta/models/{PRO}:batchGenerateContent", body)
    assert status == 400
    assert answer["error"]["status"] == "INVALID_ARGUMENT"
    assert answer["error"]["message"].split("\n") == [
        'Invalid JSON payload received. Unknown name "aspectRatio" at '
        "'batch.input_config.requests.requests[0].request.generation_config': "
        "Cannot find field.",
        "Invalid value at 'batch.priority' (TYPE_INT64), \"high\"",
        'Invalid JSON payload received. Unknown name "dry_run": Cannot find field.',
    ]
    violations = answer["error"]["details"][0]["fieldViolations"]
    assert [v.get("field") for v in violations] == [
        "batch.input_config.requests.requests[0].request.generation_config",
        "batch.priority",
        None,  # the top level has no field
    ]
    body = {"batch": {"display_name": "ok", "input_config": {"requests": {"requests": []}}}}
    body["batch"]["input_config"]["requests"]["requests"] = [
        {"request": request("a cat"), "metadata": {"key": "r1"}}
    ]
    status, answer = http(emu, "POST", f"/v1beta/models/{PRO}:batchGenerateContent", body)
    assert status == 200 and answer["metadata"]["batchStats"]["requestCount"] == "1"


def test_create_body_must_be_wrapped_in_batch(emu: Emulator) -> None:
    """The body is a BatchGenerateContentRequest ({"batch": ...}), not the batch itself."""
    body = {"display_name": "x", "input_config": {"file_name": "files/abc"}}
    status, answer = http(emu, "POST", f"/v1beta/models/{PRO}:batchGenerateContent", body)
    assert status == 400
    assert answer["error"]["message"].split("\n") == [
        'Invalid JSON payload received. Unknown name "display_name": Cannot find field.',
        'Invalid JSON payload received. Unknown name "input_config": Cannot find field.',
    ]


def test_type_urls_use_the_version_asked(emu: Emulator) -> None:
    body = {"batch": {"input_config": {"requests": {"requests": {"request": {"contents": 5}}}}}}
    for version in ("v1beta", "v1"):
        status, answer = http(emu, "POST", f"/{version}/models/{PRO}:batchGenerateContent", body)
        assert status == 400
        assert answer["error"]["message"] == (
            "Invalid value at 'batch.input_config.requests.requests.request.contents' "
            f"(type.googleapis.com/google.ai.generativelanguage.{version}.Content), 5"
        )


def test_image_size_refused_for_a_model_without_sizes(
    emu: Emulator, client: Any, tmp_path: Path
) -> None:
    """gemini-2.5-flash-image takes no imageSize (issue 13 item 15): a line that sends one
    fails; the same line without it succeeds."""
    rows = [
        {"key": "with-size", "request": request("a cat", "1:1", "1K")},
        {"key": "no-size", "request": request("a cat", "1:1", None)},
    ]
    out = line_results(emu, client, tmp_path, rows, model=FLASH25)
    assert out["with-size"]["error"] == {
        "code": 3,
        "message": "Unsupported image size: 1K. gemini-2.5-flash-image does not take an "
        "image size.",
    }
    assert "response" in out["no-size"]


def test_schema_records_its_source_and_patches() -> None:
    schema = Schema.load()
    assert schema.source["package"] == "google-ai-generativelanguage"
    assert schema.source["version"] == "0.12.1"
    patched = "\n".join(schema.patched)
    assert "ImageConfig.image_size: https://ai.google.dev/gemini-api/docs/image-generation" in (
        patched
    )
    fields = schema.fields("google.ai.generativelanguage.v1beta.ImageConfig")
    assert set(fields) == {"aspect_ratio", "aspectRatio", "image_size", "imageSize"}
