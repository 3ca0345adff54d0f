"""Not implemented yet (see the issue "Benchmarks and speed"): writes a placeholder result
that says so, so `make bench` and the smoke test cover every name."""

from __future__ import annotations

import argparse
from typing import Any

from benchmarks import common

NAME = "workers"


def add_args(p: argparse.ArgumentParser) -> None:
    pass


def run(a: argparse.Namespace) -> dict[str, Any]:
    out = {"quick": bool(a.quick), "status": "not_implemented"}
    print(f"{NAME}: not implemented yet; wrote {common.save(NAME, out)}")
    return out
