"""Harvest to gs:// on fake-gcs-server (parallel uploads): objects/s and the ratio to the
same harvest to a local folder, same sizes, same run of the benchmark, each timed from
the download's start to the harvesting process's exit (see benchmarks/harvest.py).

    python -m benchmarks gcs [--quick] [--gcs-gb 0.25] [--repeat 2] [--gcs-delay-ms 25]

`server_cpu_s` is fake-gcs-server's own CPU during the harvest (it shares this machine's
cores with the harvest, unlike the service); with `--gcs-delay-ms` every answer of the
server comes that much later, through a proxy process (its CPU: `proxy_cpu_s`).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

from benchmarks import common, delay_proxy, harvest


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--gcs-gb", type=float, default=0.25, help="gcs: results file size")
    p.add_argument(
        "--gcs-delay-ms",
        type=float,
        default=0.0,
        help="gcs: hold each answer of fake-gcs-server back this long (benchmarks.delay_proxy),"
        " as a storage service over a network would",
    )


def run(a: argparse.Namespace) -> dict[str, Any]:
    from tests.gcs_fixture import start_server, stop_server

    image_mb = 0.05 if a.quick else a.image_mb
    images = [12] if a.quick else [max(4, round(a.gcs_gb * 1e9 / (image_mb * 1e6)))]
    repeat = 1 if a.quick else a.repeat
    with tempfile.TemporaryDirectory(prefix="bench-gcs-") as tmp:
        server = start_server(Path(tmp))
        try:
            with delay_proxy.running(server.url, a.gcs_delay_ms) as (url, proxy_pid):
                proxy_cpu = harvest.process_cpu_s(proxy_pid)
                gcs = harvest.measure(
                    [],
                    image_mb,
                    a.workers,
                    gcs_url=url,
                    images=images,
                    repeat=repeat,
                    spooled=False,
                    server_pid=server.process.pid,
                )
                proxy_cpu = harvest.process_cpu_s(proxy_pid) - proxy_cpu
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
                "gcs_cpu_s": g["wire_cpu_s"],
                "server_cpu_s": g["server_cpu_s"],
                "local_cpu_s": loc["wire_cpu_s"],
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
        "gcs_delay_ms": a.gcs_delay_ms,
        "proxy_cpu_s": round(proxy_cpu, 2),
        "sizes": rows,
        "ratio_to_local_min": min(r["ratio_to_local"] for r in rows),
    }
    print(f"wrote {common.save('gcs', out)}")
    return out
