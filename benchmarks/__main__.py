"""`python -m benchmarks [name ...] [--quick]`: run the benchmarks (all by default, in the
order harvest, expand, report, gcs, tick, workers, webhooks); each prints a table and writes
benchmarks/results/<name>.json."""

from __future__ import annotations

import argparse
import importlib
import sys
import time
import traceback

ORDER = ["harvest", "expand", "report", "gcs", "tick", "workers", "webhooks"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    p.add_argument("names", nargs="*", metavar="name", help=" ".join(ORDER))
    p.add_argument("--quick", action="store_true", help="tiny sizes (the smoke test)")
    modules = {name: importlib.import_module(f"benchmarks.{_module(name)}") for name in ORDER}
    for module in modules.values():
        module.add_args(p)
    a = p.parse_args(argv)
    failed = []
    for name in a.names or ORDER:
        t0 = time.perf_counter()
        try:
            modules[name].run(a)
        except Exception:
            traceback.print_exc()
            failed.append(name)
        print(f"[{name}: {time.perf_counter() - t0:.1f} s]", flush=True)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


def _module(name: str) -> str:
    return {"gcs": "harvest_gcs", "tick": "tick_scale", "report": "report_run"}.get(name, name)


if __name__ == "__main__":
    sys.exit(main())
