"""The `nanobatch` command: thin click commands that parse, build Settings and a Context,
call one shell function and render. `app` holds the root group and `main`; importing this
package registers the commands of `jobs` and `service` on it.
"""

from __future__ import annotations

from pipeline.cli import jobs, service  # noqa: F401  (registers the commands)
from pipeline.cli.app import cli, hoist_options, main

__all__ = ["cli", "hoist_options", "main"]
