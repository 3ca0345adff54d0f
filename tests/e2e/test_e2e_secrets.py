"""Secret hygiene through the CLI (issue 13, item 12): a one-letter key corrupts no log
line, and with both key variables set the SDK's choice (GOOGLE_API_KEY) is used and named."""

from __future__ import annotations

import json
from typing import Any

import pytest
from e2e_checks import API_KEY


@pytest.mark.timeout(120)
def test_a_one_letter_key_leaves_log_lines_intact(make_e2e: Any) -> None:
    """GEMINI_API_KEY=e: event names, run and batch names keep their `e`s (a process of its
    own, so the registered secret stays there)."""
    e2e = make_e2e(api_key="e")
    e2e.monkeypatch.setenv("GEMINI_API_KEY", "e")
    result = e2e.subprocess("submit", str(e2e.spec_path))
    assert result.code == 0, result.stderr
    run_id = result.stdout.strip()
    assert run_id.startswith("e2e-job-")
    events = [json.loads(line) for line in result.stderr.splitlines() if line.strip()]
    names = {event["event"] for event in events}
    assert {"run_created", "batch_uploaded", "batch_submitted"} <= names, names
    assert all("***" not in json.dumps(event) for event in events)
    assert any(event.get("run") == run_id for event in events)
    assert any(str(event.get("batch", "")).startswith("nb-e2e-job-") for event in events)


def test_both_key_variables_use_google_api_key_and_say_so(e2e: Any) -> None:
    """GOOGLE_API_KEY wins over GEMINI_API_KEY (as in google-genai); a log line names the
    variable used and the one ignored, never a value."""
    ignored = "gemini-key-not-used-7f3a"
    e2e.monkeypatch.setenv("GOOGLE_API_KEY", API_KEY)
    e2e.monkeypatch.setenv("GEMINI_API_KEY", ignored)
    result = e2e.invoke("submit", str(e2e.spec_path))
    assert result.code == 0, result.stderr
    events = [json.loads(line) for line in result.stderr.splitlines() if line.strip()]
    (chosen,) = [event for event in events if event["event"] == "api_key_variable"]
    assert chosen["variable"] == "GOOGLE_API_KEY" and chosen["unused"] == "GEMINI_API_KEY"
    assert "create" in e2e.kinds()
    for text in e2e.outputs:
        assert API_KEY not in text and ignored not in text
