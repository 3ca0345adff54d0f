"""Commands that need no batch service (`status`, `report`, `plan`) start without importing
google-genai, a third of a second of every such command: the CLI and the shell see the
service only through `adapters.backend`, and `adapters.gemini` is imported when a backend
is made."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_the_cli_imports_no_sdk_until_a_backend_is_made() -> None:
    probe = (
        "import sys, pipeline.cli, pipeline.shell.reporting, pipeline.shell.tick; "
        "print(sorted(m for m in sys.modules if m.startswith('google.genai')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"
