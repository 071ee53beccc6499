"""An earlier commit's tree, unpacked from git, for benchmarks that measure this tree against it."""

from __future__ import annotations

import subprocess
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def unpack(ref: str, into: Path) -> tuple[Path, str]:
    """REF's tree under ``into`` (`git archive`, so only committed files): its folder and the commit."""
    commit = subprocess.run(
        ["git", "rev-parse", "--verify", f"{ref}^{{commit}}"], cwd=ROOT, capture_output=True, text=True
    )
    if commit.returncode:
        raise SystemExit(f"--before {ref!r}: not a commit of this repository ({commit.stderr.strip()})")
    archive = into / "tree.tar"
    with archive.open("wb") as f:
        subprocess.run(["git", "archive", commit.stdout.strip()], cwd=ROOT, stdout=f, check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(into / "tree", filter="data")
    return into / "tree", commit.stdout.strip()
