"""The one job-spec factory of the tests: a spec's TOML text from keyword arguments, and its
CSV table. The e2e, fault and feature helpers (`write_spec`, `write_job`) delegate here and
keep their own signatures and defaults."""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

PRO = "gemini-3-pro-image-preview"


def spec_text(
    *,
    name: str = "job",
    model: str = PRO,
    fallback: str | None = None,
    extra: str = "",
    input_path: str = "prompts.csv",
    id_column: str = "key",
    prompt: str | None = None,
    prompt_column: str | None = None,
    aspect_ratio: str = "1:1",
    size: str | None = "1K",
    output: str = "out",
    overwrite: bool | None = None,
    limits: Mapping[str, int | float | None] | None = None,
) -> str:
    """A job spec's TOML. `prompt` is a template over the columns, `prompt_column` a column
    holding the prompt (give one); `extra` is top-level TOML put after the model; `size`
    None or "" leaves the size out; `limits` entries whose value is None are left out."""
    top = [f'name = "{name}"', f'model = "{model}"']
    if fallback:
        top.append(f'fallback_model = "{fallback}"')
    if extra:
        top.append(extra)
    table = [f'path = "{input_path}"', f'id_column = "{id_column}"']
    if prompt_column is not None:
        table.append(f'prompt_column = "{prompt_column}"')
    if prompt is not None:
        table.append(f'prompt = "{prompt}"')
    image = [f'aspect_ratio = "{aspect_ratio}"']
    if size:
        image.append(f'size = "{size}"')
    out = [f'uri = "{output}"']
    if overwrite is not None:
        out.append(f"overwrite = {str(overwrite).lower()}")
    lim = [f"{k} = {v}" for k, v in (limits or {}).items() if v is not None]
    sections = [
        "\n".join(top),
        "[input]\n" + "\n".join(table),
        "[image]\n" + "\n".join(image),
        "[output]\n" + "\n".join(out),
        "[limits]\n" + "\n".join(lim),
    ]
    return "\n\n".join(sections) + "\n"


def write_spec(path: Path, **fields: Any) -> Path:
    """`spec_text(**fields)` written to `path`; returns `path`."""
    path.write_text(spec_text(**fields), encoding="utf-8")
    return path


def write_table(path: Path, rows: Sequence[Mapping[str, str]]) -> Path:
    """A CSV of `rows` (columns in first-seen order); returns `path`."""
    columns = list(dict.fromkeys(c for row in rows for c in row))
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path
