from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from pipeline.core.catalog import load_catalog
from pipeline.core.errors import SpecError
from pipeline.core.spec import (
    optional_columns,
    required_columns,
    resolve_output_uri,
    template_fields,
)
from pipeline.core.spec_parse import parse_spec

CAT = load_catalog()
BASE = """\
name = "product-shots"
model = "gemini-3-pro-image-preview"
fallback_model = "gemini-2.5-flash-image"

[input]
path = "prompts/products.csv"
id_column = "sku"
prompt = "Studio photo of {title}, {colour}, on {background} {title}"

[image]
aspect_ratio = "16:9"
size = "2K"

[output]
uri = "../out/{job}/{date}"

[limits]
max_attempts = 5
budget_usd = 50.5
max_requests_per_batch = 1000
max_enqueued_tokens = 3000000
"""


def _parse(text: str, folder: Path, name: str = "job.toml"):
    return parse_spec(text, folder / name, CAT)


def test_full_spec(tmp_path: Path) -> None:
    spec = _parse(BASE, tmp_path / "jobs")
    assert spec.name == "product-shots"
    assert spec.fallback_model == "gemini-2.5-flash-image"
    assert spec.source == tmp_path / "jobs" / "job.toml"
    assert spec.input.path == tmp_path / "jobs" / "prompts" / "products.csv"
    assert spec.input.encoding == "utf-8"
    assert spec.image.aspect_ratio == "16:9" and spec.image.size == "2K"
    assert spec.output.uri == f"{tmp_path}/out/{{job}}/{{date}}"
    assert spec.output.overwrite is False
    assert spec.limits.max_attempts == 5
    assert spec.limits.budget_usd == Decimal("50.5")
    assert spec.limits.max_requests_per_batch == 1000
    assert spec.limits.max_enqueued_tokens == 3_000_000
    assert template_fields(spec) == ("title", "colour", "background")
    assert required_columns(spec) == ("sku", "title", "colour", "background")
    assert optional_columns(spec) == ("aspect_ratio", "image_size")


def _minimal(**extra: str) -> str:
    text = (
        'name = "a"\nmodel = "gemini-3-pro-image"\n'
        '[input]\npath = "/data/x.parquet"\nid_column = "id"\nprompt_column = "p"\n'
        '[output]\nuri = "gs://bucket/pre/{run}/"\n'
    )
    for section, body in extra.items():
        text += f"[{section}]\n{body}\n"
    return text


def test_defaults(tmp_path: Path) -> None:
    spec = _parse(_minimal(), tmp_path)
    assert spec.fallback_model is None
    assert spec.input.path == Path("/data/x.parquet")
    assert spec.image.aspect_ratio == "1:1" and spec.image.size == "1K"
    assert spec.output.uri == "gs://bucket/pre/{run}"
    assert spec.limits.max_attempts == 3 and spec.limits.budget_usd is None
    assert spec.limits.max_requests_per_batch is None
    assert spec.limits.max_enqueued_tokens == 2_000_000
    assert template_fields(spec) == ()
    assert required_columns(spec) == ("id", "p")


def test_model_without_sizes_ignores_size(tmp_path: Path) -> None:
    text = _minimal(image='size = "4K"').replace("gemini-3-pro-image", "gemini-2.5-flash-image")
    assert _parse(text, tmp_path).image.size == ""


def test_local_uri_forms(tmp_path: Path) -> None:
    spec = _parse(_minimal().replace("gs://bucket/pre/{run}/", "file:///srv/img/{job}"), tmp_path)
    assert spec.output.uri == "/srv/img/{job}"
    spec = _parse(_minimal().replace("gs://bucket/pre/{run}/", "out/{job}"), tmp_path / "a{b}")
    assert (
        resolve_output_uri(spec.output.uri, job="j", date="d", run="r")
        == f"{tmp_path}/a{{b}}/out/j"
    )


def test_resolve_output_uri() -> None:
    assert (
        resolve_output_uri("gs://b/{job}/{date}/{run}", job="j", date="2026-11-26", run="r1")
        == "gs://b/j/2026-11-26/r1"
    )


def _error(text: str, tmp_path: Path) -> str:
    with pytest.raises(SpecError) as info:
        _parse(text, tmp_path)
    message = str(info.value)
    assert str(tmp_path / "job.toml") in message
    return message


@pytest.mark.parametrize(
    ("old", "new", "needles"),
    [
        ('name = "product-shots"', 'name = "Product Shots"', ["name", '"Product Shots"']),
        ('name = "product-shots"\n', "", ["name is required"]),
        (
            'model = "gemini-3-pro-image-preview"',
            'model = "gpt-9"',
            ["model", "gpt-9", "gemini-3-pro-image"],
        ),
        (
            'fallback_model = "gemini-2.5-flash-image"',
            'fallback_model = "x"',
            ["fallback_model", '"x"', "gemini-2.5-flash-image"],
        ),
        ('path = "prompts/products.csv"\n', "", ["input.path"]),
        ('id_column = "sku"\n', "", ["input.id_column"]),
        (
            'prompt = "Studio',
            'prompt_column = "p"\nprompt = "Studio',
            ["input.prompt", "input.prompt_column"],
        ),
        (
            'prompt = "Studio photo of {title}',
            'prompt = "Studio photo of {title',
            ["input.prompt", "{{"],
        ),
        (
            'prompt = "Studio photo of {title}',
            'prompt = "Studio photo of {}',
            ["input.prompt", "name a column"],
        ),
        (
            'prompt = "Studio photo of {title}',
            'prompt = "Studio photo of {title!r}',
            ["input.prompt", "plain"],
        ),
        ('aspect_ratio = "16:9"', 'aspect_ratio = "7:3"', ["image.aspect_ratio", '"7:3"', "21:9"]),
        ('aspect_ratio = "16:9"', 'aspect_ratio = "1:8"', ["image.aspect_ratio", '"1:8"', "16:9"]),
        ('size = "2K"', 'size = "2k"', ["image.size", '"2k"', "1K, 2K, 4K"]),
        (
            'uri = "../out/{job}/{date}"',
            'uri = "../out/{jobname}"',
            ["output.uri", "{jobname}", "{job} {date} {run}"],
        ),
        (
            'uri = "../out/{job}/{date}"',
            'uri = "s3://b/x"',
            ["output.uri", "s3://b/x", "gs://bucket"],
        ),
        ('uri = "../out/{job}/{date}"', 'uri = "gs:///x"', ["output.uri", "bucket"]),
        ('uri = "../out/{job}/{date}"\n', "", ["output.uri is required"]),
        (
            'uri = "../out/{job}/{date}"',
            'uri = "o"\noverwrite = "yes"',
            ["output.overwrite", '"yes"', "true"],
        ),
        ("max_attempts = 5", "max_attempts = 0", ["limits.max_attempts", "= 0", ">= 1"]),
        ("max_attempts = 5", "max_attempts = 2.5", ["limits.max_attempts", "2.5"]),
        ("max_attempts = 5", "max_attempts = true", ["limits.max_attempts", "true"]),
        ("budget_usd = 50.5", "budget_usd = -1", ["limits.budget_usd", "-1"]),
        ("budget_usd = 50.5", 'budget_usd = "50"', ["limits.budget_usd", '"50"']),
        ("budget_usd = 50.5", "budget_usd = nan", ["limits.budget_usd", "nan"]),
        (
            "max_requests_per_batch = 1000",
            "max_requests_per_batch = -3",
            ["limits.max_requests_per_batch", "-3"],
        ),
        (
            "max_enqueued_tokens = 3000000",
            "max_enqueued_tokens = 0",
            ["limits.max_enqueued_tokens", "0"],
        ),
        (
            'id_column = "sku"',
            'id_column = "sku"\nencoding = "klingon"',
            ["input.encoding", "klingon", "latin-1"],
        ),
        (
            'id_column = "sku"',
            'id_column = "sku"\nencoding = "base64"',
            ["input.encoding", "base64"],
        ),
        ('id_column = "sku"', "id_column = 3", ["input.id_column", "= 3", "string"]),
        (
            'name = "product-shots"',
            'name = "a"\nmodle = "x"',
            ["modle", "valid keys", "fallback_model"],
        ),
        ('id_column = "sku"', 'id_column = "sku"\ncolumn = "x"', ["input.column", "prompt_column"]),
        ("max_attempts = 5", "max_attempts = 5\nbudget = 3", ["limits.budget", "budget_usd"]),
        ('size = "2K"', 'size = "2K"\nquality = "hd"', ["image.quality", "aspect_ratio, size"]),
    ],
)
def test_spec_errors_name_key_value_and_valid(
    tmp_path: Path, old: str, new: str, needles: list[str]
) -> None:
    assert old in BASE
    message = _error(BASE.replace(old, new, 1), tmp_path)
    for needle in needles:
        assert needle in message, (needle, message)


def test_section_must_be_a_table(tmp_path: Path) -> None:
    text = "image = 3\n" + BASE.replace('[image]\naspect_ratio = "16:9"\nsize = "2K"\n', "")
    message = _error(text, tmp_path)
    assert "image = 3" in message and "table" in message


def test_missing_sections(tmp_path: Path) -> None:
    text = BASE[: BASE.index("[input]")]
    assert "[input] is required" in _error(text, tmp_path)
    text = BASE.replace("[output]", "[outputx]")
    assert "outputx" in _error(text, tmp_path)


def test_toml_syntax_error_has_line(tmp_path: Path) -> None:
    message = _error(BASE.replace('size = "2K"', "size = 2K"), tmp_path)
    assert "not valid TOML" in message and "line 12" in message


def test_reference_images_and_variants(tmp_path: Path) -> None:
    """[input] images names columns of reference images, in order; variants 1-8."""
    text = BASE.replace(
        'id_column = "sku"', 'id_column = "sku"\nimages = ["photo", "style"]\nvariants = 4'
    )
    spec = _parse(text, tmp_path)
    assert spec.input.images == ("photo", "style")
    assert spec.input.variants == 4
    assert required_columns(spec)[-2:] == ("photo", "style")
    plain = _parse(BASE, tmp_path)
    assert plain.input.images == () and plain.input.variants == 1


@pytest.mark.parametrize(
    ("lines", "needles"),
    [
        ('images = "photo"', ["input.images", "a list of column names"]),
        ("images = [3]", ["input.images", "a list of column names"]),
        ('images = [""]', ["input.images", "a list of column names"]),
        ('images = ["a", "a"]', ["input.images", "'a' twice"]),
        ("variants = 0", ["input.variants", "1 to 8"]),
        ("variants = 9", ["input.variants", "1 to 8"]),
        ("variants = 2.5", ["input.variants", "1 to 8"]),
    ],
)
def test_reference_and_variant_errors(tmp_path: Path, lines: str, needles: list[str]) -> None:
    message = _error(BASE.replace('id_column = "sku"', f'id_column = "sku"\n{lines}'), tmp_path)
    for needle in needles:
        assert needle in message, (needle, message)


def test_spec_record_of_a_spec_without_references_is_unchanged(tmp_path: Path) -> None:
    """A run's identity is built from spec_record: a spec that uses neither images nor
    variants records what it did before they existed (same runs found again)."""
    from pipeline.core.spec import spec_record

    plain = spec_record(_parse(BASE, tmp_path))
    assert "images" not in plain["input"] and "variants" not in plain["input"]
    assert set(plain["input"]) == {"path", "id_column", "prompt", "prompt_column", "encoding"}
    text = BASE.replace('id_column = "sku"', 'id_column = "sku"\nimages = ["p"]\nvariants = 2')
    record = spec_record(_parse(text, tmp_path))
    assert record["input"]["images"] == ("p",) and record["input"]["variants"] == 2
