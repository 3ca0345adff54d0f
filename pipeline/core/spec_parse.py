"""Reading a job spec: TOML text to a validated, frozen JobSpec (CONTRACT.md section 2).

Pure: the caller reads the file and passes its text and path. Every error is a SpecError
naming the spec file, the dotted key, the bad value and what would be valid. The values
themselves are `pipeline.core.spec`.

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

import math
import os
import re
import string
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

from pipeline.core import catalog
from pipeline.core.errors import SpecError
from pipeline.core.spec import (
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_MAX_ENQUEUED_TOKENS,
    MAX_VARIANTS,
    NAME_RE,
    URI_PLACEHOLDERS,
    ImageSpec,
    InputSpec,
    JobSpec,
    LimitsSpec,
    OutputSpec,
)
from pipeline.core.spec_channel import channel_section, check_vertex_limits, notify_section
from pipeline.core.spec_ctx import Ctx, listing, parse_toml

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
_SCHEME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def _name(data: Mapping[str, Any], ctx: Ctx) -> str:
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


def _model(data: Mapping[str, Any], key: str, models: catalog.Catalog, ctx: Ctx) -> str | None:
    name = ctx.string(data, key)
    if name is None:
        return None
    try:
        models.get(name)
    except KeyError:
        raise ctx.bad(key, name, "unknown model", listing(models.names())) from None
    return name


def _local_path(raw: str, base: Path) -> str:
    expanded = os.path.expanduser(raw)
    return os.path.normpath(os.path.join(base, expanded))


def _encoding(value: str | None, ctx: Ctx) -> str:
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


def _input(data: Mapping[str, Any], base: Path, ctx: Ctx) -> InputSpec:
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
        _check_template(prompt, ctx)
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


def _images(value: Any, ctx: Ctx) -> tuple[str, ...]:
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


def _variants(value: Any, ctx: Ctx) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_VARIANTS:
        raise ctx.bad(
            "input.variants", value, "images per row", f"a whole number from 1 to {MAX_VARIANTS}"
        )
    return value


def _image(data: Mapping[str, Any], info: catalog.ModelInfo, ctx: Ctx) -> ImageSpec:
    table = ctx.table(data, "image", required=False)
    ctx.check_keys(table, "image", _IMAGE_KEYS)
    ratio = ctx.string(table, "aspect_ratio", "image") or "1:1"
    if ratio not in info.aspect_ratios:
        raise ctx.bad(
            "image.aspect_ratio",
            ratio,
            f"not accepted by {info.name}",
            listing(info.aspect_ratios),
        )
    size = ctx.string(table, "size", "image")
    if not info.sizes:
        return ImageSpec(aspect_ratio=ratio, size="")
    size = size or info.default_size or info.sizes[0]
    if size not in info.sizes:
        problem = info.size_limit or f"not accepted by {info.name}"
        raise ctx.bad("image.size", size, problem, listing(info.sizes))
    return ImageSpec(aspect_ratio=ratio, size=size)


def _check_uri_placeholders(uri: str, ctx: Ctx) -> None:
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


def _output(data: Mapping[str, Any], base: Path, ctx: Ctx) -> OutputSpec:
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


def _budget(table: Mapping[str, Any], ctx: Ctx) -> Decimal | None:
    value = table.get("budget_usd")
    if value is None:
        return None
    ok_type = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok_type or not math.isfinite(value) or value <= 0:
        raise ctx.bad("limits.budget_usd", value, "must be a number above 0", "e.g. 50.0")
    return Decimal(str(value))


def _limits(data: Mapping[str, Any], ctx: Ctx) -> LimitsSpec:
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
    ctx = Ctx(source)
    data = parse_toml(text, ctx)
    # First: a Vertex spec with a webhook is refused for that reason, not as an unknown key.
    channel = channel_section(data, defaults or {}, ctx)
    ctx.check_keys(data, "", _TOP_KEYS)
    name = _name(data, ctx)
    served = models.for_channel(channel.kind)
    model = _model(data, "model", served, ctx)
    if model is None:
        raise ctx.missing("model", f"one of {listing(models.names())}")
    fallback = _model(data, "fallback_model", served, ctx)
    base = source.parent
    limits = _limits(data, ctx)
    if channel.is_vertex:
        check_vertex_limits(limits, models, ctx)
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
        notify=notify_section(data, ctx),
    )


def _check_template(template: str, ctx: Ctx) -> None:
    """Refuse a template whose placeholders are not plain column names."""
    key = "input.prompt"
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ctx.bad(key, template, f"{exc} (write {{{{ or }}}} for a literal brace)") from None
    for _, field, spec, conv in parsed:
        if field is None:
            continue
        if not field.strip() or field.isdigit():
            raise ctx.bad(key, template, "a placeholder must name a column, e.g. {title}")
        if spec or conv:
            raise ctx.bad(
                key,
                template,
                f"placeholder {{{field}}} has a format spec or conversion; use plain {{column}}",
            )
