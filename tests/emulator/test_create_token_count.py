"""The create-time pass over an input file (keys and enqueued tokens) gives what the per-line
json.loads + `estimate_tokens` computation gave, for odd lines too; common lines take the fast
path (`quick_tokens`)."""

from __future__ import annotations

import io
import json
import random
from pathlib import Path
from typing import Any

import pytest
from emu_helpers import FLASH25, FLASH31, PRO, request, upload
from google import genai
from google.genai import errors

from pipeline.emulator import Emulator, lines
from pipeline.emulator.batches import _count_input
from pipeline.emulator.tokens import estimate_tokens, quick_tokens, request_tokens

MODELS = (PRO, "gemini-3-pro-image", FLASH25, FLASH31)


def _old_decode(raw: bytes) -> tuple[str | None, Any, str | None]:
    """decode_line as it was: json.loads of every line."""
    try:
        obj = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        return None, None, f"Invalid JSON payload received. {exc}"
    if not isinstance(obj, dict):
        return None, None, "Invalid JSON payload received. Each line must be a JSON object."
    key = obj.get("key")
    key = None if key is None else str(key)
    if "request" not in obj:
        return key, None, "Invalid JSON payload received. Missing 'request'."
    return key, obj["request"], None


def _old_count(model: str, data: bytes) -> tuple[list[str], int]:
    """The create-time loop as it was: decode_line + estimate_tokens per non-blank line."""
    keys: list[str] = []
    tokens = 0
    for i, raw in enumerate(r for r in io.BytesIO(data) if r.strip()):
        key, req, _ = _old_decode(raw)
        keys.append(key if key is not None else f"line-{i}")
        tokens += estimate_tokens(model, req)
    return keys, tokens


def _line(obj: Any, **dumps: Any) -> bytes:
    return json.dumps(obj, **dumps).encode("utf-8") + b"\n"


def _with(req: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {**req, **fields}


def _config(**image: Any) -> dict[str, Any]:
    return {"responseModalities": ["IMAGE"], "imageConfig": image}


CAT = request("a cat")
MULTI = {
    "contents": [
        {"role": "user", "parts": [{"text": "one"}, {"text": "two ü"}]},
        {"role": "user", "parts": [{"text": "three"}, {"inlineData": {"data": "AA=="}}]},
        {"parts": [{"fileData": {"fileUri": "gs://b/x"}}, {"text": None, "inlineData": {}}]},
    ],
    "generationConfig": _config(aspectRatio="16:9", imageSize="2K"),
}

ODD_LINES: list[bytes] = [
    _line({"key": "plain", "request": CAT}),
    _line({"key": "compact", "request": request("ü 猫 🐱", "9:16", "4K")}, separators=(",", ":")),
    _line({"key": "raw-utf8", "request": request("ü 猫 🐱")}, ensure_ascii=False),
    _line({"key": "multi", "request": MULTI}),
    b"\n",
    b"   \t \r\n",
    _line({"key": "crlf", "request": CAT})[:-1] + b"\r\n",
    b"  " + _line({"key": "leading-space", "request": CAT}),
    _line({"key": "trailing-space", "request": CAT})[:-1] + b" \t \n",
    b"\xef\xbb\xbf" + _line({"key": "utf8-bom", "request": CAT}),
    b"not json\n",
    b"{\n",
    b'{"key": "open", "request": {\n',
    b'{"key": "a", "request": {}} {"key": "b"}\n',
    b'{"key": "a", "request": {}},{"key": "b", "request": {}}\n',
    b'[{"key": "a", "request": {}}]\n',
    b'"a string"\n',
    b"42\n",
    b"null\n",
    b'{"key": "no-request"}\n',
    b'{"key": "null-request", "request": null}\n',
    b'{"request": {"contents": "no key"}}\n',
    b'{"key": null, "request": {"contents": "null key"}}\n',
    b'{"key": 7, "request": {"contents": "int key"}}\n',
    b'{"key": 1.5, "request": {"contents": "float key"}}\n',
    b'{"key": true, "request": {"contents": "bool key"}}\n',
    b'{"key": {"a": [1]}, "request": {"contents": "object key"}}\n',
    b'{"key": "dup", "key": "dup-last", "request": {"contents": "x"}, "request": {}}\n',
    b'{"key": "bad-utf8", "request": {"contents": "\xff\xfe"}}\n',
    b'{"key": "tab-in-string", "request": {"contents": "a\tb"}}\n',
    b'{"key": "nan", "request": {"contents": "x", "labels": {"n": NaN, "i": -Infinity}}}\n',
    b'{"key": "big-int", "request": {"contents": "x", "labels": {"n": ' + b"9" * 5000 + b"}}}\n",
    b'{"key": "deep", "request": {"contents": "x", "labels": ' + b"[" * 50 + b"]" * 50 + b"}}\n",
    b'{"key": "esc\\u00e9\\n", "request": {"contents": "\\u732b \\"quoted\\" \\\\"}}\n',
    _line({"key": "unknown", "request": _with(CAT, foo=1)}),
    _line({"key": "model-field", "request": _with(CAT, model="x")}),
    _line({"key": "string-contents", "request": {"contents": "a string prompt"}}),
    _line({"key": "no-contents", "request": {"generationConfig": _config()}}),
    _line({"key": "empty-contents", "request": _with(CAT, contents=[])}),
    _line({"key": "object-contents", "request": _with(CAT, contents={"parts": []})}),
    _line({"key": "number-contents", "request": _with(CAT, contents=5)}),
    _line({"key": "null-parts", "request": _with(CAT, contents=[{"parts": None}])}),
    _line({"key": "string-parts", "request": _with(CAT, contents=[{"parts": "abc"}])}),
    _line({"key": "dict-parts", "request": _with(CAT, contents=[{"parts": {"text": "x"}}])}),
    _line({"key": "odd-items", "request": _with(CAT, contents=["x", None, {"parts": [1, "t"]}])}),
    _line({"key": "text-number", "request": _with(CAT, contents=[{"parts": [{"text": 5}]}])}),
    _line({"key": "inline", "request": _with(CAT, contents=[{"parts": [{"inlineData": {}}]}])}),
    _line(
        {"key": "inline-null", "request": _with(CAT, contents=[{"parts": [{"inlineData": None}]}])}
    ),
    _line(
        {"key": "snake-inline", "request": _with(CAT, contents=[{"parts": [{"inline_data": {}}]}])}
    ),
    _line({"key": "snake-file", "request": _with(CAT, contents=[{"parts": [{"file_data": {}}]}])}),
    _line(
        {
            "key": "camel-null-snake-set",
            "request": _with(CAT, contents=[{"parts": [{"inlineData": None, "inline_data": {}}]}]),
        }
    ),
    _line(
        {
            "key": "snake-config",
            "request": {
                "contents": CAT["contents"],
                "generation_config": _config(aspectRatio="2:3"),
            },
        }
    ),
    _line(
        {"key": "both-config", "request": _with(CAT, generation_config=_config(aspectRatio="bad"))}
    ),
    _line(
        {
            "key": "snake-image",
            "request": _with(CAT, generationConfig={"image_config": {"aspect_ratio": "bad"}}),
        }
    ),
    _line(
        {
            "key": "snake-size",
            "request": _with(CAT, generationConfig={"imageConfig": {"image_size": "2K"}}),
        }
    ),
    _line(
        {
            "key": "snake-modalities",
            "request": _with(CAT, generationConfig={"response_modalities": ["TEXT"]}),
        }
    ),
    _line({"key": "bad-ratio", "request": request("a cat", "7:5")}),
    _line({"key": "bad-size", "request": request("a cat", "1:1", "8K")}),
    _line({"key": "size-512", "request": request("a cat", "1:1", "512")}),
    _line({"key": "ratio-1-8", "request": request("a cat", "1:8", "1K")}),
    _line({"key": "null-ratio", "request": _with(CAT, generationConfig=_config(aspectRatio=None))}),
    _line(
        {"key": "list-ratio", "request": _with(CAT, generationConfig=_config(aspectRatio=["1:1"]))}
    ),
    _line({"key": "number-size", "request": _with(CAT, generationConfig=_config(imageSize=1))}),
    _line({"key": "no-image-config", "request": _with(CAT, generationConfig={})}),
    _line({"key": "null-config", "request": _with(CAT, generationConfig=None)}),
    _line({"key": "list-config", "request": _with(CAT, generationConfig=[1])}),
    _line({"key": "string-config", "request": _with(CAT, generationConfig="x")}),
    _line(
        {"key": "list-image-config", "request": _with(CAT, generationConfig={"imageConfig": [1]})}
    ),
    _line(
        {
            "key": "extra-config",
            "request": _with(CAT, generationConfig={"temperature": 1, **_config()}),
        }
    ),
    _line(
        {
            "key": "text-modality",
            "request": _with(CAT, generationConfig={"responseModalities": ["TEXT"]}),
        }
    ),
    _line(
        {
            "key": "lower-modality",
            "request": _with(CAT, generationConfig={"responseModalities": ["image"]}),
        }
    ),
    _line(
        {
            "key": "string-modality",
            "request": _with(CAT, generationConfig={"responseModalities": "IMAGE"}),
        }
    ),
    _line(
        {
            "key": "null-modality",
            "request": _with(CAT, generationConfig={"responseModalities": None}),
        }
    ),
    _line(
        {
            "key": "odd-modality",
            "request": _with(CAT, generationConfig={"responseModalities": [1, None, {}]}),
        }
    ),
    _line({"key": "surrogate-bad-ratio", "request": request("\ud800", "7:5")}),
    _line({"key": "long", "request": request("word " * 2000)}),
    # The last line, without a newline: UTF-16-LE, which json.loads accepts (it sniffs it).
    json.dumps({"key": "utf16", "request": request("a cat")}).encode("utf-16-le"),
]


@pytest.mark.parametrize("model", MODELS)
def test_count_equals_old_per_line_computation(model: str) -> None:
    data = b"".join(ODD_LINES)
    keys, tokens = _count_input(model, io.BytesIO(data))
    assert (keys, tokens) == _old_count(model, data)
    assert "utf16" in keys and "dup-last" in keys and "line-8" in keys


def test_decode_line_equals_json_loads() -> None:
    for raw in ODD_LINES:
        if raw.strip():
            assert repr(lines.decode_line(raw)) == repr(_old_decode(raw)), raw


def test_line_that_raised_still_raises() -> None:
    line = _line({"key": "surrogate", "request": request("\ud800")})
    with pytest.raises(UnicodeEncodeError):
        _old_count(PRO, line)
    with pytest.raises(UnicodeEncodeError):
        _count_input(PRO, io.BytesIO(line))


@pytest.mark.parametrize(
    "req",
    [
        _with(CAT, contents=[{"parts": 3}]),
        _with(CAT, generationConfig={"responseModalities": 7}),
    ],
)
def test_lines_that_raised_now_fail_the_schema_and_count_one_token(req: dict[str, Any]) -> None:
    """These crashed the create (TypeError) before the strict schema check: the service parses
    them as a wrong type (a part that is a number; modalities a number that is no Modality: 3,
    AUDIO, would be one) and fails the line, which the enqueued-token estimate counts as 1."""
    line = _line({"key": "k", "request": req})
    assert _old_count(PRO, line) == (["k"], 1)
    assert _count_input(PRO, io.BytesIO(line)) == (["k"], 1)
    with pytest.raises(lines.LineError) as exc:
        lines.parse(PRO, req)
    assert exc.value.code == 3 and exc.value.message.startswith("Invalid value at 'request.")


PROMPTS = ("a cat", "", "ü 猫 🐱 " * 7, "x" * 999)


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("prompt", PROMPTS)
def test_quick_tokens_on_common_shapes(model: str, prompt: str) -> None:
    for ratio in ("1:1", "21:9", "1:4", "bad"):
        for size in ("512", "1K", "2K", "4K", "bad"):
            shapes = [
                request(prompt, ratio, size),
                request(prompt, ratio, None),
                {"contents": [{"parts": [{"text": prompt}, {"text": prompt}]}]},
                {"contents": [{"role": "user", "parts": [{"text": prompt}]}] * 3},
                _with(CAT, generationConfig={"imageConfig": {"aspectRatio": ratio}}),
                _with(CAT, generationConfig={"imageConfig": {"imageSize": size}}),
            ]
            for req in shapes:
                quick = quick_tokens(model, req)
                assert quick is not None and quick == estimate_tokens(model, req), req


@pytest.mark.parametrize(
    "req",
    [
        None,
        [CAT],
        {"contents": "a string prompt"},
        _with(CAT, tools=[]),
        _with(CAT, labels={}),
        {"contents": CAT["contents"], "generation_config": _config()},
        _with(CAT, contents=[{"parts": "abc"}]),
        _with(CAT, contents=["x"]),
        _with(CAT, contents=[{"parts": [{"inline_data": {}}]}]),
        _with(CAT, generationConfig="x"),
        _with(CAT, generationConfig={"image_config": {}}),
        _with(CAT, generationConfig={"imageConfig": {"aspect_ratio": "1:1"}}),
        _with(CAT, generationConfig={"imageConfig": "x"}),
        _with(CAT, generationConfig={"responseModalities": "IMAGE"}),
        _with(CAT, generationConfig={"responseModalities": [1]}),
        # Parts other than plain text (their schema check reads base64 and URIs).
        MULTI,
        _with(CAT, contents=[{"parts": [{"text": "x", "thought": True}]}]),
        _with(CAT, contents=[{"parts": []}]),
        _with(CAT, contents=[{"role": 1, "parts": [{"text": "x"}]}]),
        _with(CAT, generationConfig={"imageConfig": {"imageSize": 1}}),
        _with(CAT, generationConfig={"responseModalities": ["PICTURE"]}),
        _with(CAT, generationConfig={"maxOutputTokens": 10}),
    ],
)
def test_quick_tokens_leaves_other_shapes_to_estimate_tokens(req: Any) -> None:
    assert quick_tokens(PRO, req) is None
    assert request_tokens(PRO, req) == estimate_tokens(PRO, req)


def _random_request(rng: random.Random) -> Any:
    """A request built from camelCase, snake_case and odd variants of every field parse reads."""

    def one(*choices: Any) -> Any:
        # The first choice (the common shape) half of the time, so that many requests are whole.
        return choices[0] if rng.random() < 0.5 else rng.choice(choices)

    ratio = one("1:1", "16:9", "1:8", "7:5", None, 5, ["1:1"], "")
    size = one("512", "1K", "4K", "8K", None, 2, "")
    image = one({"aspectRatio": ratio, "imageSize": size}, {}, None, [], "x", {"imageSize": size})
    if isinstance(image, dict) and rng.random() < 0.1:
        image[one("aspect_ratio", "image_size")] = one("1:1", "2K", "bad")
    mods = one(["IMAGE"], ["TEXT", "IMAGE"], [], None, "IMAGE", ["image"], [None], [["x"]])
    config: Any = one({}, None, [], "x", 5, {"responseModalities": mods, "imageConfig": image})
    if isinstance(config, dict) and rng.random() < 0.1:
        config[one("image_config", "response_modalities", "temperature")] = one({}, ["TEXT"])
    text = one("a cat", "", "ü 猫 🐱", None, 5)
    part = one(
        {"text": text},
        {"text": text, "thought": True},
        {"inlineData": {}},
        {"inlineData": None},
        {"fileData": {"fileUri": "x"}},
        {"inline_data": {}},
        {"file_data": {}},
        {"text": None, "inlineData": {}},
        "x",
        None,
    )
    content = one({"role": "user", "parts": [part] * rng.randint(0, 3)}, {"parts": None}, "x")
    contents = one([content] * rng.randint(0, 2), "a prompt", [], None, {})
    req: dict[str, Any] = {"contents": contents, "generationConfig": config}
    for name in rng.sample(["contents", "generationConfig"], rng.randint(0, 1)):
        del req[name]
    if rng.random() < 0.1:
        req[one("generation_config", "foo", "model", "systemInstruction")] = one({}, config)
    return req


def _outcome(fn: Any, model: str, req: Any) -> tuple[str, Any]:
    try:
        return "ok", fn(model, req)
    except Exception as exc:
        return "raise", type(exc)


@pytest.mark.parametrize("model", MODELS)
def test_request_tokens_equals_estimate_tokens_on_random_requests(model: str) -> None:
    rng = random.Random(f"tokens-{model}")
    quick = 0
    for _ in range(10_000):
        req = _random_request(rng)
        assert _outcome(request_tokens, model, req) == _outcome(estimate_tokens, model, req), req
        quick += (quick_tokens(model, req) or 0) > 1
    # The quick shape is narrow (plain text parts, known names only): a few hundred of these.
    assert quick > 300


def test_create_through_the_sdk_counts_every_line(tmp_path: Path) -> None:
    data = b"".join(ODD_LINES)
    keys, tokens = _old_count(PRO, data)
    path = tmp_path / "odd.jsonl"
    path.write_bytes(data)
    for quota in (tokens - 1, tokens):
        with Emulator(image_scale=0.02, enqueued_token_quota={PRO: quota}) as emu:
            client = genai.Client(api_key="k", http_options={"base_url": emu.url})
            name = upload(client, path).name
            if quota < tokens:
                with pytest.raises(errors.ClientError) as exc:
                    client.batches.create(model=PRO, src=name)
                assert exc.value.code == 429
                continue
            client.batches.create(model=PRO, src=name)
            assert [b["keys"] for b in emu.batches()] == [keys]
