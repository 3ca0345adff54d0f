"""The models nanobatch knows: image settings each accepts, tokens per image, and prices;
and the channels they are reached through (the Gemini Developer API by default, Vertex AI
batch prediction), each with its own limits and prices.

Loaded from the one data file `pipeline/data/models.toml` (which carries its sources and
date). Pure apart from reading that packaged file once.
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from functools import lru_cache
from importlib import resources
from typing import Any


@dataclass(frozen=True)
class Rates:
    """USD per 1M tokens."""

    input: Decimal
    text_output: Decimal
    """Text output and thinking tokens."""
    image_output: Decimal


@dataclass(frozen=True)
class ModelInfo:
    name: str
    aspect_ratios: tuple[str, ...]
    sizes: tuple[str, ...]
    """Accepted imageSize values; empty when the model takes none (then it is not sent)."""
    default_size: str | None
    image_tokens: dict[str, int]
    """Output IMAGE tokens per image, by size ("" key for models without sizes)."""
    thinking_allowance: int
    """Thinking/text tokens expected per request, for estimates."""
    batch: Rates
    standard: Rates
    size_limit: str = ""
    """Why sizes the model makes elsewhere are not among `sizes` on this channel ("" when
    nothing is held back), for the messages that refuse them."""
    max_reference_images: int = 0
    """Reference (input) images one request may carry."""
    reference_image_tokens: int = 0
    """Input tokens one reference image counts."""

    def rates(self, mode: str) -> Rates:
        """The batch or standard rates; ValueError for any other mode."""
        if mode == "batch":
            return self.batch
        if mode == "standard":
            return self.standard
        raise ValueError(f"unknown price mode {mode!r}; valid: batch, standard")

    def tokens_for(self, size: str) -> int:
        """Output IMAGE tokens of one image at `size` ("" or any size for a sizeless model)."""
        if not self.sizes:
            return self.image_tokens[""]
        return self.image_tokens[size]


@dataclass(frozen=True)
class ChannelLimits:
    """What a channel other than the Developer API changes (`[channels.NAME]`)."""

    name: str
    source: str
    max_requests_per_job: int
    max_file_bytes: int
    enqueued_token_quota: bool
    batch_image_sizes: tuple[str, ...]
    """The imageSize values batch serves on this channel (models without sizes are not held)."""
    batch_image_note: str
    prices: str
    """ "developer": the Developer API's prices (see `prices_source` for why)."""
    prices_source: str
    model_rates: dict[str, tuple[Rates, Rates]] = field(default_factory=dict)
    """(standard, batch) rates given for the channel per model; others use the defaults."""


@dataclass(frozen=True)
class Catalog:
    models: dict[str, ModelInfo]
    source: str
    date: str
    channels: dict[str, ChannelLimits] = field(default_factory=dict)
    channel: str = "gemini"
    """The channel these models' sizes and rates are for."""
    references_source: str = ""
    """Where the reference-image limits and tokens per model come from."""

    def get(self, name: str) -> ModelInfo:
        """The model's info; KeyError if unknown (callers turn that into a SpecError)."""
        return self.models[name]

    def names(self) -> tuple[str, ...]:
        """Known model names, sorted."""
        return tuple(sorted(self.models))

    def limits(self, channel: str) -> ChannelLimits | None:
        """The limits of a channel other than the Developer API (None for "gemini")."""
        if channel == "gemini":
            return None
        return self.channels[channel]

    def for_channel(self, channel: str) -> Catalog:
        """The models as `channel` serves them: only the image sizes its batch serves (with
        the reason in `size_limit`), and its prices where the data file gives any."""
        limits = self.limits(channel)
        if limits is None or self.channel == channel:
            return self
        models = {name: _on_channel(info, limits) for name, info in self.models.items()}
        return dataclasses.replace(self, models=models, channel=channel)


def _on_channel(info: ModelInfo, limits: ChannelLimits) -> ModelInfo:
    sizes = tuple(s for s in info.sizes if s in limits.batch_image_sizes)
    if info.sizes and not sizes:
        raise ValueError(f"models.toml: {info.name} has no size {limits.name} batch serves")
    default = info.default_size if info.default_size in sizes else (sizes[0] if sizes else None)
    standard, batch = limits.model_rates.get(info.name, (info.standard, info.batch))
    return dataclasses.replace(
        info,
        sizes=sizes,
        default_size=default,
        standard=standard,
        batch=batch,
        size_limit=limits.batch_image_note if sizes != info.sizes else "",
    )


def _rates(raw: Mapping[str, Any]) -> Rates:
    return Rates(
        input=Decimal(str(raw["input"])),
        text_output=Decimal(str(raw["text_output"])),
        image_output=Decimal(str(raw["image_output"])),
    )


def _model(name: str, raw: Mapping[str, Any]) -> ModelInfo:
    sizes = tuple(str(s) for s in raw.get("sizes", []))
    image_tokens = {str(k): int(v) for k, v in raw["image_tokens"].items()}
    missing = [s for s in (sizes or ("",)) if s not in image_tokens]
    if missing:
        raise ValueError(f"models.toml: {name}: image_tokens lacks sizes {missing}")
    return ModelInfo(
        name=name,
        aspect_ratios=tuple(str(r) for r in raw["aspect_ratios"]),
        sizes=sizes,
        default_size=raw.get("default_size") if sizes else None,
        image_tokens=image_tokens,
        thinking_allowance=int(raw.get("thinking_allowance", 0)),
        batch=_rates(raw["batch"]),
        standard=_rates(raw["standard"]),
        max_reference_images=int(raw.get("max_reference_images", 0)),
        reference_image_tokens=int(raw.get("reference_image_tokens", 0)),
    )


def _channel(name: str, raw: Mapping[str, Any]) -> ChannelLimits:
    rates = {
        model: (_rates(table["standard"]), _rates(table["batch"]))
        for model, table in raw.get("models", {}).items()
    }
    return ChannelLimits(
        name=name,
        source=str(raw["source"]),
        max_requests_per_job=int(raw["max_requests_per_job"]),
        max_file_bytes=int(raw["max_file_bytes"]),
        enqueued_token_quota=bool(raw["enqueued_token_quota"]),
        batch_image_sizes=tuple(str(s) for s in raw["batch_image_sizes"]),
        batch_image_note=str(raw["batch_image_note"]),
        prices=str(raw["prices"]),
        prices_source=str(raw["prices_source"]),
        model_rates=rates,
    )


def parse_catalog(text: str) -> Catalog:
    """Build a Catalog from the text of a models.toml file."""
    data = tomllib.loads(text)
    models = {name: _model(name, raw) for name, raw in data["models"].items()}
    channels = {name: _channel(name, raw) for name, raw in data.get("channels", {}).items()}
    return Catalog(
        models=models,
        source=str(data["source"]),
        date=str(data["date"]),
        channels=channels,
        references_source=str(data.get("references_source", "")),
    )


@lru_cache(maxsize=1)
def load_catalog() -> Catalog:
    """Read pipeline/data/models.toml (cached)."""
    text = resources.files("pipeline").joinpath("data/models.toml").read_text(encoding="utf-8")
    return parse_catalog(text)
