"""Money: what tokens cost, exactly, in integer nano-dollars, and estimates before spending.

Cost = input x input rate + IMAGE output x image rate + (text output + thinking) x text rate,
rates in USD per 1M tokens. A rate with at most three decimals is a whole number of
nano-dollars per token, so costs are exact; finer rates are rounded half up once, on the total.
Estimates (prompt tokens from UTF-8 length, image tokens by size, a thinking allowance) feed
the enqueued-token quota and the budget check. Pure.
"""

from __future__ import annotations

import math
from decimal import ROUND_HALF_UP, Decimal
from functools import lru_cache
from typing import Literal, NamedTuple

from pipeline.core.catalog import ModelInfo, Rates
from pipeline.core.values import Usage

NANOS_PER_TOKEN_PER_USD_PER_MILLION = 1000
"""1 USD per 1M tokens = 1e9 nanos / 1e6 tokens = 1000 nano-dollars per token."""

Mode = Literal["batch", "standard"]


def cost_nanos(rates: Rates, usage: Usage) -> int:
    """Exact cost of `usage` at `rates`, in nano-dollars (half up if a rate has > 3 decimals)."""
    total = (
        usage.input * rates.input
        + usage.output_image * rates.image_output
        + (usage.output_text + usage.thinking) * rates.text_output
    ) * NANOS_PER_TOKEN_PER_USD_PER_MILLION
    return int(total.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def estimate_prompt_tokens(prompt: str) -> int:
    """Rough prompt token count: ceil(UTF-8 bytes / 4), at least 1."""
    return _tokens_of_bytes(_utf8_len(prompt))


def _utf8_len(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8"))


def _tokens_of_bytes(n_bytes: int) -> int:
    return max(1, math.ceil(n_bytes / 4))


def estimate_item_usage(info: ModelInfo, size: str, prompt: str, references: int = 0) -> Usage:
    """Expected usage of one request: prompt estimate plus the model's input tokens for each
    reference image, image tokens for `size`, thinking."""
    return _usage_of(info, size, _utf8_len(prompt), references)


def _usage_of(info: ModelInfo, size: str, prompt_bytes: int, references: int = 0) -> Usage:
    return Usage(
        input=_tokens_of_bytes(prompt_bytes) + references * info.reference_image_tokens,
        output_image=info.tokens_for(size),
        output_text=0,
        thinking=info.thinking_allowance,
    )


def estimate_item_tokens(info: ModelInfo, size: str, prompt: str) -> int:
    """Enqueued-token estimate of one request (prompt + image tokens + thinking allowance)."""
    return _enqueued(estimate_item_usage(info, size, prompt))


def _enqueued(usage: Usage) -> int:
    return usage.input + usage.output_image + usage.output_text + usage.thinking


def estimate_cost_nanos(info: ModelInfo, size: str, prompt: str, mode: Mode) -> int:
    """Estimated cost of one request at the model's batch or standard rates, in nano-dollars."""
    usage = estimate_item_usage(info, size, prompt)
    return _cost_cached(info.rates(mode), usage)


@lru_cache(maxsize=4096)
def _cost_cached(rates: Rates, usage: Usage) -> int:
    """cost_nanos, memoised: estimates repeat (one per prompt length and size) over a table."""
    return cost_nanos(rates, usage)


class Estimate(NamedTuple):
    """One request's estimate: enqueued tokens and cost at batch and standard rates."""

    tokens: int
    batch_nanos: int
    standard_nanos: int


class Estimator:
    """Estimates of one model's requests, memoised by (size, prompt UTF-8 length, reference
    images), the only inputs they depend on: a table of a million prompts has a few hundred
    distinct ones."""

    MEMO_LIMIT = 65_536

    def __init__(self, info: ModelInfo) -> None:
        self.info = info
        self._memo: dict[tuple[str, int, int], Estimate] = {}

    def __call__(self, size: str, prompt: str, references: int = 0) -> Estimate:
        key = (size, _utf8_len(prompt), references)
        found = self._memo.get(key)
        if found is None:
            if len(self._memo) >= self.MEMO_LIMIT:
                self._memo.clear()
            found = self._memo[key] = self._estimate(size, key[1], references)
        return found

    def _estimate(self, size: str, prompt_bytes: int, references: int) -> Estimate:
        info = self.info
        usage = _usage_of(info, size, prompt_bytes, references)
        return Estimate(
            _enqueued(usage), cost_nanos(info.batch, usage), cost_nanos(info.standard, usage)
        )
