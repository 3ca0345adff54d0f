"""Shards: pack request lines into batches that respect every per-batch limit.

Pure. A batch holds at most `max_requests` lines, `max_bytes` of JSONL (under the 2 GB input
file limit) and `max_tokens` estimated enqueued tokens (so one batch always fits the model's
enqueued-token quota). Packing is greedy and streaming, in input order.

On Vertex AI batch prediction a job holds at most 200,000 requests and a request file at
most 1 GB (the data file's `[channels.vertex]`), and there is no enqueued-token quota.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

from pipeline.core.catalog import Catalog, load_catalog
from pipeline.core.errors import SpecError
from pipeline.core.spec import JobSpec

T = TypeVar("T")

DEFAULT_MAX_BYTES = 1_900_000_000
"""Under the 2 GB input file limit."""
DEFAULT_MAX_REQUESTS = 100_000
NO_TOKEN_QUOTA = 10**18
"""`max_tokens` of a channel without an enqueued-token quota: never reached."""
FILE_MARGIN = 0.95
"""Share of a channel's request-file limit a batch file may fill."""


@dataclass(frozen=True)
class ShardLimits:
    max_requests: int
    max_bytes: int
    max_tokens: int


def limits_for(spec: JobSpec, catalog: Catalog | None = None) -> ShardLimits:
    """The spec's per-batch limits (requests default 100,000; tokens = max_enqueued_tokens).
    On Vertex: up to the job's request limit, 95% of its file limit, no token limit."""
    channel = (catalog or load_catalog()).limits(spec.channel.kind)
    if channel is None:
        return ShardLimits(
            max_requests=spec.limits.max_requests_per_batch or DEFAULT_MAX_REQUESTS,
            max_bytes=DEFAULT_MAX_BYTES,
            max_tokens=spec.limits.max_enqueued_tokens,
        )
    return ShardLimits(
        max_requests=min(
            spec.limits.max_requests_per_batch or channel.max_requests_per_job,
            channel.max_requests_per_job,
        ),
        max_bytes=int(channel.max_file_bytes * FILE_MARGIN),
        max_tokens=spec.limits.max_enqueued_tokens
        if channel.enqueued_token_quota
        else NO_TOKEN_QUOTA,
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


class Packer:
    """Greedy packing in input order: `starts` (a block of entries) or `add` (one entry) says
    which entries open a new batch. The one packing rule, shared by `pack`, `plan` and by
    recording a run."""

    def __init__(self, limits: ShardLimits) -> None:
        if limits.max_requests < 1:
            raise SpecError("limits.max_requests_per_batch must be at least 1")
        self.limits = limits
        self.count = self.n_bytes = self.n_tokens = 0

    def add(self, n_bytes: int, n_tokens: int) -> bool:
        """Count one entry in; True when it starts a new batch (always for the first).
        SpecError for an entry that alone exceeds a limit (naming it and how to raise it)."""
        return bool(self.starts((n_bytes,), (n_tokens,)))

    def starts(self, sizes: Sequence[int], tokens: Sequence[int]) -> list[int]:
        """Count in each entry in turn (parallel lists); the indexes of those that start a new
        batch. The one packing rule, in one loop over plain ints for a block of entries.
        SpecError for an entry that alone exceeds a limit (naming it and how to raise it)."""
        limits = self.limits
        if sizes and (max(sizes) > limits.max_bytes or max(tokens) > limits.max_tokens):
            for n_bytes, n_tokens in zip(sizes, tokens, strict=True):
                _check_single(n_bytes, n_tokens, limits)
        max_requests, max_bytes, max_tokens = (
            limits.max_requests,
            limits.max_bytes,
            limits.max_tokens,
        )
        count, held_bytes, held_tokens = self.count, self.n_bytes, self.n_tokens
        out: list[int] = []
        for i, (n_bytes, n_tokens) in enumerate(zip(sizes, tokens, strict=True)):
            if (
                count == 0
                or count >= max_requests
                or held_bytes + n_bytes > max_bytes
                or held_tokens + n_tokens > max_tokens
            ):
                out.append(i)
                count = held_bytes = held_tokens = 0
            count += 1
            held_bytes += n_bytes
            held_tokens += n_tokens
        self.count, self.n_bytes, self.n_tokens = count, held_bytes, held_tokens
        return out


def pack(
    entries: Iterable[T],
    *,
    size: Callable[[T], int],
    tokens: Callable[[T], int],
    limits: ShardLimits,
) -> Iterator[list[T]]:
    """Greedy shards in input order, each within every limit (see Packer)."""
    packer = Packer(limits)
    batch: list[T] = []
    for entry in entries:
        if packer.add(size(entry), tokens(entry)) and batch:
            yield batch
            batch = []
        batch.append(entry)
    if batch:
        yield batch


def quota_windows(total_tokens: int, max_tokens: int) -> int:
    """How many times the enqueued-token quota must fill and drain: ceil(total / max)."""
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be at least 1, not {max_tokens}")
    if total_tokens <= 0:
        return 0
    return -(-total_tokens // max_tokens)
