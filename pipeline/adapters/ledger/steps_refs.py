"""The `Ledger`'s reference-image uploads (intent before the upload, done or stale after)
and webhook deliveries (recorded once by key, finished when their batch moved on).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from pipeline.adapters.ledger import batches, deliveries, references
from pipeline.adapters.ledger.base import LedgerBase
from pipeline.adapters.ledger.deliveries import DeliveryRow
from pipeline.adapters.ledger.references import ReferenceRow, UploadRow
from pipeline.adapters.ledger.rows import BatchRow


@dataclass(frozen=True)
class BatchSources:
    """The reference images a batch's unsettled items need, and their recorded sources."""

    shas: tuple[str, ...]
    sources: dict[str, ReferenceRow]


class RefSteps(LedgerBase):
    # ── reference images ─────────────────────────────────────────────────────────────────

    def batch_sources(self, run_id: str, batch_id: int) -> BatchSources:
        with self._read() as conn:
            shas = references.batch_reference_shas(conn, batch_id)
            return BatchSources(tuple(shas), references.run_references(conn, run_id, shas))

    def not_send(self, batch: BatchRow, failed: dict[str, str], now: datetime) -> dict[str, int]:
        """A batch not yet created whose items need an image that cannot be sent (sha256 ->
        why, in `failed`): those items fail for good, unsent, no try counted. Returns how
        many items failed for each reason."""
        failed_by_reason: dict[str, list[int]] = {}
        with self._write() as conn:
            for item_id, refs in references.batch_items_with_refs(conn, batch.id):
                bad = next((sha for sha in refs.split(",") if sha in failed), None)
                if bad is not None:
                    failed_by_reason.setdefault(failed[bad], []).append(item_id)
            for reason, ids in failed_by_reason.items():
                references.not_send_items(conn, batch, ids, reason, now)
        return {reason: len(ids) for reason, ids in failed_by_reason.items()}

    def uploads_of(self, sha256: str) -> list[UploadRow]:
        with self._read() as conn:
            return references.uploads_of(conn, sha256)

    def upload_intent(self, sha256: str, name: str, mime: str, now: datetime) -> UploadRow | None:
        """Record an upload before it is made; None when the name is taken already."""
        with self._write() as conn:
            return references.record_upload_intent(conn, sha256, name, mime, now)

    def upload_done(
        self, upload_id: int, uri: str, expires_at: datetime | None, now: datetime
    ) -> None:
        with self._write() as conn:
            references.record_upload_done(conn, upload_id, uri, expires_at, now)

    def upload_stale(self, upload_id: int, reason: str) -> None:
        """An upload never reused again."""
        with self._write() as conn:
            references.mark_upload_stale(conn, upload_id, reason)

    def uploads_gone(self, names: Sequence[str], reason: str) -> int:
        """The uploads among `names` become stale; how many the ledger knew."""
        with self._write() as conn:
            found = references.uploads_named(conn, sorted(names))
            for row in found.values():
                references.mark_upload_stale(conn, row.id, reason)
        return len(found)

    # ── webhook deliveries ───────────────────────────────────────────────────────────────

    def record_delivery(
        self,
        *,
        key: str,
        scheme: str,
        event: str,
        batch_name: str | None,
        state: str,
        now: datetime,
        detail: str | None = None,
        batch_id: int | None = None,
    ) -> bool:
        """Record a delivery once by its key; False when that key is recorded already."""
        return deliveries.record(
            self._engine,
            key=key,
            scheme=scheme,
            event=event,
            batch_name=batch_name,
            state=state,
            now=now,
            detail=detail,
            batch_id=batch_id,
        )

    def finish_deliveries(self, batch_name: str, state: str, detail: str, now: datetime) -> int:
        """The queued deliveries naming a batch are done (or ignored); how many."""
        with self._write() as conn:
            batch = batches.batch_by_remote_name(conn, batch_name)
            batch_id = batch.id if batch else None
            return deliveries.finish(conn, batch_name, batch_id, state, detail, now)

    def pending_deliveries(self, limit: int) -> list[DeliveryRow]:
        with self._read() as conn:
            return deliveries.pending(conn, limit)

    def webhook_urls(self) -> set[str]:
        with self._read() as conn:
            return deliveries.webhook_urls(conn)
