"""The `Ledger`'s harvest steps: what a harvest joins result lines against (`harvest_start`),
recording lines' outcomes many per transaction (`record_lines`), and the last records with
done -> harvested (`batch_harvested`). An attempt is inserted once, under UNIQUE(item_id,
batch_id, duplicate), so a replay after a kill never records one twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pipeline.adapters.ledger import batches, items, outcomes, references
from pipeline.adapters.ledger.base import LedgerBase
from pipeline.adapters.ledger.outcomes import AttemptOutcome, BilledDuplicate
from pipeline.adapters.ledger.rows import BatchRow
from pipeline.core.states import BatchState


@dataclass(frozen=True)
class HarvestStart:
    """What a batch's harvest starts from, read in one snapshot."""

    rows: tuple[Any, ...]
    """Every item of the batch (`items.batch_attempts`): `outcome` None when not recorded."""
    prior: dict[int, dict[str, int]]
    """item id -> its totals over earlier attempts (`items.item_totals`)."""
    upload_shas: dict[str, str]
    """Upload file name -> the sha256 of its reference image, for the batch's images
    (`references.upload_names_of`: which image a results line's error names)."""


class HarvestSteps(LedgerBase):
    def harvest_start(self, batch_id: int) -> HarvestStart:
        with self._read() as conn:
            rows = items.batch_attempts(conn, batch_id)
            prior = items.item_totals(conn, [r.item_id for r in rows])
            shas = {sha for r in rows if r.refs for sha in r.refs.split(",")}
            uploads = references.upload_names_of(conn, sorted(shas)) if shas else {}
        return HarvestStart(tuple(rows), prior, uploads)

    def record_lines(
        self,
        run_id: str,
        batch: BatchRow,
        recorded: Sequence[AttemptOutcome],
        duplicates: Sequence[BilledDuplicate],
        now: datetime,
    ) -> None:
        """Lines' outcomes (each item's next state decided by the caller's policy) and billed
        duplicate lines, in one transaction."""
        with self._write() as conn:
            outcomes.record_outcomes(conn, run_id, batch.id, recorded, now, model=batch.model)
            outcomes.record_duplicates(conn, batch.id, batch.model, duplicates, now)

    def batch_harvested(
        self,
        run_id: str,
        batch: BatchRow,
        recorded: Sequence[AttemptOutcome],
        now: datetime,
        detail: str,
    ) -> None:
        """The last outcomes (lines missing from the file) and done -> harvested, in one
        transaction. StaleTransition when another process moved the batch first."""
        with self._write() as conn:
            outcomes.record_outcomes(conn, run_id, batch.id, recorded, now, model=batch.model)
            batches.transition_batch(
                conn,
                batch.id,
                BatchState.DONE,
                BatchState.HARVESTED,
                now,
                detail,
                harvested_at=now,
            )
