from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
SEEDS = ROOT / "data" / "seeds" / "arithmetic.jsonl"


def write_config(tmp: Path, body: str, name: str = "cfg.yaml") -> Path:
    p = tmp / name
    p.write_text(body, encoding="utf-8")
    return p


@pytest.fixture
def seeds_file(tmp_path: Path) -> Path:
    """A small copy of the shipped seeds (first 8 questions)."""
    lines = SEEDS.read_text(encoding="utf-8").splitlines()[:8]
    p = tmp_path / "seeds.jsonl"
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return p
