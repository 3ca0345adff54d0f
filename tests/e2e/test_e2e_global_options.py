"""Global options (`--log-format`) work before and after the subcommand, for every
subcommand, and the README's cron line runs as it is written (issue 13, item 4)."""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
from e2e_checks import API_KEY

from pipeline.cli import cli

README = Path(__file__).resolve().parents[2] / "README.md"


def _command_paths(group: click.Group, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    for name, command in sorted(group.commands.items()):
        path = (*prefix, name)
        if isinstance(command, click.Group):
            yield from _command_paths(command, path)
        else:
            yield path


def _readme_cron_tick_args() -> list[str]:
    """The arguments after `nanobatch` in the README's cron line for `tick`."""
    blocks = re.findall(r"```cron\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    lines = [line for block in blocks for line in block.splitlines() if "nanobatch tick" in line]
    assert len(lines) == 1, lines
    command = lines[0].split("&&", 1)[1].split(">>", 1)[0]
    words = shlex.split(command)
    assert words[0].endswith("nanobatch"), words
    return words[1:]


@pytest.mark.parametrize("path", list(_command_paths(cli)), ids=" ".join)
def test_log_format_after_every_subcommand(e2e: Any, path: tuple[str, ...]) -> None:
    """`nanobatch <command> --log-format json --help` is accepted for every command."""
    result = e2e.invoke(*path, "--log-format", "json", "--help")
    assert result.code == 0, result.stderr
    assert "Usage:" in result.stdout and "No such option" not in result.stderr


def test_log_format_after_the_subcommand_sets_the_format(e2e: Any) -> None:
    """The option after the subcommand (either spelling) decides the format, as before it."""
    e2e.monkeypatch.delenv("NANOBATCH_LOG_FORMAT")
    submit = e2e.invoke("submit", str(e2e.spec_path), "--log-format", "json")
    assert submit.code == 0, submit.stderr
    events = [json.loads(line)["event"] for line in submit.stderr.splitlines() if line.strip()]
    assert "run_created" in events
    console = e2e.invoke("submit", str(e2e.spec_path), "--force", "--log-format=console")
    assert console.code == 0, console.stderr
    assert "run_created" in console.stderr and not console.stderr.lstrip().startswith("{")
    status = e2e.invoke("status", "--log-format", "json", "--json")
    assert status.code == 0, status.stderr
    assert len(status.json()["runs"]) == 2
    bad = e2e.invoke("tick", "--log-format", "xml")
    assert bad.code == 2 and "xml" in bad.stderr


@pytest.mark.timeout(120)
def test_readme_cron_line_runs_as_written(e2e: Any) -> None:
    """The README's cron line (`nanobatch tick --log-format json`) in a real process exits 0,
    moves a submitted run on, and writes JSON log lines only."""
    args = _readme_cron_tick_args()
    assert args == ["tick", "--log-format", "json"]
    e2e.monkeypatch.delenv("NANOBATCH_LOG_FORMAT")
    submitted = e2e.invoke("submit", str(e2e.spec_path))
    assert submitted.code == 0, submitted.stderr
    run_id = submitted.stdout.strip()
    for _ in range(200):
        result = e2e.subprocess(*args)
        assert result.code == 0, result.stderr
        assert result.stdout == ""
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert lines
        for line in lines:
            assert isinstance(json.loads(line), dict), line
        assert API_KEY not in result.stderr
        if run_id in result.stderr and "run_finished" in result.stderr:
            break
    else:
        pytest.fail("the run never finished under the cron tick")
    status = e2e.invoke("status", run_id, "--json").json()
    assert status["runs"][0]["state"] == "finished"
    assert status["runs"][0]["items"]["succeeded"] == 4
