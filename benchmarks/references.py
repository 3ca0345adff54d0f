"""Plan with reference images: an N-row CSV planned as a user runs `plan`, each in a fresh
process with its peak RSS sampled, three ways over the same prompts:

- `plain`: no reference images (plan as it was before them);
- `refs`: one image column, the rows sharing M images (each 256 KiB, PNG);
- `refs2_variants`: two image columns over the same M images and `variants = 4` (4 N items).

Reading and hashing the images is counted in `refs` (a fresh process hashes each image once).

    python -m benchmarks.references [--quick] [--rows 100000] [--images 100]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import common

IMAGE_BYTES = 256 * 1024


def _child(args: dict[str, Any]) -> dict[str, Any]:
    from pipeline.core.catalog import load_catalog
    from pipeline.shell.planning import load_spec, make_plan

    with common.peak_rss() as sampler:
        t0 = time.perf_counter()
        catalog = load_catalog()
        plan = make_plan(load_spec(Path(args["spec"]), catalog), catalog)
        seconds = time.perf_counter() - t0
    return {
        "items": plan.items,
        "rejected": plan.rejected,
        "references": plan.references,
        "seconds": round(seconds, 2),
        "peak_rss_mib": round(sampler.peak_kib / 1024, 1),
    }


def write_inputs(root: Path, rows: int, images: int) -> None:
    """prompts.csv (id, prompt, photo, style) and `images` PNG files under pics/."""
    pics = root / "pics"
    pics.mkdir()
    head = b"\x89PNG\r\n\x1a\n"
    for i in range(images):
        (pics / f"p{i:04d}.png").write_bytes(head + i.to_bytes(4, "big") * (IMAGE_BYTES // 4))
    with (root / "prompts.csv").open("w") as fh:
        fh.write("id,prompt,photo,style\n")
        for i in range(rows):
            a, b = i % images, (i * 7 + 3) % images
            fh.write(f"bench-{i:07d},benchmark image {i},pics/p{a:04d}.png,pics/p{b:04d}.png\n")


def _spec(root: Path, name: str, extra: str) -> Path:
    return common.write_spec(
        root,
        name=name,
        input_file="prompts.csv",
        output_uri=str(root / "out"),
        model="gemini-3-pro-image-preview",
        size="1K",
        extra_input=extra,
    )


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rows", type=int, default=100_000, help="references: table rows")
    p.add_argument("--images", type=int, default=100, help="references: distinct images")


def run(a: argparse.Namespace) -> dict[str, Any]:
    rows = 2000 if a.quick else a.rows
    images = 10 if a.quick else a.images
    cases = {
        "plain": "",
        "refs": 'images = ["photo"]\n',
        "refs2_variants": 'images = ["photo", "style"]\nvariants = 4\n',
    }
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-refs-") as tmp:
        root = Path(tmp)
        write_inputs(root, rows, images)
        for name, extra in cases.items():
            spec = _spec(root, f"bench-{name.replace('_', '-')}", extra)
            got = common.child("benchmarks.references", {"spec": str(spec)})
            results.append({"case": name, "rows": rows, "images": images} | got)
    plain = results[0]["seconds"]
    for entry in results:
        entry["time_vs_plain"] = common.ratio(entry["seconds"], plain)
    common.table("plan with reference images (fresh process each)", results)
    out = {"quick": bool(a.quick), "cases": results}
    print(f"wrote {common.save('references', out)}")
    return out


if __name__ == "__main__":
    common.script_main(_child, add_args, run, __doc__)
