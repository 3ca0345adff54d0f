"""Reading a spec and its table into a stream of items and rejects, and the dry-run plan
(`nanobatch plan`): counts, batches, estimated cost and quota windows. Touches no network
and no ledger.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.adapters import inputs
from pipeline.adapters.references import ReferenceBook
from pipeline.core import expand, rows, shard, table
from pipeline.core.catalog import Catalog, ModelInfo, load_catalog
from pipeline.core.errors import SpecError, UsageError
from pipeline.core.spec import JobSpec, required_columns, template_fields
from pipeline.core.spec_parse import parse_spec
from pipeline.core.values import nanos_to_usd, usd_to_nanos

OVERRIDE_COLUMNS = ("aspect_ratio", "image_size")


def load_spec(
    path: Path, catalog: Catalog | None = None, defaults: Mapping[str, str] | None = None
) -> JobSpec:
    """Read and validate a spec file; SpecError naming the file when it cannot be read.
    `defaults`: a Vertex channel's project and location (Settings.channel_defaults)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(f"{path}: no such spec file; job specs live in jobs/*.toml") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"{path}: cannot read the spec ({exc})") from None
    return parse_spec(text, path.resolve(), catalog or load_catalog(), defaults)


def nothing_to_do(spec: JobSpec, rejected: int) -> UsageError:
    """The error for a table that gives no request to send (exit 2): an empty run would only
    look like finished work."""
    if rejected:
        why, fix = (
            f"all {rejected} rows are rejected",
            "fix them (`nanobatch plan SPEC` lists them)",
        )
    else:
        why, fix = "it has no data rows", "add rows below the header"
    return UsageError(f"{spec.input.path}: {why}; nothing to do ({fix}).")


def expansion(
    spec: JobSpec, info: ModelInfo, book: ReferenceBook | None = None
) -> Iterator[table.Expanded]:
    """Items and rejects of the spec's table, a block at a time, streamed; InputError for a
    missing column. Reference images are read through `book` (by default one that reads
    local files only: gs:// objects are checked at submit)."""
    present = inputs.check_columns(
        spec.input.path, required_columns(spec), OVERRIDE_COLUMNS, spec.input.encoding
    )
    columns = [*required_columns(spec), *sorted(present)]
    path, encoding = spec.input.path, spec.input.encoding
    inputs.check_column_types(path, column_uses(spec))
    repeated = inputs.repeated_key_hashes(path, spec.input.id_column, encoding, spec.input.variants)
    blocks = inputs.read_blocks(path, list(dict.fromkeys(columns)), encoding)
    if book is None and spec.input.images:
        book = ReferenceBook(spec.source.parent)
    return rows.expand_columns(
        spec,
        info,
        blocks,
        repeated_keys=repeated,
        has_ratio_column="aspect_ratio" in present,
        has_size_column="image_size" in present,
        references=book,
    )


def column_uses(spec: JobSpec) -> dict[str, str]:
    """What the job makes of each column it reads (inputs.TEXT, KEY or VALUE); a column with
    two uses gets the stricter (a key that is also a template value must be a key)."""
    uses = {name: inputs.VALUE for name in template_fields(spec)}
    for name in (spec.input.prompt_column, *OVERRIDE_COLUMNS, *spec.input.images):
        if name is not None:
            uses[name] = inputs.TEXT
    if uses.get(spec.input.id_column) != inputs.TEXT:
        uses[spec.input.id_column] = inputs.KEY
    return uses


@dataclass
class SizeLine:
    items: int = 0
    batch_nanos: int = 0
    standard_nanos: int = 0


@dataclass
class Plan:
    job: str
    model: str
    items: int = 0
    rejected: int = 0
    batches: int = 0
    est_tokens: int = 0
    batch_nanos: int = 0
    standard_nanos: int = 0
    quota_windows: int = 0
    max_enqueued_tokens: int = 0
    channel: str = "gemini"
    by_size: dict[str, SizeLine] = field(default_factory=dict)
    """By image size ("" for a model without sizes)."""
    rejects: list[table.Reject] = field(default_factory=list)
    budget_nanos: int | None = None
    """The spec's [limits] budget_usd."""
    references: int = 0
    """Reference images sent with the items (one per item and image, variants included)."""
    variants: int = 1

    @property
    def warnings(self) -> list[str]:
        """What the user should know before submitting (the plan is still valid)."""
        found = []
        if self.budget_nanos is not None and self.batch_nanos > self.budget_nanos:
            found.append(
                f"the estimate ${nanos_to_usd(self.batch_nanos):.4f} at batch price exceeds "
                f"[limits] budget_usd ${nanos_to_usd(self.budget_nanos):.4f}: batches past the "
                "budget wait (and `run` stops); raise budget_usd before the first submit, or "
                "later, for the run, with `nanobatch budget RUN --usd X`"
            )
        return found

    def asdict(self) -> dict[str, object]:
        return {
            "job": self.job,
            "model": self.model,
            "items": self.items,
            "rejected": self.rejected,
            "batches": self.batches,
            "estimate": {
                "batch_usd": round(nanos_to_usd(self.batch_nanos), 6),
                "standard_usd": round(nanos_to_usd(self.standard_nanos), 6),
                "tokens": self.est_tokens,
                "by_size": {
                    f"{self.model} {size or '-'}": {
                        "items": line.items,
                        "batch_usd": round(nanos_to_usd(line.batch_nanos), 6),
                        "standard_usd": round(nanos_to_usd(line.standard_nanos), 6),
                    }
                    for size, line in sorted(self.by_size.items())
                },
            },
            "quota_windows": self.quota_windows,
            # Vertex AI batch prediction has no enqueued-token quota: the spec's is ignored.
            "max_enqueued_tokens": self.max_enqueued_tokens if self.channel == "gemini" else None,
            "channel": self.channel,
            "references": self.references,
            "variants": self.variants,
            "budget_usd": nanos_to_usd(self.budget_nanos)
            if self.budget_nanos is not None
            else None,
            "warnings": self.warnings,
        }


def make_plan(spec: JobSpec, catalog: Catalog, keep_rejects: int = 20) -> Plan:
    """Expand and shard the spec's table in one streaming pass."""
    info = catalog.for_channel(spec.channel.kind).get(spec.model)
    budget = spec.limits.budget_usd
    plan = Plan(
        job=spec.name,
        model=spec.model,
        max_enqueued_tokens=spec.limits.max_enqueued_tokens,
        budget_nanos=usd_to_nanos(budget) if budget is not None else None,
        channel=spec.channel.kind,
        variants=spec.input.variants,
    )
    limits = shard.limits_for(spec, catalog)
    packer = shard.Packer(limits)
    for block in expansion(spec, info):
        plan.rejected += len(block.rejects)
        plan.rejects.extend(block.rejects[: max(0, keep_rejects - len(plan.rejects))])
        items = block.items
        _count_items(plan, items)
        plan.references += sum(map(len, items.refs))
        lengths = expand.line_lengths(items)
        plan.batches += len(packer.starts(lengths, items.tokens()))
    plan.quota_windows = shard.quota_windows(plan.est_tokens, limits.max_tokens)
    return plan


def _count_items(plan: Plan, items: table.Items) -> None:
    plan.items += len(items)
    for size in set(items.sizes):
        estimates = [e for e, s in zip(items.estimates, items.sizes, strict=True) if s == size]
        line = plan.by_size.get(size)
        if line is None:
            line = plan.by_size[size] = SizeLine()
        batch = sum(e.batch_nanos for e in estimates)
        standard = sum(e.standard_nanos for e in estimates)
        plan.est_tokens += sum(e.tokens for e in estimates)
        line.items += len(estimates)
        line.batch_nanos += batch
        line.standard_nanos += standard
        plan.batch_nanos += batch
        plan.standard_nanos += standard
