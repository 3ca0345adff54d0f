"""The uploads ledger (reference images): an upload's intent, its record, reuse by name, and
run references written once per image, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from pipeline.adapters.ledger import db, repo
from pipeline.core.refimage import Ref

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


def test_upload_intent_then_record_and_a_taken_name(db_url: str) -> None:
    engine = db.make_engine(db_url)
    try:
        db.ensure_schema(engine)
        with engine.begin() as conn:
            row = repo.record_upload_intent(conn, "a" * 64, "files/nb-a-1", "image/png", NOW)
            assert row is not None and row.state == "uploading" and row.uri is None
            # The same name again (another writer got there first): None, the transaction
            # goes on.
            assert (
                repo.record_upload_intent(conn, "a" * 64, "files/nb-a-1", "image/png", NOW) is None
            )
            expires = NOW + timedelta(hours=48)
            repo.record_upload_done(conn, row.id, "https://x/v1beta/files/nb-a-1", expires, NOW)
        with engine.connect() as conn:
            (found,) = repo.uploads_of(conn, "a" * 64)
            assert found.state == "active" and found.uri == "https://x/v1beta/files/nb-a-1"
            assert found.expires_at is not None
            assert repo.upload_names_of(conn, ["a" * 64]) == {"files/nb-a-1": "a" * 64}
        with engine.begin() as conn:
            repo.mark_upload_stale(conn, found.id, "gone")
            assert repo.uploads_named(conn, ["files/nb-a-1"])["files/nb-a-1"].state == "stale"
    finally:
        engine.dispose()


def test_run_references_are_written_once_per_image(db_url: str) -> None:
    engine = db.make_engine(db_url)
    try:
        db.ensure_schema(engine)
        with engine.begin() as conn:
            repo.insert_run(
                conn,
                {
                    "id": "r1",
                    "identity": "i1",
                    "job": "j",
                    "state": "active",
                    "model": "m",
                    "spec_path": "s",
                    "spec_json": "{}",
                    "input_sha256": "x",
                    "output_uri": "/o",
                    "run_date": "2026-11-27",
                    "max_attempts": 3,
                    "max_enqueued_tokens": 1,
                    "max_requests_per_batch": 1,
                    "max_batch_bytes": 1,
                    "created_at": NOW,
                },
            )
            first = Ref("b" * 64, "image/png", 10, "/pics/b.png")
            repo.insert_run_references(conn, "r1", [first])
            repo.insert_run_references(conn, "r1", [Ref("b" * 64, "image/png", 10, "/else.png")])
            assert repo.run_has_references(conn, "r1")
            found = repo.run_references(conn, "r1", ["b" * 64, "c" * 64])
        assert list(found) == ["b" * 64]
        assert found["b" * 64].source == "/pics/b.png"
    finally:
        engine.dispose()
