from __future__ import annotations

from decimal import Decimal

import pytest

from pipeline.core.catalog import load_catalog


def test_catalog_has_source_date_and_models() -> None:
    cat = load_catalog()
    assert cat.source == "https://ai.google.dev/gemini-api/docs/pricing"
    assert cat.date == "2026-11"
    assert cat.names() == (
        "gemini-2.5-flash-image",
        "gemini-3-pro-image",
        "gemini-3-pro-image-preview",
        "gemini-3.1-flash-image-preview",
    )
    assert load_catalog() is cat


def test_pro_models_share_numbers() -> None:
    cat = load_catalog()
    for name in ("gemini-3-pro-image-preview", "gemini-3-pro-image"):
        info = cat.get(name)
        assert len(info.aspect_ratios) == 10
        assert info.sizes == ("1K", "2K", "4K")
        assert info.default_size == "1K"
        assert info.image_tokens == {"1K": 1120, "2K": 1120, "4K": 2000}
        assert info.batch.image_output == Decimal("60.00")
        assert info.standard.input == Decimal("2.00")
        assert info.standard.text_output == Decimal("12.00")
        assert info.thinking_allowance == 200


def test_flash_models() -> None:
    cat = load_catalog()
    flash = cat.get("gemini-2.5-flash-image")
    assert flash.sizes == () and flash.default_size is None
    assert flash.tokens_for("") == 1290 and flash.tokens_for("2K") == 1290
    assert flash.batch.input == Decimal("0.15") and flash.standard.image_output == Decimal("30")
    nb2 = cat.get("gemini-3.1-flash-image-preview")
    assert len(nb2.aspect_ratios) == 14 and {"1:4", "4:1", "1:8", "8:1"} <= set(nb2.aspect_ratios)
    assert [nb2.tokens_for(s) for s in nb2.sizes] == [747, 1120, 1680, 2520]
    assert nb2.rates("batch").image_output == Decimal("30.00")
    with pytest.raises(ValueError):
        nb2.rates("flex")


def test_unknown_model_is_key_error() -> None:
    with pytest.raises(KeyError):
        load_catalog().get("gemini-9")


def test_reference_image_limits_and_tokens_per_model() -> None:
    """Each model says how many reference images it accepts and what one costs in input
    tokens, with the source those figures come from (CONTRACT section 9)."""
    cat = load_catalog()
    assert cat.references_source.startswith("https://ai.google.dev/")
    pro = cat.get("gemini-3-pro-image-preview")
    assert (pro.max_reference_images, pro.reference_image_tokens) == (14, 560)
    flash = cat.get("gemini-2.5-flash-image")
    assert (flash.max_reference_images, flash.reference_image_tokens) == (3, 258)
    nb2 = cat.get("gemini-3.1-flash-image-preview")
    assert (nb2.max_reference_images, nb2.reference_image_tokens) == (14, 1120)
