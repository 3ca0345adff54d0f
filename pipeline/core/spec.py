"""The job spec: TOML text to a validated, frozen JobSpec (CONTRACT.md section 2).

Pure: the caller reads the file and passes its text and path. Every error is a SpecError
naming the spec file, the dotted key, the bad value and what would be valid.

Decisions where the contract is silent:
- Relative paths (input path, a local output uri) are made absolute against the spec file's
  folder and normalised (`..` folded), without touching the file system; `~` is expanded.
  `file://` in a local uri is dropped. Existence is the shell's business.
- For a model that takes no image size (gemini-2.5-flash-image), `[image] size` is ignored
  and stored as "" so no imageSize is sent; per-row `image_size` cells are ignored too.
- A prompt template uses plain `{column}` placeholders; the text between the braces is the
  column name as it is (no attribute/index access, no format spec, no conversion); `{{` and
  `}}` are literal braces.
- `[channel] kind = "vertex"` resolves project and location when the spec is read (from the
  `defaults` the caller passes: GOOGLE_CLOUD_PROJECT / GOOGLE_CLOUD_LOCATION), so the run
  records where its batches go and a cron tick without those variables finds them. Sizes,
  request counts and webhooks Vertex batch does not serve are refused here (exit 2).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import math
import os
import re
import string
import tomllib
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pipeline.core import catalog
from pipeline.core.errors import SpecError

NAME_RE = re.compile(r"[a-z0-9][a-z0-9-]*")
URI_PLACEHOLDERS = ("job", "date", "run")
RATIO_COLUMN = "aspect_ratio"
"""A column with this name overrides [image] aspect_ratio per row."""
SIZE_COLUMN = "image_size"
"""A column with this name overrides [image] size per row."""
DEFAULT_MAX_ATTEMPTS = 3
DEFAULT_MAX_ENQUEUED_TOKENS = 2_000_000
MAX_VARIANTS = 8

_TOP_KEYS = (
    "name",
    "model",
    "fallback_model",
    "input",
    "image",
    "output",
    "limits",
    "channel",
    "notify",
)
_INPUT_KEYS = ("path", "id_column", "prompt", "prompt_column", "encoding", "images", "variants")
_IMAGE_KEYS = ("aspect_ratio", "size")
_OUTPUT_KEYS = ("uri", "overwrite")
_LIMIT_KEYS = ("max_attempts", "budget_usd", "max_requests_per_batch", "max_enqueued_tokens")
_CHANNEL_KEYS = ("kind", "project", "location", "staging_uri")
CHANNEL_KINDS = ("gemini", "vertex")
_GCP_PROJECT_RE = re.compile(r"[a-z0-9][a-z0-9.:-]{0,99}")
"""A project id (6-30 of a-z 0-9 -) or a legacy domain-scoped one (example.com:name)."""
_LOCATION_RE = re.compile(r"[a-z0-9-]{2,40}")
_NOTIFY_KEYS = ("webhook_url",)
_SCHEME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


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


# ---------------------------------------------------------------- messages and typed getters


def _show(value: Any) -> str:
    if isinstance(value, str):
        text = json.dumps(value, ensure_ascii=False)
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, dict):
        text = "a table"
    else:
        text = str(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _listing(values: tuple[str, ...] | list[str]) -> str:
    return ", ".join(values) if values else "(none)"


@dataclass(frozen=True)
class _Ctx:
    path: Path

    def bad(self, key: str, value: Any, problem: str, valid: str | None = None) -> SpecError:
        tail = f"; valid: {valid}" if valid else ""
        return SpecError(f"{self.path}: {key} = {_show(value)}: {problem}{tail}")

    def missing(self, key: str, hint: str) -> SpecError:
        return SpecError(f"{self.path}: {key} is required: {hint}")

    def check_keys(self, table: Mapping[str, Any], prefix: str, known: tuple[str, ...]) -> None:
        for key in table:
            if key not in known:
                where = f"[{prefix}]" if prefix else "the top level"
                raise SpecError(
                    f"{self.path}: {_dotted(prefix, key)}: unknown key in {where}; "
                    f"valid keys: {_listing(known)}"
                )

    def table(self, data: Mapping[str, Any], key: str, required: bool) -> Mapping[str, Any]:
        if key not in data:
            if required:
                raise self.missing(f"[{key}]", f"add a [{key}] table")
            return {}
        value = data[key]
        if not isinstance(value, dict):
            raise self.bad(key, value, f"must be a table: write [{key}] on its own line")
        return value

    def string(self, table: Mapping[str, Any], key: str, prefix: str = "") -> str | None:
        value = table.get(key)
        if value is None:
            return None
        if not isinstance(value, str):
            raise self.bad(_dotted(prefix, key), value, "must be a string (in quotes)")
        return value

    def integer(
        self, table: Mapping[str, Any], key: str, prefix: str, default: int | None
    ) -> int | None:
        value = table.get(key, default)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.bad(_dotted(prefix, key), value, "must be a whole number", "an integer >= 1")
        if value < 1:
            raise self.bad(_dotted(prefix, key), value, "must be at least 1", "an integer >= 1")
        return value


def _dotted(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


# ---------------------------------------------------------------- sections


def _parse_toml(text: str, ctx: _Ctx) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{ctx.path}: not valid TOML: {exc}") from exc


def _name(data: Mapping[str, Any], ctx: _Ctx) -> str:
    name = ctx.string(data, "name")
    if name is None:
        raise ctx.missing("name", 'add name = "my-job" (lowercase letters, digits, -)')
    if not NAME_RE.fullmatch(name):
        raise ctx.bad(
            "name",
            name,
            "not a valid job name",
            "lowercase letters, digits and '-', "
            'starting with a letter or digit, e.g. "product-shots"',
        )
    return name


def _model(data: Mapping[str, Any], key: str, models: catalog.Catalog, ctx: _Ctx) -> str | None:
    name = ctx.string(data, key)
    if name is None:
        return None
    try:
        models.get(name)
    except KeyError:
        raise ctx.bad(key, name, "unknown model", _listing(models.names())) from None
    return name


def _local_path(raw: str, base: Path) -> str:
    expanded = os.path.expanduser(raw)
    return os.path.normpath(os.path.join(base, expanded))


def _encoding(value: str | None, ctx: _Ctx) -> str:
    if value is None:
        return "utf-8"
    try:
        b"a".decode(value)
    except (LookupError, UnicodeDecodeError):
        raise ctx.bad(
            "input.encoding",
            value,
            "unknown text encoding",
            "a Python codec name such as utf-8, utf-8-sig, latin-1, cp1252, utf-16",
        ) from None
    return value


def _input(data: Mapping[str, Any], base: Path, ctx: _Ctx) -> InputSpec:
    table = ctx.table(data, "input", required=True)
    ctx.check_keys(table, "input", _INPUT_KEYS)
    path = ctx.string(table, "path", "input")
    if not path:
        raise ctx.missing("input.path", "the table to read (.csv, .csv.gz or .parquet)")
    id_column = ctx.string(table, "id_column", "input")
    if not id_column:
        raise ctx.missing("input.id_column", "the column holding each item's unique key")
    prompt = ctx.string(table, "prompt", "input")
    prompt_column = ctx.string(table, "prompt_column", "input")
    if (prompt is None) == (prompt_column is None):
        raise SpecError(
            f"{ctx.path}: input.prompt / input.prompt_column: give exactly one: "
            'prompt = "template with {column} placeholders" or prompt_column = "column"'
        )
    if prompt is not None:
        _template_fields(prompt, ctx)
    elif not prompt_column:
        raise ctx.bad("input.prompt_column", prompt_column, "must name a column")
    encoding = _encoding(ctx.string(table, "encoding", "input"), ctx)
    return InputSpec(
        Path(_local_path(path, base)),
        id_column,
        prompt,
        prompt_column,
        encoding,
        _images(table.get("images"), ctx),
        _variants(table.get("variants", 1), ctx),
    )


def _images(value: Any, ctx: _Ctx) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ctx.bad(
            "input.images",
            value,
            "must be a list of column names",
            'e.g. images = ["product_photo", "style_ref"]',
        )
    for column in value:
        if value.count(column) > 1:
            raise ctx.bad("input.images", value, f"names the column {column!r} twice")
    return tuple(value)


def _variants(value: Any, ctx: _Ctx) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_VARIANTS:
        raise ctx.bad(
            "input.variants", value, "images per row", f"a whole number from 1 to {MAX_VARIANTS}"
        )
    return value


def _image(data: Mapping[str, Any], info: catalog.ModelInfo, ctx: _Ctx) -> ImageSpec:
    table = ctx.table(data, "image", required=False)
    ctx.check_keys(table, "image", _IMAGE_KEYS)
    ratio = ctx.string(table, "aspect_ratio", "image") or "1:1"
    if ratio not in info.aspect_ratios:
        raise ctx.bad(
            "image.aspect_ratio",
            ratio,
            f"not accepted by {info.name}",
            _listing(info.aspect_ratios),
        )
    size = ctx.string(table, "size", "image")
    if not info.sizes:
        return ImageSpec(aspect_ratio=ratio, size="")
    size = size or info.default_size or info.sizes[0]
    if size not in info.sizes:
        problem = info.size_limit or f"not accepted by {info.name}"
        raise ctx.bad("image.size", size, problem, _listing(info.sizes))
    return ImageSpec(aspect_ratio=ratio, size=size)


def _check_uri_placeholders(uri: str, ctx: _Ctx) -> None:
    valid = " ".join("{" + p + "}" for p in URI_PLACEHOLDERS)
    try:
        parsed = list(string.Formatter().parse(uri))
    except ValueError as exc:
        raise ctx.bad("output.uri", uri, f"{exc} (write {{{{ or }}}} for a brace)", valid) from None
    for _, field, spec, conv in parsed:
        if field is None:
            continue
        if field not in URI_PLACEHOLDERS or spec or conv:
            shown = "{" + field + (f"!{conv}" if conv else "") + (f":{spec}" if spec else "") + "}"
            raise ctx.bad("output.uri", uri, f"unknown placeholder {shown}", valid)


def _output(data: Mapping[str, Any], base: Path, ctx: _Ctx) -> OutputSpec:
    table = ctx.table(data, "output", required=True)
    ctx.check_keys(table, "output", _OUTPUT_KEYS)
    uri = ctx.string(table, "uri", "output")
    if not uri:
        raise ctx.missing("output.uri", "a local folder or gs://bucket/prefix")
    overwrite = table.get("overwrite", False)
    if not isinstance(overwrite, bool):
        raise ctx.bad("output.overwrite", overwrite, "must be true or false", "true, false")
    _check_uri_placeholders(uri, ctx)
    if uri.startswith("gs://"):
        if not uri[len("gs://") :].split("/", 1)[0]:
            raise ctx.bad("output.uri", uri, "no bucket name", "gs://bucket/prefix")
        return OutputSpec(uri=uri.rstrip("/"), overwrite=overwrite)
    local = uri[len("file://") :] if uri.startswith("file://") else uri
    if _SCHEME_RE.match(local) or not local:
        raise ctx.bad(
            "output.uri",
            uri,
            "unsupported location",
            "a local folder (relative to the spec file), file:///abs/path or gs://bucket/prefix",
        )
    escaped_base = str(base).replace("{", "{{").replace("}", "}}")
    return OutputSpec(uri=_local_path(local, Path(escaped_base)), overwrite=overwrite)


def _budget(table: Mapping[str, Any], ctx: _Ctx) -> Decimal | None:
    value = table.get("budget_usd")
    if value is None:
        return None
    ok_type = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok_type or not math.isfinite(value) or value <= 0:
        raise ctx.bad("limits.budget_usd", value, "must be a number above 0", "e.g. 50.0")
    return Decimal(str(value))


def _limits(data: Mapping[str, Any], ctx: _Ctx) -> LimitsSpec:
    table = ctx.table(data, "limits", required=False)
    ctx.check_keys(table, "limits", _LIMIT_KEYS)
    attempts = ctx.integer(table, "max_attempts", "limits", DEFAULT_MAX_ATTEMPTS)
    per_batch = ctx.integer(table, "max_requests_per_batch", "limits", None)
    tokens = ctx.integer(table, "max_enqueued_tokens", "limits", DEFAULT_MAX_ENQUEUED_TOKENS)
    assert attempts is not None and tokens is not None
    return LimitsSpec(
        max_attempts=attempts,
        budget_usd=_budget(table, ctx),
        max_requests_per_batch=per_batch,
        max_enqueued_tokens=tokens,
    )


def _notify(data: Mapping[str, Any], ctx: _Ctx) -> NotifySpec:
    table = ctx.table(data, "notify", required=False)
    ctx.check_keys(table, "notify", _NOTIFY_KEYS)
    url = ctx.string(table, "webhook_url", "notify")
    if url is None:
        return NotifySpec()
    parts = urlsplit(url)
    try:
        host, _port = parts.hostname, parts.port
    except ValueError:
        host = None
    secure = parts.scheme == "https" and bool(host)
    if not (secure or (parts.scheme == "http" and _loopback(host or ""))) or any(
        c.isspace() for c in url
    ):
        raise ctx.bad(
            "notify.webhook_url",
            url,
            "must be an https URL (the service requires it); http only to a loopback "
            "address (the emulator)",
            "e.g. https://hooks.example.com/gemini-webhook",
        )
    return NotifySpec(webhook_url=url)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _channel(data: Mapping[str, Any], defaults: Mapping[str, str], ctx: _Ctx) -> ChannelSpec:
    table = ctx.table(data, "channel", required=False)
    ctx.check_keys(table, "channel", _CHANNEL_KEYS)
    kind = ctx.string(table, "kind", "channel") or "gemini"
    if kind not in CHANNEL_KINDS:
        raise ctx.bad("channel.kind", kind, "unknown channel", _listing(CHANNEL_KINDS))
    if kind == "gemini":
        extra = [k for k in ("project", "location", "staging_uri") if k in table]
        if extra:
            raise ctx.bad(
                f"channel.{extra[0]}",
                table[extra[0]],
                'only for kind = "vertex" (the Gemini Developer API takes none)',
            )
        return ChannelSpec()
    notify = data.get("notify")
    if isinstance(notify, dict) and "webhook_url" in notify:
        raise ctx.bad(
            "notify.webhook_url",
            notify["webhook_url"],
            "webhooks are not on Vertex AI: batch prediction jobs are polled by `nanobatch "
            'tick`; remove notify.webhook_url, or use kind = "gemini"',
        )
    project = ctx.string(table, "project", "channel") or defaults.get("project") or ""
    if not project:
        raise ctx.missing(
            "channel.project", "the Google Cloud project, or set GOOGLE_CLOUD_PROJECT"
        )
    if not _GCP_PROJECT_RE.fullmatch(project):
        raise ctx.bad("channel.project", project, "not a Google Cloud project id")
    location = ctx.string(table, "location", "channel") or defaults.get("location") or ""
    if not location:
        raise ctx.missing(
            "channel.location",
            'the Vertex AI region, e.g. "us-central1", or set GOOGLE_CLOUD_LOCATION',
        )
    if not _LOCATION_RE.fullmatch(location):
        raise ctx.bad("channel.location", location, "not a Vertex AI location", "e.g. us-central1")
    return ChannelSpec("vertex", project, location, _staging_uri(table, ctx))


def _staging_uri(table: Mapping[str, Any], ctx: _Ctx) -> str:
    uri = ctx.string(table, "staging_uri", "channel")
    if not uri:
        raise ctx.missing(
            "channel.staging_uri",
            "a gs://bucket/prefix for request files and predictions (Vertex AI batch "
            "prediction reads and writes Cloud Storage)",
        )
    bucket = uri[len("gs://") :].split("/", 1)[0] if uri.startswith("gs://") else ""
    if not bucket or "{" in uri or "}" in uri:
        raise ctx.bad("channel.staging_uri", uri, "must be gs://bucket/prefix", "gs://my-bucket/nb")
    return uri.rstrip("/")


def _check_vertex_limits(limits: LimitsSpec, models: catalog.Catalog, ctx: _Ctx) -> None:
    found = models.limits("vertex")
    assert found is not None
    per_batch = limits.max_requests_per_batch
    if per_batch is not None and per_batch > found.max_requests_per_job:
        raise ctx.bad(
            "limits.max_requests_per_batch",
            per_batch,
            f"more than the {found.max_requests_per_job:,} requests a Vertex AI batch "
            "prediction job may hold",
            f"an integer from 1 to {found.max_requests_per_job}",
        )


# ---------------------------------------------------------------- public API


def parse_spec(
    text: str,
    spec_path: Path,
    models: catalog.Catalog,
    defaults: Mapping[str, str] | None = None,
) -> JobSpec:
    """Validate TOML text into a JobSpec; raise SpecError naming the key and the valid values.

    `defaults` may hold "project" and "location" for a Vertex channel (the caller's
    GOOGLE_CLOUD_PROJECT and GOOGLE_CLOUD_LOCATION)."""
    source = Path(os.path.normpath(spec_path.expanduser().absolute()))
    ctx = _Ctx(source)
    data = _parse_toml(text, ctx)
    # First: a Vertex spec with a webhook is refused for that reason, not as an unknown key.
    channel = _channel(data, defaults or {}, ctx)
    ctx.check_keys(data, "", _TOP_KEYS)
    name = _name(data, ctx)
    served = models.for_channel(channel.kind)
    model = _model(data, "model", served, ctx)
    if model is None:
        raise ctx.missing("model", f"one of {_listing(models.names())}")
    fallback = _model(data, "fallback_model", served, ctx)
    base = source.parent
    limits = _limits(data, ctx)
    if channel.is_vertex:
        _check_vertex_limits(limits, models, ctx)
    input_spec = _input(data, base, ctx)
    if channel.is_vertex and input_spec.images:
        raise ctx.bad(
            "input.images",
            list(input_spec.images),
            'reference images are sent through the Files API, which [channel] kind = "vertex" '
            "does not have",
            'the Gemini channel (kind = "gemini", the default)',
        )
    return JobSpec(
        name=name,
        model=model,
        fallback_model=fallback,
        input=input_spec,
        image=_image(data, served.get(model), ctx),
        output=_output(data, base, ctx),
        limits=limits,
        source=source,
        channel=channel,
        notify=_notify(data, ctx),
    )


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


def _template_fields(template: str, ctx: _Ctx | None) -> tuple[str, ...]:
    key = "input.prompt"
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        if ctx is None:
            raise
        raise ctx.bad(key, template, f"{exc} (write {{{{ or }}}} for a literal brace)") from None
    fields: list[str] = []
    for _, field, spec, conv in parsed:
        if field is None:
            continue
        if ctx is not None and (not field.strip() or field.isdigit()):
            raise ctx.bad(key, template, "a placeholder must name a column, e.g. {title}")
        if ctx is not None and (spec or conv):
            raise ctx.bad(
                key,
                template,
                f"placeholder {{{field}}} has a format spec or conversion; use plain {{column}}",
            )
        if field not in fields:
            fields.append(field)
    return tuple(fields)


def template_fields(spec: JobSpec) -> tuple[str, ...]:
    """Column names used by the prompt template, in order of first use; () for prompt_column."""
    if spec.input.prompt is None:
        return ()
    return _template_fields(spec.input.prompt, None)


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
