"""Secret hygiene in logs and settings (issue 13, item 12): a key is masked only where it
stands as a whole token, and with both key variables set the SDK's choice is used."""

from __future__ import annotations

import pytest

from pipeline.adapters import log
from pipeline.adapters.config import load_settings


@pytest.fixture(autouse=True)
def _no_registered_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(log, "_SECRETS", [])


def test_a_one_letter_key_masks_only_whole_tokens() -> None:
    """GEMINI_API_KEY=k leaves words, event names and batch names with a `k` alone."""
    log.register_secret("k")
    line = "batch_uploaded batch=nb-keeper-00001 file=files/k-1 key=k url=http://h/?key=k&x=1"
    assert log.mask_text(line) == (
        "batch_uploaded batch=nb-keeper-00001 file=files/k-1 key=*** url=http://h/?key=***&x=1"
    )
    assert log.mask_text("k") == "***"
    assert log.mask_text("kk k_ _k k-") == "kk k_ _k k-"


def test_a_real_key_is_masked_wherever_it_stands_alone() -> None:
    key = "AIzaSyA-1b2C3d4E5f6G7h8I9j0_kLmNoPqRsTu"
    log.register_secret(key)
    text = f"x-goog-api-key: {key}; GET /v1beta/files?key={key}&alt=json '{key}' \"{key}\""
    masked = log.mask_text(text)
    assert key not in masked and masked.count("***") == 4
    assert log.mask_text(f"{key}X") == f"{key}X"  # another, longer token is not this key


def test_processor_masks_fields_and_keeps_event_names() -> None:
    log.register_secret("e")
    event = {"event": "run_created", "run": "e2e-job-1", "detail": "key e refused"}
    assert log.redact(None, "info", event) == {
        "event": "run_created",
        "run": "e2e-job-1",
        "detail": "key *** refused",
    }


def test_both_key_variables_set_uses_google_api_key_like_the_sdk() -> None:
    """google-genai prefers GOOGLE_API_KEY when both are set; so does nanobatch, and it
    remembers the other variable's name (never its value) to say so."""
    both = load_settings({"GEMINI_API_KEY": "gemini-value", "GOOGLE_API_KEY": "google-value"})
    assert (both.api_key, both.api_key_variable) == ("google-value", "GOOGLE_API_KEY")
    assert both.api_key_unused == "GEMINI_API_KEY"
    assert "value" not in repr(both)
    one = load_settings({"GEMINI_API_KEY": "gemini-value", "GOOGLE_API_KEY": " "})
    assert (one.api_key, one.api_key_variable, one.api_key_unused) == (
        "gemini-value",
        "GEMINI_API_KEY",
        None,
    )
    short = load_settings({"GEMINI_API_KEY": "k"})
    assert short.api_key == "k" and short.api_key_unused is None
