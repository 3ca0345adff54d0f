"""How the report shows keys on a terminal and in CSV (issue 13, item 11)."""

from __future__ import annotations

from pipeline.core.report import KEY_WIDTH, csv_row, printable, shown_key


def test_shown_key_escapes_and_marks_changed_keys() -> None:
    """A key with an ESC and one spelling `\\x1b` literally show differently; plain short
    keys show as they are; every shown key fits the column."""
    raw_escape, literal = "a\x1bb", "a\\x1bb"
    assert shown_key(literal) == literal
    assert shown_key(raw_escape).startswith("a\\x1bb~")
    assert shown_key(raw_escape) != shown_key(literal)
    assert shown_key("sku-1") == "sku-1"
    cut = [shown_key("k" * 40 + str(i)) for i in range(50)]
    assert len(set(cut)) == 50 and all(len(k) <= KEY_WIDTH for k in cut)
    assert shown_key("x" * KEY_WIDTH) == "x" * KEY_WIDTH


def test_printable_escapes_controls_and_bidi_but_keeps_text() -> None:
    assert printable("caf\u00e9 \u00a0ok") == "caf\u00e9 \u00a0ok"
    assert printable("a\nb\u202ec\u200bd") == "a\\nb\\u202ec\\u200bd"


def test_csv_row_prefixes_formula_starts_only_on_text() -> None:
    row = {"key": "=1+1", "error": "-x", "uri": "a=b", "cost_usd": -0.0, "attempts": 1}
    assert csv_row(row) == {
        "key": "'=1+1",
        "error": "'-x",
        "uri": "a=b",
        "cost_usd": -0.0,
        "attempts": 1,
    }
