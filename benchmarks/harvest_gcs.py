"""Harvest to gs:// on fake-gcs-server (parallel uploads): objects/s and the ratio to the
same harvest to a local folder, same sizes, same run of the benchmark, each timed from
the download's start to the harvesting process's exit (see benchmarks/harvest.py).

    python -m benchmarks gcs [--quick] [--gcs-gb 0.25] [--repeat 2]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

from benchmarks import common, harvest


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--gcs-gb", type=float, default=0.25, help="gcs: results file size")


def run(a: argparse.Namespace) -> dict[str, Any]:
    from tests.gcs_fixture import start_server, stop_server

    image_mb = 0.05 if a.quick else a.image_mb
    images = [12] if a.quick else [max(4, round(a.gcs_gb * 1e9 / (image_mb * 1e6)))]
    repeat = 1 if a.quick else a.repeat
    with tempfile.TemporaryDirectory(prefix="bench-gcs-") as tmp:
        server = start_server(Path(tmp))
        try:
            gcs = harvest.measure(
                [],
                image_mb,
                a.workers,
                gcs_url=server.url,
                images=images,
                repeat=repeat,
                spooled=False,
            )
        finally:
            stop_server(server.process)
    local = harvest.measure([], image_mb, a.workers, images=images, repeat=repeat, spooled=False)
    rows = []
    for g, loc in zip(gcs, local, strict=True):
        size_mb = g["file_mb"]
        rows.append(
            {
                "images": g["images"],
                "file_mb": size_mb,
                "round": g["round"],
                "gcs_s": g["wire_s"],
                "gcs_objects_per_s": g["wire_images_per_s"],
                "gcs_mb_per_s": g["wire_mb_per_s"],
                "local_s": loc["wire_s"],
                "local_objects_per_s": loc["wire_images_per_s"],
                "ratio_to_local": common.ratio(loc["wire_s"], g["wire_s"]),
                "floor_s": g["floor_s"],
                "ratio_to_floor": g["wire_ratio"],
                "gcs_peak_rss_mib": g["wire_peak_rss_mib"],
            }
        )
    common.table(
        "harvest to gs:// (fake-gcs-server) vs local folder, both from the download's start "
        "to the process's exit",
        rows,
    )
    out = {
        "quick": bool(a.quick),
        "image_mb": image_mb,
        "workers": a.workers,
        "goal_ratio_to_local": 0.8,
        "sizes": rows,
        "ratio_to_local_min": min(r["ratio_to_local"] for r in rows),
    }
    print(f"wrote {common.save('gcs', out)}")
    return out
