"""Spec reading's messages and typed getters: the `Ctx` every section parser raises through.

Pure. Each error is a SpecError naming the spec file, the dotted key, the bad value (shown
short) and what would be valid (`pipeline.core.spec_parse`).
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.core.errors import SpecError


def _show(value: Any) -> str:
    if isinstance(value, str):
        text = json.dumps(value, ensure_ascii=False)
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, dict):
        text = "a table"
    else:
        text = str(value)
    return text if len(text) <= 80 else text[:77] + "..."


def listing(values: tuple[str, ...] | list[str]) -> str:
    return ", ".join(values) if values else "(none)"


@dataclass(frozen=True)
class Ctx:
    path: Path

    def bad(self, key: str, value: Any, problem: str, valid: str | None = None) -> SpecError:
        tail = f"; valid: {valid}" if valid else ""
        return SpecError(f"{self.path}: {key} = {_show(value)}: {problem}{tail}")

    def missing(self, key: str, hint: str) -> SpecError:
        return SpecError(f"{self.path}: {key} is required: {hint}")

    def check_keys(self, table: Mapping[str, Any], prefix: str, known: tuple[str, ...]) -> None:
        for key in table:
            if key not in known:
                where = f"[{prefix}]" if prefix else "the top level"
                raise SpecError(
                    f"{self.path}: {dotted(prefix, key)}: unknown key in {where}; "
                    f"valid keys: {listing(known)}"
                )

    def table(self, data: Mapping[str, Any], key: str, required: bool) -> Mapping[str, Any]:
        if key not in data:
            if required:
                raise self.missing(f"[{key}]", f"add a [{key}] table")
            return {}
        value = data[key]
        if not isinstance(value, dict):
            raise self.bad(key, value, f"must be a table: write [{key}] on its own line")
        return value

    def string(self, table: Mapping[str, Any], key: str, prefix: str = "") -> str | None:
        value = table.get(key)
        if value is None:
            return None
        if not isinstance(value, str):
            raise self.bad(dotted(prefix, key), value, "must be a string (in quotes)")
        return value

    def integer(
        self, table: Mapping[str, Any], key: str, prefix: str, default: int | None
    ) -> int | None:
        value = table.get(key, default)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.bad(dotted(prefix, key), value, "must be a whole number", "an integer >= 1")
        if value < 1:
            raise self.bad(dotted(prefix, key), value, "must be at least 1", "an integer >= 1")
        return value


def dotted(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def parse_toml(text: str, ctx: Ctx) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{ctx.path}: not valid TOML: {exc}") from exc
