"""Shards: pack request lines into batches that respect every per-batch limit.

Pure. A batch holds at most `max_requests` lines, `max_bytes` of JSONL (under the 2 GB input
file limit) and `max_tokens` estimated enqueued tokens (so one batch always fits the model's
enqueued-token quota). Packing is greedy and streaming, in input order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from pipeline.errors import SpecError
from pipeline.spec import JobSpec

T = TypeVar("T")

DEFAULT_MAX_BYTES = 1_900_000_000
"""Under the 2 GB input file limit."""
DEFAULT_MAX_REQUESTS = 100_000


@dataclass(frozen=True)
class ShardLimits:
    max_requests: int
    max_bytes: int
    max_tokens: int


def limits_for(spec: JobSpec) -> ShardLimits:
    """The spec's per-batch limits (requests default 100,000; tokens = max_enqueued_tokens)."""
    return ShardLimits(
        max_requests=spec.limits.max_requests_per_batch or DEFAULT_MAX_REQUESTS,
        max_bytes=DEFAULT_MAX_BYTES,
        max_tokens=spec.limits.max_enqueued_tokens,
    )


def _check_single(n_bytes: int, n_tokens: int, limits: ShardLimits) -> None:
    if n_tokens > limits.max_tokens:
        raise SpecError(
            f"one request needs an estimated {n_tokens} enqueued tokens, more than "
            f"limits.max_enqueued_tokens = {limits.max_tokens}; raise limits.max_enqueued_tokens "
            "in the spec to your account's batch quota (or shorten the prompt, or pick a "
            "smaller image size)"
        )
    if n_bytes > limits.max_bytes:
        raise SpecError(
            f"one request line is {n_bytes} bytes, more than the {limits.max_bytes}-byte "
            "batch file limit; shorten the prompt"
        )


def pack(
    entries: Iterable[T],
    *,
    size: Callable[[T], int],
    tokens: Callable[[T], int],
    limits: ShardLimits,
) -> Iterator[list[T]]:
    """Greedy shards in input order, each within every limit; SpecError for an entry that
    alone exceeds a limit (naming the limit and how to raise it)."""
    if limits.max_requests < 1:
        raise SpecError("limits.max_requests_per_batch must be at least 1")
    batch: list[T] = []
    n_bytes = n_tokens = 0
    for entry in entries:
        e_bytes, e_tokens = size(entry), tokens(entry)
        _check_single(e_bytes, e_tokens, limits)
        full = (
            len(batch) >= limits.max_requests
            or n_bytes + e_bytes > limits.max_bytes
            or n_tokens + e_tokens > limits.max_tokens
        )
        if batch and full:
            yield batch
            batch, n_bytes, n_tokens = [], 0, 0
        batch.append(entry)
        n_bytes += e_bytes
        n_tokens += e_tokens
    if batch:
        yield batch


def quota_windows(total_tokens: int, max_tokens: int) -> int:
    """How many times the enqueued-token quota must fill and drain: ceil(total / max)."""
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be at least 1, not {max_tokens}")
    if total_tokens <= 0:
        return 0
    return -(-total_tokens // max_tokens)
