from __future__ import annotations

from decimal import Decimal

from pipeline.core.catalog import Rates, load_catalog
from pipeline.core.pricing import (
    cost_nanos,
    estimate_cost_nanos,
    estimate_item_tokens,
    estimate_item_usage,
    estimate_prompt_tokens,
)
from pipeline.core.values import Usage

PRO = load_catalog().get("gemini-3-pro-image-preview")


def test_pro_2k_batch_hand_computed() -> None:
    usage = Usage(input=20, output_image=1120, output_text=30, thinking=150)
    # 20*1.00 + 1120*60.00 + 180*6.00 per 1M = 0.00002 + 0.0672 + 0.00108 = 0.0683 USD
    assert cost_nanos(PRO.batch, usage) == 68_300_000
    assert cost_nanos(PRO.standard, usage) == 136_600_000


def test_flash_batch_one_image() -> None:
    flash = load_catalog().get("gemini-2.5-flash-image")
    assert cost_nanos(flash.batch, Usage(output_image=1290)) == 19_350_000  # $0.01935
    assert cost_nanos(flash.batch, Usage(input=1)) == 150


def test_zero_usage_costs_nothing() -> None:
    assert cost_nanos(PRO.batch, Usage()) == 0


def test_fine_rates_round_half_up() -> None:
    rates = Rates(Decimal("0.0005"), Decimal("0"), Decimal("0"))  # 0.5 nanos per token
    assert cost_nanos(rates, Usage(input=1)) == 1
    assert cost_nanos(rates, Usage(input=3)) == 2  # 1.5 -> 2


def test_prompt_token_estimate() -> None:
    assert estimate_prompt_tokens("") == 1
    assert estimate_prompt_tokens("abcd") == 1
    assert estimate_prompt_tokens("abcde") == 2
    assert estimate_prompt_tokens("é" * 4) == 2  # 8 utf-8 bytes


def test_item_estimates() -> None:
    prompt = "x" * 80  # 20 tokens
    assert estimate_item_usage(PRO, "4K", prompt) == Usage(20, 2000, 0, 200)
    assert estimate_item_tokens(PRO, "2K", prompt) == 20 + 1120 + 200
    flash = load_catalog().get("gemini-2.5-flash-image")
    assert estimate_item_tokens(flash, "", prompt) == 20 + 1290
    # batch: 20*1 + 1120*60 + 200*6 = 68420 micro-USD-per-1M... in nanos:
    assert estimate_cost_nanos(PRO, "1K", prompt, "batch") == (20 + 1120 * 60 + 200 * 6) * 1000
    assert estimate_cost_nanos(PRO, "1K", prompt, "standard") == 2 * (20 + 67200 + 1200) * 1000
