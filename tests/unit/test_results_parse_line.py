"""parse_line: results lines parsed with their base64 payloads cut out, not JSON-scanned."""

from __future__ import annotations

import base64
import json

import pytest

from pipeline.core import results


def _line(*images: tuple[bytes, bool], spaced: bool = False) -> bytes:
    parts = [
        {
            "inlineData": {"mimeType": "image/png", "data": base64.b64encode(b).decode()},
            "thought": t,
        }
        for b, t in images
    ]
    obj = {"key": "k1", "response": {"candidates": [{"content": {"parts": parts}}]}}
    text = json.dumps(obj) if spaced else json.dumps(obj, separators=(",", ":"))
    return text.encode() + b"\n"


@pytest.mark.parametrize("spaced", [False, True])
def test_the_final_image_comes_from_the_payload(spaced: bool) -> None:
    """The last non-thought image decodes to its bytes; the thought image is skipped."""
    line, payloads = results.parse_line(
        _line((b"thought", True), (b"final!", False), spaced=spaced)
    )
    outcome = results.classify_line(line)

    assert len(payloads) == 2
    assert outcome.kind == "succeeded"
    assert outcome.image_b64 is not None
    assert results.decode_image(results.payload_bytes(outcome.image_b64, payloads)) == b"final!"


def test_a_line_without_images_is_parsed_whole() -> None:
    """An error line has no payloads and parses as plain JSON."""
    line, payloads = results.parse_line(b'{"key": "k", "error": {"code": 13, "message": "x"}}\n')

    assert payloads == []
    assert results.classify_line(line).kind == "retry"


def test_text_that_mentions_data_is_left_alone() -> None:
    """A quoted `"data":"` inside a text part is escaped in JSON and never cut out."""
    obj = {
        "key": "k",
        "response": {"candidates": [{"content": {"parts": [{"text": 'say "data":"x"'}]}}]},
    }
    line, payloads = results.parse_line(json.dumps(obj).encode())

    assert payloads == []
    assert line["response"]["candidates"][0]["content"]["parts"][0]["text"] == 'say "data":"x"'


def test_not_json_raises_value_error() -> None:
    """Garbage is a ValueError (the harvest logs it and skips the line)."""
    with pytest.raises(ValueError):
        results.parse_line(b'{"key": "k", "data": "abc"')
    with pytest.raises(ValueError):
        results.parse_line(b"[1, 2]")


def test_urlsafe_payload_falls_back_to_the_text_path() -> None:
    """A payload in the urlsafe alphabet without padding still decodes."""
    raw = base64.urlsafe_b64encode(b"\xfb\xff\xfe").rstrip(b"=")
    assert results.decode_image(memoryview(raw)) == b"\xfb\xff\xfe"


def test_a_line_inside_a_bigger_buffer_is_parsed_in_place() -> None:
    line = b'{"key": "k", "response": {"x": {"data" : "QUJD"}, "data": 5}}\n'
    buffer = b'{"key": "before", "data": "WFla"}\n' + line + b'{"key": "after"}\n'
    start = buffer.index(line)
    parsed, payloads = results.parse_line(buffer, start, start + len(line))
    assert parsed["key"] == "k" and parsed["response"]["data"] == 5
    assert [bytes(p) for p in payloads] == [b"QUJD"]
    assert results.payload_bytes(parsed["response"]["x"]["data"], payloads) == payloads[0]
