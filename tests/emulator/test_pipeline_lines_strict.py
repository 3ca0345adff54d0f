"""Every request line nanobatch builds passes the emulator's strict validation (the service's
schema and each model's rules), so the pipeline cannot send what the service would refuse.

Tests may import the pipeline (the emulator may not): the lines are built by
`pipeline.core.expand.request_line`, the one builder the pipeline writes batch files with, for every
model of the catalog, every aspect ratio and size it accepts, and for every fallback model
with the size `pipeline.core.expand.effective_size` gives it."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest
from emu_helpers import line_results

from pipeline.core import expand
from pipeline.core.catalog import load_catalog
from pipeline.emulator import Emulator, lines
from pipeline.emulator import models as emulator_models

CATALOG = load_catalog()
PROMPTS = (
    "a red apple on a table",
    'quotes " and \\ backslashes, a tab\tand a newline\n',
    "ü 猫 🐱 — unicode",
    "x" * 4000,
)


def _refusal(model: str, line: bytes) -> str | None:
    """What the emulator says of the line on this model (None when it is served)."""
    _key, request, error = lines.read_line(line, lines.batch_kind(model), "v1beta")
    if error is not None:
        return error
    try:
        lines.parse(model, request, checked=True)
        lines.check_inputs(request, files=None)
    except lines.LineError as exc:
        return exc.message
    return None


def _sizes(info: Any) -> tuple[str, ...]:
    return info.sizes or ("",)  # "": the model takes no imageSize and none is sent


def test_the_emulator_serves_every_catalog_model() -> None:
    assert set(CATALOG.names()) <= emulator_models.IMAGE_MODELS
    for name in CATALOG.names():
        info = CATALOG.get(name)
        assert set(info.aspect_ratios) == set(emulator_models.ratios(name)), name
        assert set(info.sizes) == set(emulator_models.sizes(name)), name


@pytest.mark.parametrize("model", CATALOG.names())
def test_every_line_the_pipeline_builds_is_valid(model: str) -> None:
    info = CATALOG.get(model)
    refused = []
    for ratio, size, prompt in itertools.product(info.aspect_ratios, _sizes(info), PROMPTS):
        line = expand.request_line(f"key-{ratio}-{size}", prompt, ratio, size)
        why = _refusal(model, line)
        if why is not None:
            refused.append((ratio, size, why))
    assert refused == []


@pytest.mark.parametrize(
    ("primary", "fallback"),
    [(p, f) for p in CATALOG.names() for f in CATALOG.names() if p != f],
)
def test_fallback_lines_with_effective_size_are_valid(primary: str, fallback: str) -> None:
    """An item moved to the fallback model keeps its ratio when the fallback takes it; its
    size becomes what the fallback accepts (none for gemini-2.5-flash-image)."""
    first, second = CATALOG.get(primary), CATALOG.get(fallback)
    refused = []
    for ratio, size in itertools.product(first.aspect_ratios, _sizes(first)):
        if ratio not in second.aspect_ratios:
            continue  # a ratio the fallback lacks cannot be sent to it at all
        line = expand.request_line("k", "a cat", ratio, expand.effective_size(second, size))
        why = _refusal(fallback, line)
        if why is not None:
            refused.append((ratio, size, why))
    assert refused == []


def test_pipeline_lines_through_the_real_sdk(emu: Emulator, client: Any, tmp_path: Path) -> None:
    """A sample of the same lines, uploaded and run as a batch per model: every line served."""
    for model in CATALOG.names():
        info = CATALOG.get(model)
        rows = [
            json.loads(expand.request_line(f"{model}-{ratio}-{size}", "a cat", ratio, size))
            for ratio, size in itertools.product(info.aspect_ratios[:3], _sizes(info))
        ]
        out = line_results(emu, client, tmp_path, rows, model=model, name=model)
        assert {k: "error" in v for k, v in out.items()} == {r["key"]: False for r in rows}
