"""Reference images in the ledger (CONTRACT section 9): where a run reads each of its images
(`run_references`), their Files API uploads with intent and expiry (`uploads`), and the items
of a batch that cannot be sent because an image cannot be uploaded.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from pipeline.adapters.ledger.items import (
    attempt_row,
    batch_request_rows,
    insert_attempts,
    item_events,
)
from pipeline.adapters.ledger.rows import (
    BATCHES,
    ITEMS,
    RUN_REFERENCES,
    UPLOADS,
    BatchRow,
    _chunks,
)
from pipeline.adapters.ledger.runs import _placeholder
from pipeline.core.reasons import ReasonCode


def insert_run_references(conn: Connection, run_id: str, refs: Iterable[Any]) -> None:
    """Where the run reads each of these reference images (`refimage.Ref`s); one row per
    image and run, the first source recorded wins (a repeat is ignored by the database)."""
    rows = [(run_id, r.sha256, r.source, r.mime, r.size) for r in refs]
    if not rows:
        return
    marks = ", ".join([_placeholder(conn)] * 5)
    conn.exec_driver_sql(
        "INSERT INTO run_references (run_id, sha256, source, mime, size_bytes) "
        f"VALUES ({marks}) ON CONFLICT DO NOTHING",
        rows,
    )


@dataclass(frozen=True)
class ReferenceRow:
    sha256: str
    source: str
    mime: str
    size_bytes: int


def batch_reference_shas(conn: Connection, batch_id: int) -> list[str]:
    """The distinct reference sha256s of a batch's unsettled items, in first-use order."""
    found: dict[str, None] = {}
    for *_, refs in batch_request_rows(conn, batch_id):
        if refs:
            found.update(dict.fromkeys(refs.split(",")))
    return list(found)


def run_references(conn: Connection, run_id: str, shas: Sequence[str]) -> dict[str, ReferenceRow]:
    """sha256 -> where the run reads it, for these images."""
    found: dict[str, ReferenceRow] = {}
    for chunk in _chunks(list(shas), 500):
        rows = conn.execute(
            select(
                RUN_REFERENCES.c.sha256,
                RUN_REFERENCES.c.source,
                RUN_REFERENCES.c.mime,
                RUN_REFERENCES.c.size_bytes,
            ).where(RUN_REFERENCES.c.run_id == run_id, RUN_REFERENCES.c.sha256.in_(chunk))
        )
        found.update({r.sha256: ReferenceRow(*r) for r in rows})
    return found


@dataclass(frozen=True)
class UploadRow:
    id: int
    sha256: str
    name: str
    uri: str | None
    mime: str
    state: str
    expires_at: datetime | None
    created_at: datetime


def _upload(row: Any) -> UploadRow:
    return UploadRow(**{f: getattr(row, f) for f in UploadRow.__dataclass_fields__})


def uploads_of(conn: Connection, sha256: str) -> list[UploadRow]:
    """Every upload of an image, newest first."""
    rows = conn.execute(
        select(UPLOADS).where(UPLOADS.c.sha256 == sha256).order_by(UPLOADS.c.id.desc())
    )
    return [_upload(r) for r in rows]


def upload_named(conn: Connection, name: str) -> UploadRow | None:
    row = conn.execute(select(UPLOADS).where(UPLOADS.c.name == name)).first()
    return _upload(row) if row else None


def record_upload_intent(
    conn: Connection, sha256: str, name: str, mime: str, now: datetime
) -> UploadRow | None:
    """The intent to upload an image as `name`, committed before the upload is sent; None
    when another writer took the name first (a savepoint keeps the caller's transaction)."""
    try:
        with conn.begin_nested():
            conn.execute(
                insert(UPLOADS).values(
                    sha256=sha256, name=name, mime=mime, state="uploading", created_at=now
                )
            )
    except IntegrityError:
        return None
    return upload_named(conn, name)


def record_upload_done(
    conn: Connection, upload_id: int, uri: str, expires_at: datetime | None, now: datetime
) -> None:
    conn.execute(
        update(UPLOADS)
        .where(UPLOADS.c.id == upload_id)
        .values(state="active", uri=uri, expires_at=expires_at, uploaded_at=now, error=None)
    )


def mark_upload_stale(conn: Connection, upload_id: int, reason: str) -> None:
    """The upload is not to be used again (gone, expired, or its bytes were not the image's)."""
    conn.execute(
        update(UPLOADS).where(UPLOADS.c.id == upload_id).values(state="stale", error=reason[:500])
    )


def uploads_named(conn: Connection, names: Sequence[str]) -> dict[str, UploadRow]:
    """name -> upload, for these file names."""
    found: dict[str, UploadRow] = {}
    for chunk in _chunks(list(names), 500):
        rows = conn.execute(select(UPLOADS).where(UPLOADS.c.name.in_(chunk)))
        found.update({r.name: _upload(r) for r in rows})
    return found


def not_send_items(
    conn: Connection, batch: BatchRow, item_ids: Sequence[int], reason: str, now: datetime
) -> None:
    """Items of a batch not yet created that cannot be sent (a reference image cannot be
    uploaded): those still in it get a `not_sent` attempt and fail for good, no try
    counted; the batch's totals drop them."""
    if not item_ids:
        return
    in_batch = (ITEMS.c.state == "in_batch", ITEMS.c.batch_id == batch.id)
    for chunk in _chunks(list(item_ids), 500):
        ids = [
            r[0] for r in conn.execute(select(ITEMS.c.id).where(ITEMS.c.id.in_(chunk), *in_batch))
        ]
        if not ids:
            continue
        insert_attempts(
            conn,
            [
                attempt_row(
                    item_id,
                    batch.id,
                    batch.model,
                    "not_sent",
                    now,
                    reason=reason[:500],
                    code=ReasonCode.REFERENCE_UNSENT,
                )
                for item_id in ids
            ],
        )
        conn.execute(
            update(ITEMS)
            .where(ITEMS.c.id.in_(ids), *in_batch)
            .values(
                state="failed",
                final=True,
                error=reason[:500],
                reason_code=ReasonCode.REFERENCE_UNSENT,
                finished_at=now,
            )
        )
        item_events(conn, batch.run_id, ids, "in_batch", "failed", reason[:500], now, batch.id)
    left = conn.execute(
        select(func.count(), func.coalesce(func.sum(ITEMS.c.est_tokens), 0)).where(*in_batch)
    ).one()
    conn.execute(
        update(BATCHES)
        .where(BATCHES.c.id == batch.id)
        .values(item_count=int(left[0]), est_tokens=int(left[1]))
    )


def batch_items_with_refs(conn: Connection, batch_id: int) -> list[tuple[int, str]]:
    """(item id, refs) of the items still in a batch that have reference images."""
    return [
        (r[0], r[1])
        for r in conn.execute(
            select(ITEMS.c.id, ITEMS.c.refs).where(
                ITEMS.c.batch_id == batch_id,
                ITEMS.c.state == "in_batch",
                ITEMS.c.refs.is_not(None),
            )
        )
    ]


def run_has_references(conn: Connection, run_id: str) -> bool:
    """Whether any item of the run sends reference images."""
    found = conn.execute(
        select(RUN_REFERENCES.c.sha256).where(RUN_REFERENCES.c.run_id == run_id).limit(1)
    ).first()
    return found is not None


def upload_names_of(conn: Connection, shas: Sequence[str]) -> dict[str, str]:
    """file name -> sha256 of every upload of these images (stale ones too): which image a
    results line's error names."""
    found: dict[str, str] = {}
    for chunk in _chunks(list(shas), 500):
        rows = conn.execute(
            select(UPLOADS.c.name, UPLOADS.c.sha256).where(UPLOADS.c.sha256.in_(chunk))
        )
        found.update({name: sha for name, sha in rows})
    return found
