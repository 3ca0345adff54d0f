"""Benchmark of the emulator: one file batch of N Pro 2K images, downloaded with the SDK while
the emulator process's RSS is sampled. Prints a table, writes benchmarks/results/emulator.json.

    python benchmarks/bench_emulator.py [--images N] [--scale F]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from google import genai

REPO = Path(__file__).resolve().parents[1]
MODEL = "gemini-3-pro-image-preview"


class RssSampler(threading.Thread):
    """Reads VmRSS of a process every 0.1 s and keeps the peak since the last reset."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak_kib = 0
        self.halt = threading.Event()

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def reset(self) -> int:
        old, self.peak_kib = self.peak_kib, self.rss_kib()
        return old

    def run(self) -> None:
        while not self.halt.wait(0.1):
            self.peak_kib = max(self.peak_kib, self.rss_kib())


def start_emulator(data_dir: Path, scale: float) -> tuple[subprocess.Popen[str], str]:
    cmd = [
        sys.executable,
        "-m",
        "pipeline.emulator",
        "--port",
        "0",
        "--data-dir",
        str(data_dir),
        "--image-scale",
        str(scale),
        "--speed",
        "1000",
        "--enqueued-token-quota",
        str(10**12),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=REPO)
    assert proc.stdout is not None
    return proc, proc.stdout.readline().split()[-1]


def write_input(path: Path, n: int) -> None:
    with path.open("w") as f:
        for i in range(n):
            req = {
                "contents": [{"role": "user", "parts": [{"text": f"benchmark image {i}"}]}],
                "generationConfig": {
                    "responseModalities": ["IMAGE"],
                    "imageConfig": {"aspectRatio": "1:1", "imageSize": "2K"},
                },
            }
            f.write(json.dumps({"key": f"img-{i:06d}", "request": req}) + "\n")


def run(n: int, scale: float, work: Path) -> dict[str, Any]:
    proc, url = start_emulator(work / "data", scale)
    sampler = RssSampler(proc.pid)
    sampler.start()
    try:
        client = genai.Client(api_key="bench", http_options={"base_url": url})
        write_input(work / "in.jsonl", n)
        f = client.files.upload(file=str(work / "in.jsonl"), config={"mime_type": "jsonl"})
        assert f.name
        job = client.batches.create(model=MODEL, src=f.name, config={"display_name": "bench"})
        assert job.name
        time.sleep(0.3)  # 300 emulator seconds at speed 1000: past PENDING and RUNNING
        idle_kib = sampler.reset()
        t0 = time.perf_counter()
        job = client.batches.get(name=job.name)  # produces the results file
        generate_s = time.perf_counter() - t0
        assert job.state is not None and job.state.name == "JOB_STATE_SUCCEEDED", job.state
        assert job.dest is not None and job.dest.file_name
        generate_kib = sampler.reset()
        size = client.files.get(name=job.dest.file_name).size_bytes or 0
        t0 = time.perf_counter()
        client.files.download(file=job.dest.file_name, destination=str(work / "out.jsonl"))
        download_s = time.perf_counter() - t0
        download_kib = sampler.reset()
        assert (work / "out.jsonl").stat().st_size == size
    finally:
        sampler.halt.set()
        proc.terminate()
        proc.wait(timeout=30)
    return {
        "images": n,
        "image_scale": scale,
        "model": MODEL,
        "image_size": "2K",
        "results_file_bytes": size,
        "generate_seconds": round(generate_s, 2),
        "download_seconds": round(download_s, 2),
        "download_mb_per_s": round(size / 1e6 / download_s, 1),
        "emulator_rss_mib_before": round(max(idle_kib, 1) / 1024, 1),
        "emulator_peak_rss_mib_generating": round(generate_kib / 1024, 1),
        "emulator_peak_rss_mib_downloading": round(download_kib / 1024, 1),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=10_000)
    p.add_argument("--scale", type=float, default=0.1, help="image_scale (1.0 = real 2K)")
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-emulator-") as tmp:
        result = run(a.images, a.scale, Path(tmp))
    for name, value in result.items():
        print(f"{name:36} {value}")
    out = REPO / "benchmarks" / "results" / "emulator.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
