"""``osdsr --help`` and every ``osdsr CMD --help`` answer at once: no torch, Pillow or diffusers import."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from osdsr.cli import COMMANDS

HEAVY_MODULES = ("torch", "PIL", "diffusers", "transformers", "peft", "accelerate", "scipy")
HELP_CPU_SECONDS = 1.0  # issue 21: every --help under a second

# Prints the heavy modules that the help imported and the CPU seconds the process used up to then.
PROBE = """
import json, resource, sys
from osdsr.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
usage = resource.getrusage(resource.RUSAGE_SELF)
heavy = sorted({name.split(".")[0] for name in sys.modules} & set(HEAVY))
print(json.dumps({"heavy": heavy, "cpu": usage.ru_utime + usage.ru_stime}), file=sys.stderr)
"""


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help_imports_nothing_heavy(command: str | None) -> None:
    argv = ["--help"] if command is None else [command, "--help"]
    probe = PROBE.replace("HEAVY", repr(HEAVY_MODULES))
    result = subprocess.run([sys.executable, "-c", probe, *argv], capture_output=True, text=True, check=True)
    assert "usage: osdsr" in result.stdout
    report = json.loads(result.stderr.strip().splitlines()[-1])
    assert report["heavy"] == []
    # CPU time, not wall time: other processes on a shared machine do not inflate it
    assert report["cpu"] < HELP_CPU_SECONDS
