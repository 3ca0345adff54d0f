"""Small immutable values shared by the core and the shell: token usage and money.

Money is integer nano-dollars (1e-9 USD) everywhere inside nanobatch, never a float: every
published per-million rate with up to three decimals is a whole number of nano-dollars per
token, so sums are exact. Floats appear only when a report is rendered.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

NANOS_PER_USD = 1_000_000_000


@dataclass(frozen=True)
class Usage:
    """Tokens of one response, split the way they are billed."""

    input: int = 0
    output_image: int = 0
    output_text: int = 0
    thinking: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.input + other.input,
            self.output_image + other.output_image,
            self.output_text + other.output_text,
            self.thinking + other.thinking,
        )


def usd_to_nanos(usd: Decimal) -> int:
    """A configured dollar amount (a budget or cap) as nano-dollars, rounded down."""
    return int(usd * NANOS_PER_USD)


def nanos_to_usd(nanos: int) -> float:
    """Render nano-dollars as a float of USD (for reports only)."""
    return nanos / NANOS_PER_USD


def nanos_to_decimal_str(nanos: int) -> str:
    """Render nano-dollars as an exact decimal string of USD, e.g. 67000000 -> '0.067'."""
    value = (Decimal(nanos) / NANOS_PER_USD).normalize()
    text = format(value, "f")
    return text


def as_utc(value: datetime) -> datetime:
    """A ledger timestamp as an aware UTC datetime (SQLite hands them back naive)."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def day_start(now: datetime) -> datetime:
    """Midnight at the start of `now`'s day: the day the daily budget counts (UTC for an
    aware UTC `now`, as `Context.now()` gives)."""
    return now.replace(hour=0, minute=0, second=0, microsecond=0)
