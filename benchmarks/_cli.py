"""One `factory` command as a benchmark script runs it: from the repository root, offline, timed."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def factory(*args: str) -> tuple[float, str]:
    """Run ``python -m factory.cli ARGS`` from the repository root: its wall time (s) and stdout. A command
    that fails ends the script with its exit code and the tail of its stderr."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "factory.cli", *args], cwd=ROOT, env=env, capture_output=True,
                         text=True)  # fmt: skip
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        sys.exit(f"factory {' '.join(args)} exited with {out.returncode}:\n{out.stderr[-2000:]}")
    return round(wall, 1), out.stdout
