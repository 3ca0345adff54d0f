"""The built wheel works on its own (issue 13, item 14): it ships the migrations as a
package beside `pipeline`, and once installed in a fresh virtualenv (not editable) it
upgrades an empty ledger and runs the example job on the emulator from another folder.

Runs in CI with the rest of the suite (marker `wheel`); builds offline
(`--no-build-isolation`) with the setuptools of the running environment, and reuses its
installed dependencies through a .pth line instead of downloading them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.wheel, pytest.mark.timeout(180)]


def _run(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=150, check=False
    )
    assert proc.returncode == 0, f"{args}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def _build_wheel(dest: Path) -> Path:
    """`pip wheel --no-deps` of a copy of the source tree (so no build/ or .egg-info is left
    in the checkout)."""
    source = dest / "src"
    shutil.copytree(
        ROOT,
        source,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "__pycache__", "*.egg-info", "build", "out", ".nanobatch", "tests"
        ),
    )
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    _run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(dest), str(source)], dest)
    (wheel,) = dest.glob("nanobatch-*.whl")
    return wheel


def _fresh_venv(where: Path, wheel: Path) -> Path:
    """A new virtualenv with the wheel installed (not editable), seeing the running
    environment's dependencies but not its (editable) nanobatch."""
    venv = where / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], where)
    python = venv / "bin" / "python"
    purelib = Path(
        _run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], where
        ).strip()
    )
    # A plain path line: the running environment's packages are importable, but its .pth files
    # (the editable nanobatch among them) are not run.
    (purelib / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n", encoding="utf-8")
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", "--python"]
    _run([*pip, str(python), "install", "--no-deps", "--no-index", str(wheel)], where)
    return venv


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build_wheel(tmp_path_factory.mktemp("wheel"))


def test_wheel_ships_migrations_and_every_package(wheel: Path) -> None:
    """The wheel holds every package under pipeline/ and nanobatch_migrations (env.py, the
    mako template, every version script)."""
    names = set(zipfile.ZipFile(wheel).namelist())
    for init in ROOT.joinpath("pipeline").rglob("__init__.py"):
        assert str(init.relative_to(ROOT)) in names, f"{init} is not in the wheel"
    assert "pipeline/data/models.toml" in names
    assert "nanobatch_migrations/env.py" in names
    assert "nanobatch_migrations/script.py.mako" in names
    for script in ROOT.joinpath("migrations", "versions").glob("*.py"):
        assert f"nanobatch_migrations/versions/{script.name}" in names, script.name


def test_installed_wheel_upgrades_and_runs_the_example_from_another_folder(
    wheel: Path, tmp_path: Path
) -> None:
    """pip install of the wheel into a fresh venv; from a folder that is not the checkout,
    `nanobatch db upgrade` and `nanobatch run jobs/example.toml --emulator` exit 0, and the
    images are there."""
    venv = _fresh_venv(tmp_path, wheel)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copytree(ROOT / "jobs", elsewhere / "jobs")
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("NANOBATCH_", "GEMINI_", "GOOGLE_", "PYTHON"))
    }
    env["NANOBATCH_LOG_FORMAT"] = "json"
    python = str(venv / "bin" / "python")
    where = _run([python, "-c", "import pipeline; print(pipeline.__file__)"], elsewhere, env)
    assert where.startswith(str(venv)), where
    nanobatch = str(venv / "bin" / "nanobatch")
    _run([nanobatch, "db", "upgrade"], elsewhere, env)
    assert (elsewhere / ".nanobatch" / "ledger.db").is_file()
    report = json.loads(
        _run(
            [
                nanobatch,
                "run",
                "jobs/example.toml",
                "--emulator",
                "--poll-interval",
                "0.2",
                "--json",
            ],
            elsewhere,
            env,
        )
    )
    items = report["items"]
    assert items and report["summary"]["succeeded"] == len(items)
    for item in items:
        path = Path(item["uri"])
        assert path.is_relative_to(elsewhere / "out" / "example"), path
        with Image.open(path) as image:
            assert image.size[0] > 0
