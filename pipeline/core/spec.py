"""The job spec's values: a validated, frozen JobSpec and what is derived from it.

Pure. `pipeline.core.spec_parse.parse_spec` reads TOML text into a JobSpec (CONTRACT.md
section 2); this module holds the frozen sections, the spec's constants, the run identity
record (`spec_record`), the columns the input must or may have and the output uri template.
A prompt template uses plain `{column}` placeholders (`{{` and `}}` are literal braces).
"""

from __future__ import annotations

import dataclasses
import json
import re
import string
from dataclasses import asdict, dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

NAME_RE = re.compile(r"[a-z0-9][a-z0-9-]*")
URI_PLACEHOLDERS = ("job", "date", "run")
RATIO_COLUMN = "aspect_ratio"
"""A column with this name overrides [image] aspect_ratio per row."""
SIZE_COLUMN = "image_size"
"""A column with this name overrides [image] size per row."""
DEFAULT_MAX_ATTEMPTS = 3
DEFAULT_MAX_ENQUEUED_TOKENS = 2_000_000
MAX_VARIANTS = 8
CHANNEL_KINDS = ("gemini", "vertex")


@dataclass(frozen=True)
class InputSpec:
    path: Path
    """Absolute path of the table (.csv, .csv.gz or .parquet), resolved against the spec folder."""
    id_column: str
    prompt: str | None
    """A template over columns, `{column}` placeholders; exactly one of prompt / prompt_column."""
    prompt_column: str | None
    encoding: str = "utf-8"
    images: tuple[str, ...] = ()
    """Columns holding reference images, in the order they are sent (CONTRACT section 9)."""
    variants: int = 1
    """Images per row: keys K.v1..K.vN, each sent with generationConfig.seed = n (N > 1)."""


@dataclass(frozen=True)
class ImageSpec:
    aspect_ratio: str = "1:1"
    size: str = "1K"
    """"" for a model that takes no size (then imageSize is not sent)."""


@dataclass(frozen=True)
class OutputSpec:
    uri: str
    """Template with {job} {date} {run}; a local path is made absolute against the spec's folder."""
    overwrite: bool = False


@dataclass(frozen=True)
class LimitsSpec:
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    budget_usd: Decimal | None = None
    max_requests_per_batch: int | None = None
    max_enqueued_tokens: int = DEFAULT_MAX_ENQUEUED_TOKENS


@dataclass(frozen=True)
class NotifySpec:
    webhook_url: str | None = None
    """Sent as the dynamic webhook of every batch the run creates (CONTRACT section 11):
    https, or http to a loopback address (the emulator). Not part of the run's identity."""


@dataclass(frozen=True)
class ChannelSpec:
    """Where the batches go: "gemini" (the Developer API) or "vertex" (Vertex AI batch
    prediction, with its project, location and gs:// staging prefix, all resolved)."""

    kind: str = "gemini"
    project: str | None = None
    location: str | None = None
    staging_uri: str | None = None

    @property
    def is_vertex(self) -> bool:
        return self.kind == "vertex"

    def to_json(self) -> str | None:
        """The run's `channel` column: None for the Developer API."""
        if not self.is_vertex:
            return None
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | None) -> ChannelSpec:
        if not text:
            return cls()
        return cls(**json.loads(text))


@dataclass(frozen=True)
class JobSpec:
    name: str
    model: str
    fallback_model: str | None
    input: InputSpec
    image: ImageSpec
    output: OutputSpec
    limits: LimitsSpec
    source: Path
    """The spec file's absolute path (for messages)."""
    channel: ChannelSpec = dataclasses.field(default_factory=ChannelSpec)
    notify: NotifySpec = NotifySpec()


def spec_record(spec: JobSpec) -> dict[str, Any]:
    """The spec as a plain dict, for a run's identity and `runs.spec_json`. Keys a spec added
    later are left out while they hold their defaults, so a spec written before them keeps
    the identity (and finds the runs) it had."""
    record = asdict(spec)
    # `[notify]` says where to tell, not what to make (runs.webhook_url keeps it): never part
    # of the identity, so adding or changing a webhook URL finds the same run.
    del record["notify"]
    if not spec.channel.is_vertex:
        del record["channel"]
    defaults = InputSpec(Path(), "", None, None)
    for key in ("images", "variants"):
        if record["input"][key] == getattr(defaults, key):
            del record["input"][key]
    return record


def template_fields(spec: JobSpec) -> tuple[str, ...]:
    """Column names used by the prompt template, in order of first use; () for prompt_column.
    (`parse_spec` has refused a template that does not parse.)"""
    if spec.input.prompt is None:
        return ()
    fields = (field for _, field, _, _ in string.Formatter().parse(spec.input.prompt))
    return tuple(dict.fromkeys(field for field in fields if field is not None))


def template_parts(template: str) -> tuple[tuple[str, str | None], ...]:
    """The template as (literal text, column or None) pairs, for rendering row by row."""
    return tuple((literal, field) for literal, field, _, _ in string.Formatter().parse(template))


def required_columns(spec: JobSpec) -> tuple[str, ...]:
    """Columns the input must have: the id column, then template fields or the prompt column,
    then the reference image columns."""
    others = (
        template_fields(spec) if spec.input.prompt_column is None else (spec.input.prompt_column,)
    )
    return tuple(dict.fromkeys((spec.input.id_column, *others, *spec.input.images)))


def optional_columns(spec: JobSpec) -> tuple[str, ...]:
    """Columns read when present: per-row aspect_ratio and image_size overrides."""
    return (RATIO_COLUMN, SIZE_COLUMN)


def resolve_output_uri(template: str, *, job: str, date: str, run: str) -> str:
    """Fill {job} {date} {run} in an output uri template."""
    return template.format(job=job, date=date, run=run)
