"""The harness of the fault and crash drills: an emulator in this process, a small job spec,
`nanobatch` in a subprocess (or in-process for speed), and the exactly-once checks."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from pipeline.emulator import Emulator
from tests import specs

REPO = Path(__file__).resolve().parents[2]
API_KEY = "drill-secret-key-0123456789abcdef"
MODEL = "gemini-3-pro-image-preview"
FALLBACK = "gemini-2.5-flash-image"
PRICES = tomllib.loads((REPO / "pipeline" / "data" / "models.toml").read_text())["models"]


@dataclass
class Result:
    code: int
    out: str
    err: str


@dataclass
class Drill:
    """One test's world: tmp folder, emulator, ledger URL and the spec it runs."""

    tmp: Path
    emu: Emulator
    db_url: str
    spec: Path = field(init=False)
    out_dir: Path = field(init=False)

    def env(self, **extra: str) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("NANOBATCH_", "GEMINI_", "GOOGLE_"))
        }
        env.update(
            GOOGLE_GEMINI_BASE_URL=self.emu.url,
            GEMINI_API_KEY=API_KEY,
            NANOBATCH_DATABASE_URL=self.db_url,
            NANOBATCH_STATE_DIR=str(self.tmp / "state"),
            NANOBATCH_LOG_FORMAT="json",
            NANOBATCH_CREATE_BACKOFF_S="0.01",
            # The checkout under test, whatever `pipeline` the venv would import otherwise.
            PYTHONPATH=str(REPO),
        )
        env.update(extra)
        return env

    def write_spec(
        self,
        n: int = 6,
        *,
        per_batch: int = 2,
        max_attempts: int = 3,
        fallback: str | None = None,
        keys: list[str] | None = None,
        max_tokens: int = 2_000_000,
        overwrite: bool = False,
        name: str = "drill",
    ) -> Path:
        """A CSV of n prompts (or these keys) and a spec over it; returns the spec path."""
        keys = keys or [f"img-{i}" for i in range(n)]
        rows = ["sku,title"] + [f"{json.dumps(k)},thing {i}" for i, k in enumerate(keys)]
        (self.tmp / "prompts.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
        self.out_dir = self.tmp / "out"
        self.spec = specs.write_spec(
            self.tmp / f"{name}.toml",
            name=name,
            model=MODEL,
            fallback=fallback,
            input_path="prompts.csv",
            id_column="sku",
            prompt="Photo of {title}",
            aspect_ratio="1:1",
            size="1K",
            output="out",
            overwrite=overwrite,
            limits={
                "max_attempts": max_attempts,
                "max_requests_per_batch": per_batch,
                "max_enqueued_tokens": max_tokens,
            },
        )
        return self.spec

    # ── running nanobatch ────────────────────────────────────────────────────

    def sub(self, *args: str, timeout: float = 60, **env: str) -> Result:
        """`nanobatch ARGS` in a subprocess."""
        proc = subprocess.run(
            [sys.executable, "-m", "pipeline", *args],
            env=self.env(**env),
            cwd=self.tmp,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        return Result(proc.returncode, proc.stdout, proc.stderr)

    def popen(self, *args: str, **env: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "pipeline", *args],
            env=self.env(**env),
            cwd=self.tmp,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def cli(self, *args: str, **env: str) -> Result:
        """`nanobatch ARGS` in this process (fast); the exit code, stdout and stderr."""
        from pipeline import cli as cli_module

        out, err = io.StringIO(), io.StringIO()
        with (
            pytest.MonkeyPatch.context() as mp,
            contextlib.chdir(self.tmp),
            contextlib.redirect_stdout(out),
            contextlib.redirect_stderr(err),
        ):
            for name in list(os.environ):
                if name.startswith(("NANOBATCH_", "GEMINI_", "GOOGLE_")):
                    mp.delenv(name)
            for name, value in self.env(**env).items():
                mp.setenv(name, value)
            try:
                cli_module.main(list(args))
                code = 0
            except SystemExit as exc:
                code = int(exc.code or 0)
        return Result(code, out.getvalue(), err.getvalue())

    def submit(self) -> str:
        res = self.cli("submit", str(self.spec))
        assert res.code == 0, res.err
        return res.out.strip().splitlines()[-1]

    def tick(self, advance: float = 0.0) -> Result:
        if advance:
            self.emu.clock.advance(advance)
        res = self.cli("tick")
        return res

    def tick_until_done(self, run: str, *, max_ticks: int = 30, advance: float = 600.0) -> int:
        """Tick (moving the emulator clock on) until the run is finished; returns the ticks."""
        for n in range(1, max_ticks + 1):
            res = self.tick(advance)
            assert res.code == 0, res.err[-3000:]
            if self.run_state(run) != "active":
                return n
        raise AssertionError(f"run {run} not finished after {max_ticks} ticks: {self.items()}")

    # ── reading the outcome ──────────────────────────────────────────────────

    def engine(self) -> sa.Engine:
        return sa.create_engine(self.db_url.replace("postgresql+psycopg", "postgresql+psycopg"))

    def query(self, sql: str, **params: Any) -> list[Any]:
        engine = self.engine()
        try:
            with engine.begin() as conn:
                result = conn.execute(sa.text(sql), params)
                return list(result) if result.returns_rows else []
        finally:
            engine.dispose()

    def run_state(self, run: str) -> str:
        return str(self.query("SELECT state FROM runs WHERE id = :r", r=run)[0][0])

    def items(self) -> dict[str, Any]:
        rows = self.query(
            "SELECT key, state, final, tries, error, reason_code, model, uri, sha256 FROM items"
        )
        return {r.key: r for r in rows}

    def attempts(self) -> list[Any]:
        return self.query(
            "SELECT i.key, a.outcome, a.reason, a.reason_code, a.cost_nanos, a.model, a.batch_id "
            "FROM attempts a JOIN items i ON i.id = a.item_id ORDER BY a.id"
        )

    def report(self, run: str) -> dict[str, Any]:
        res = self.cli("report", run, "--format", "json")
        assert res.code == 0, res.err
        return dict(json.loads(res.out))

    def status(self, run: str) -> dict[str, Any]:
        res = self.cli("status", run, "--json")
        assert res.code == 0, res.err
        return dict(json.loads(res.out)["runs"][0])

    def creates(self) -> list[dict[str, Any]]:
        """Successful batch creates in the emulator's log."""
        return [
            e for e in self.emu.request_log if e.get("kind") == "create" and e.get("status") == 200
        ]

    def result_lines(self) -> Iterator[dict[str, Any]]:
        """Every line of every results file the emulator produced."""
        for path in sorted((self.emu.data_dir / "files").glob("batch-*")):
            with path.open(encoding="utf-8") as f:
                for raw in f:
                    if raw.strip():
                        yield json.loads(raw)


def line_cost_nanos(line: dict[str, Any], model: str = MODEL) -> int:
    """The batch-price cost of one results line from its usageMetadata (CONTRACT section 5)."""
    usage = (line.get("response") or {}).get("usageMetadata") or {}
    if not usage:
        return 0
    image = sum(
        d.get("tokenCount", 0)
        for d in usage.get("candidatesTokensDetails") or []
        if d.get("modality") == "IMAGE"
    )
    text = usage.get("candidatesTokenCount", 0) - image
    thinking = usage.get("thoughtsTokenCount", 0)
    rates = {k: Decimal(v) for k, v in PRICES[model]["batch"].items()}
    usd = (
        usage.get("promptTokenCount", 0) * rates["input"]
        + image * rates["image_output"]
        + (text + thinking) * rates["text_output"]
    ) / Decimal(1_000_000)
    return int(usd * Decimal(1_000_000_000))


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check_exactly_once(drill: Drill, run: str, n: int) -> None:
    """Every item succeeded once; objects stored once with the right bytes, no temp files;
    one create per shard; each results line served once; report cost = sum of line costs."""
    items = drill.items()
    assert len(items) == n
    assert {r.state for r in items.values()} == {"succeeded"}, items
    files = sorted(p.name for p in drill.out_dir.iterdir())
    images = [f for f in files if f.endswith(".png")]
    assert sorted(images) == sorted(f"{k}.png" for k in items)
    assert not [f for f in files if f.startswith(".") or f.endswith((".tmp", ".part"))], files
    for key, row in items.items():
        assert sha256_file(drill.out_dir / f"{key}.png") == row.sha256
    spool = drill.tmp / "state" / "spool"
    assert not spool.exists() or not list(spool.iterdir()), list(spool.iterdir())
    names = [c.get("display_name") or c.get("batch") for c in drill.creates()]
    creates = [e for e in drill.emu.batches()]
    assert len({b["displayName"] for b in creates}) == len(creates), creates
    assert len(names) == len(creates)
    served = [(e["batch"], e["key"]) for e in drill.emu.request_log if e.get("kind") == "line"]
    assert len(served) == len(set(served)) == n, served
    succeeded = [a for a in drill.attempts() if a.outcome == "succeeded"]
    assert sorted(a.key for a in succeeded) == sorted(items)
    expected = sum(line_cost_nanos(line) for line in drill.result_lines())
    report = drill.report(run)
    assert round(report["summary"]["cost_usd"], 9) == round(expected / 1e9, 9)
    assert sum(a.cost_nanos or 0 for a in drill.attempts()) == expected
    assert report["summary"]["succeeded"] == n
