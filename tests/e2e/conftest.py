"""Fixtures for the end-to-end tests: an in-process emulator with an API key, a job spec and a
CSV in tmp_path, the environment pointed at both, and `invoke(*args)` running the real CLI
(`pipeline.cli.main`) with stdout and stderr captured separately."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from e2e_checks import API_KEY
from google import genai

from pipeline.emulator import Emulator
from tests import specs

"""A distinctive key, so a leak is easy to find in any output."""

ROOT = Path(__file__).resolve().parents[2]

DEFAULT_ROWS: list[dict[str, str]] = [
    {"sku": "mug-001", "title": "a ceramic mug", "colour": "teal", "aspect_ratio": ""},
    {"sku": "lamp-101", "title": "a brass lamp", "colour": "brass", "aspect_ratio": "16:9"},
    {"sku": "vase-301", "title": "a glass vase", "colour": "clear", "aspect_ratio": "3:4"},
    {"sku": "chair-201", "title": "an oak chair", "colour": "oak", "aspect_ratio": ""},
    {"sku": "stool-202", "title": "a steel stool", "colour": "", "aspect_ratio": ""},
]
"""Four good rows and one rejected (empty template value, row 5)."""


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)


@dataclass
class E2E:
    """One test's world: emulator, database URL, spec and input files, and the CLI."""

    emu: Emulator
    tmp: Path
    db_url: str
    state_dir: Path
    spec_path: Path
    csv_path: Path
    monkeypatch: pytest.MonkeyPatch
    outputs: list[str] = field(default_factory=list)

    # ── files ──────────────────────────────────────────────────────────────

    def write_csv(self, rows: Sequence[dict[str, str]], path: Path | None = None) -> Path:
        path = path or self.csv_path
        columns = list(dict.fromkeys(c for row in rows for c in row))
        with path.open("w", encoding="utf-8", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)
        return path

    def write_spec(
        self,
        *,
        name: str = "e2e-job",
        model: str = "gemini-3-pro-image-preview",
        input_path: str = "prompts.csv",
        prompt: str = "Studio photo of {title}, {colour}",
        aspect_ratio: str = "1:1",
        size: str = "1K",
        output: str = "out/{job}/{date}",
        max_requests_per_batch: int = 2,
        max_enqueued_tokens: int = 2_000_000,
        extra: str = "",
        path: Path | None = None,
    ) -> Path:
        return specs.write_spec(
            path or self.spec_path,
            name=name,
            model=model,
            extra=extra,
            input_path=input_path,
            id_column="sku",
            prompt=prompt,
            aspect_ratio=aspect_ratio,
            size=size,
            output=output,
            limits={
                "max_attempts": 3,
                "budget_usd": 5.0,
                "max_requests_per_batch": max_requests_per_batch,
                "max_enqueued_tokens": max_enqueued_tokens,
            },
        )

    # ── the CLI ───────────────────────────────────────────────────────────

    def invoke(self, *args: str) -> Result:
        """Run `nanobatch ARGS` in-process through pipeline.cli.main."""
        from pipeline.cli import main

        runner = CliRunner()
        code = 0
        with runner.isolation() as (out, err, _):
            try:
                main([str(a) for a in args])
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            sys.stdout.flush()
            sys.stderr.flush()
            stdout = out.getvalue().decode("utf-8", "replace")
            stderr = err.getvalue().decode("utf-8", "replace")
        result = Result(code, stdout, stderr)
        self.outputs += [stdout, stderr]
        return result

    def subprocess(self, *args: str, timeout: float = 60) -> Result:
        """Run `python -m pipeline ARGS` in a child process with this test's environment."""
        proc = subprocess.run(
            [sys.executable, "-m", "pipeline", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.tmp,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            check=False,
        )
        self.outputs += [proc.stdout, proc.stderr]
        return Result(proc.returncode, proc.stdout, proc.stderr)

    def run(self, *extra: str, spec: Path | None = None) -> Result:
        return self.invoke("run", str(spec or self.spec_path), "--poll-interval", "0.05", *extra)

    # ── looking at the emulator ─────────────────────────────────────────────

    def client(self) -> genai.Client:
        return genai.Client(api_key=API_KEY, http_options={"base_url": self.emu.url})

    def kinds(self) -> list[str]:
        """The kinds of HTTP requests the emulator served (no per-line entries)."""
        return [e["kind"] for e in self.emu.request_log if e.get("kind") != "line"]

    def result_lines(self) -> list[dict[str, Any]]:
        """Every line of every results file, downloaded through the real SDK."""
        client = self.client()
        lines: list[dict[str, Any]] = []
        for job in client.batches.list():
            if job.dest is None or not job.dest.file_name:
                continue
            data = client.files.download(file=job.dest.file_name)
            lines += [json.loads(raw) for raw in data.splitlines() if raw.strip()]
        return lines


def _make(
    tmp_path: Path, db_url: str, monkeypatch: pytest.MonkeyPatch, **emu_options: Any
) -> Iterator[E2E]:
    options: dict[str, Any] = {
        "api_key": API_KEY,
        "image_scale": 0.02,
        "pending_seconds": 0.05,
        "running_seconds": 0.1,
    }
    options.update(emu_options)
    with Emulator(**options) as emu:
        state_dir = tmp_path / "state"
        monkeypatch.setenv("GEMINI_API_KEY", API_KEY)
        monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", emu.url)
        monkeypatch.setenv("NANOBATCH_DATABASE_URL", db_url)
        monkeypatch.setenv("NANOBATCH_STATE_DIR", str(state_dir))
        monkeypatch.setenv("NANOBATCH_LOG_FORMAT", "json")
        monkeypatch.chdir(tmp_path)
        world = E2E(
            emu=emu,
            tmp=tmp_path,
            db_url=db_url,
            state_dir=state_dir,
            spec_path=tmp_path / "job.toml",
            csv_path=tmp_path / "prompts.csv",
            monkeypatch=monkeypatch,
        )
        world.write_csv(DEFAULT_ROWS)
        world.write_spec()
        yield world


@pytest.fixture
def e2e(tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[E2E]:
    """The end-to-end world on a SQLite ledger."""
    yield from _make(tmp_path, sqlite_url, monkeypatch)


@pytest.fixture
def e2e_db(tmp_path: Path, db_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[E2E]:
    """The end-to-end world, once on SQLite and once on PostgreSQL."""
    yield from _make(tmp_path, db_url, monkeypatch)


@pytest.fixture
def e2e_empty_db(
    tmp_path: Path, empty_db_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[E2E]:
    """The end-to-end world on an empty database (no schema yet), on SQLite and PostgreSQL."""
    yield from _make(tmp_path, empty_db_url, monkeypatch)


@pytest.fixture
def make_e2e(
    tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., E2E]]:
    """A factory for a world with other emulator options (faults, speeds)."""
    gens: list[Iterator[E2E]] = []

    def factory(**emu_options: Any) -> E2E:
        gen = _make(tmp_path, sqlite_url, monkeypatch, **emu_options)
        gens.append(gen)
        return next(gen)

    yield factory
    for gen in gens:
        gen.close()
