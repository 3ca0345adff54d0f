"""`submit` and the service: the key and the endpoint are checked before a run is recorded,
a recorded run that still has queued work is sent by the next `submit`, an unreachable
service says what happened and what to do, and the SDK's Vertex environment variables do not
change what a Gemini-channel spec does (issue 13, items 5 and 6)."""

from __future__ import annotations

import socket
from typing import Any

import pytest
from e2e_checks import API_KEY


def _runs(e2e: Any) -> list[dict[str, Any]]:
    status = e2e.invoke("status", "--json")
    assert status.code == 0, status.stderr
    return status.json()["runs"]  # type: ignore[no-any-return]


def _dead_url() -> str:
    """An http URL on a loopback port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def _sent(e2e: Any) -> list[str]:
    return [k for k in e2e.kinds() if k in ("upload_start", "create")]


def test_submit_with_a_wrong_key_records_nothing_and_a_good_key_then_sends(e2e: Any) -> None:
    """A refused key exits 2 before the run is recorded, so the same submit with a good key
    creates the run and sends it (it used to print the run id of an unsent run and stop)."""
    wrong = "wrong-key-1a2b3c4d5e6f"
    e2e.monkeypatch.setenv("GEMINI_API_KEY", wrong)
    refused = e2e.invoke("submit", str(e2e.spec_path))
    assert refused.code == 2, (refused.stdout, refused.stderr)
    assert refused.stdout == ""
    assert "GEMINI_API_KEY" in refused.stderr and wrong not in refused.stderr
    assert _sent(e2e) == []

    e2e.monkeypatch.setenv("GEMINI_API_KEY", API_KEY)
    assert _runs(e2e) == []
    good = e2e.invoke("submit", str(e2e.spec_path))
    assert good.code == 0, good.stderr
    run_id = good.stdout.strip()
    assert run_id.startswith("e2e-job-")
    assert e2e.kinds().count("create") == 2  # 4 items, 2 per batch
    (run,) = _runs(e2e)
    assert run["run"] == run_id and run["batches"].get("queued", 0) == 0


def test_submit_without_a_key_records_nothing(e2e: Any) -> None:
    """No key at all: exit 2 naming the variable, nothing recorded; with a key it goes."""
    e2e.monkeypatch.delenv("GEMINI_API_KEY")
    missing = e2e.invoke("submit", str(e2e.spec_path))
    assert missing.code == 2, (missing.stdout, missing.stderr)
    assert "GEMINI_API_KEY" in missing.stderr
    assert missing.stdout == ""
    assert _runs(e2e) == []

    e2e.monkeypatch.setenv("GEMINI_API_KEY", API_KEY)
    good = e2e.invoke("submit", str(e2e.spec_path))
    assert good.code == 0, good.stderr
    assert e2e.kinds().count("create") == 2


def test_submit_to_an_unreachable_service_records_nothing(e2e: Any) -> None:
    """A service that cannot be reached exits 1 naming the endpoint and what to do next;
    no run is recorded, so a later submit is the one that creates and sends it."""
    dead = _dead_url()
    e2e.monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", dead)
    result = e2e.invoke("submit", str(e2e.spec_path))
    assert result.code == 1, (result.stdout, result.stderr)
    assert result.stdout == ""
    assert dead in result.stderr
    assert "nothing was recorded" in result.stderr
    assert "GOOGLE_GEMINI_BASE_URL" in result.stderr
    assert _runs(e2e) == []

    e2e.monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", e2e.emu.url)
    good = e2e.invoke("submit", str(e2e.spec_path))
    assert good.code == 0, good.stderr
    assert e2e.kinds().count("create") == 2


def _record_only(e2e: Any) -> str:
    """Record a run of the e2e spec without sending anything: what a submit stopped between
    recording its run and its first tick leaves (and what a refused key used to leave)."""
    from pipeline.adapters.config import load_settings
    from pipeline.adapters.ledger import db
    from pipeline.adapters.ledger.ledger import Ledger
    from pipeline.core.catalog import load_catalog
    from pipeline.shell.context import Context
    from pipeline.shell.intake import create_run
    from pipeline.shell.planning import load_spec

    engine = db.make_engine(e2e.db_url)
    try:
        db.ensure_schema(engine)
        ctx = Context(settings=load_settings(), ledger=Ledger(engine))
        catalog = load_catalog()
        run_id, created = create_run(ctx, load_spec(e2e.spec_path, catalog), catalog)
    finally:
        engine.dispose()
    assert created
    return run_id


def test_submit_of_a_recorded_run_sends_its_queued_work(e2e: Any) -> None:
    """A run recorded but not sent keeps its queued batches. Submitting the same spec again
    sends them, printing the same run id; while the service cannot be reached it exits 1
    naming the run and what to do next."""
    run_id = _record_only(e2e)
    (run,) = _runs(e2e)
    assert run["run"] == run_id and run["batches"] == {"queued": 2}
    assert _sent(e2e) == []

    dead = _dead_url()
    e2e.monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", dead)
    unreachable = e2e.invoke("submit", str(e2e.spec_path))
    assert unreachable.code == 1, (unreachable.stdout, unreachable.stderr)
    assert run_id in unreachable.stderr and dead in unreachable.stderr
    assert "nanobatch tick" in unreachable.stderr

    e2e.monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", e2e.emu.url)
    again = e2e.invoke("submit", str(e2e.spec_path))
    assert again.code == 0, again.stderr
    assert again.stdout == run_id + "\n"
    assert e2e.kinds().count("create") == 2
    (run,) = _runs(e2e)
    assert run["run"] == run_id and run["batches"].get("queued", 0) == 0

    # Nothing queued any more: the next submit sends nothing (CONTRACT section 3).
    before = len(e2e.emu.request_log)
    same = e2e.invoke("submit", str(e2e.spec_path))
    assert same.code == 0 and same.stdout == run_id + "\n"
    assert len(e2e.emu.request_log) == before


@pytest.mark.parametrize(
    "env",
    [
        pytest.param({"GOOGLE_GENAI_USE_VERTEXAI": "true"}, id="vertexai"),
        pytest.param(
            {
                "GOOGLE_GENAI_USE_VERTEXAI": "1",
                "GOOGLE_GENAI_USE_ENTERPRISE": "true",
                "GOOGLE_CLOUD_PROJECT": "some-project",
                "GOOGLE_CLOUD_LOCATION": "us-central1",
            },
            id="vertexai-project-location",
        ),
    ],
)
def test_gemini_spec_ignores_the_sdks_vertex_variables(e2e: Any, env: dict[str, str]) -> None:
    """With the SDK's Vertex variables set, a Gemini-channel spec submits and runs to the end
    on the Gemini API as without them (CONTRACT section 10, last bullet)."""
    for name, value in env.items():
        e2e.monkeypatch.setenv(name, value)
    submitted = e2e.invoke("submit", str(e2e.spec_path))
    assert submitted.code == 0, submitted.stderr
    run_id = submitted.stdout.strip()
    assert "Traceback" not in submitted.stderr
    result = e2e.run("--json")
    assert result.code == 0, result.stderr
    report = result.json()
    assert report["run"] == run_id
    assert report["summary"]["succeeded"] == 4 and report["summary"]["failed"] == 0
    assert e2e.kinds().count("create") == 2
