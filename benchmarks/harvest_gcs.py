"""Harvest to gs:// on fake-gcs-server (parallel uploads): objects/s and the ratio to the
same harvest to a local folder, same sizes, same run of the benchmark.

    python -m benchmarks gcs [--quick] [--gcs-gb 0.25]
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
    with tempfile.TemporaryDirectory(prefix="bench-gcs-") as tmp:
        server = start_server(Path(tmp))
        try:
            gcs = harvest.measure([], image_mb, a.workers, gcs_url=server.url, images=images)
        finally:
            stop_server(server.process)
    local = harvest.measure([], image_mb, a.workers, images=images)
    rows = []
    for g, loc in zip(gcs, local, strict=True):
        rows.append(
            {
                "images": g["images"],
                "file_bytes": g["file_bytes"],
                "gcs_s": g["harvest_s"],
                "gcs_objects_per_s": g["harvest_images_per_s"],
                "local_s": loc["harvest_s"],
                "local_objects_per_s": loc["harvest_images_per_s"],
                "ratio_to_local": common.ratio(loc["harvest_s"], g["harvest_s"]),
                "floor_s": g["floor_s"],
                "ratio_to_floor": g["ratio"],
                "gcs_peak_rss_mib": g["harvest_peak_rss_mib"],
            }
        )
    common.table("harvest to gs:// (fake-gcs-server) vs local folder", rows)
    out = {"quick": bool(a.quick), "image_mb": image_mb, "workers": a.workers, "sizes": rows}
    print(f"wrote {common.save('gcs', out)}")
    return out
