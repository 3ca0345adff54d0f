"""Every line nanobatch really sends (through submit, the fallback path included) is one the
strict emulator serves: a line it refuses is a line the service would refuse."""

from __future__ import annotations

from faults_helpers import FALLBACK, Drill

from pipeline.emulator import FaultPlan

INJECTED = "Request contains an invalid argument."  # the message of the fault below


def _refused(drill: Drill) -> list[tuple[str, str]]:
    """(key, message) of every result line the emulator refused on its own (not injected)."""
    return [
        (ln.get("key", ""), ln["error"]["message"])
        for ln in drill.result_lines()
        if "error" in ln and ln["error"]["message"] != INJECTED
    ]


def test_primary_lines_pass_the_strict_emulator(drill: Drill) -> None:
    drill.write_spec(4)
    drill.tick_until_done(drill.submit())
    assert _refused(drill) == []
    assert all(e["outcome"] == "ok" for e in drill.emu.request_log if e["kind"] == "line")


def test_fallback_lines_pass_the_strict_emulator(drill: Drill) -> None:
    """The item moved to gemini-2.5-flash-image must not keep the primary's imageSize
    (issue 13 item 15): that model takes none and the service refuses the line."""
    drill.emu.faults = FaultPlan.from_dict(
        {"line_faults": [{"kind": "error", "code": 3, "keys": ["img-0"], "times": 1}]}
    )
    drill.write_spec(2, fallback=FALLBACK)
    drill.tick_until_done(drill.submit())
    assert _refused(drill) == []
