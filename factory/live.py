"""What a run in progress shows to ``factory status`` while it holds the store (DuckDB lets one process
open the file): a small JSON file beside the store, ``STORE.live.json``, replaced whole at every commit
(about once a second) and removed when the run ends. It holds the run's progress counters, its spending
so far and why pacing holds it (``waiting 12 s: tokens per minute``), never a prompt, an answer or a secret.
A file left by a process that died is recognised by its process id and ignored."""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Any

import orjson


def live_path(store: Path) -> Path:
    return store.with_name(store.name + ".live.json")


def write_live(store: Path, doc: dict[str, Any]) -> None:
    """Replace the live file (best effort: a full disk must not stop the run over it)."""
    path = live_path(store)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(orjson.dumps({**doc, "pid": os.getpid(), "at": time.time()}))
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()


def clear_live(store: Path) -> None:
    with contextlib.suppress(OSError):
        doc = orjson.loads(live_path(store).read_bytes())
        if doc.get("pid") == os.getpid():
            live_path(store).unlink()


def read_live(store: Path) -> dict[str, Any] | None:
    """The live file of a run whose process is still there; None otherwise."""
    try:
        doc = orjson.loads(live_path(store).read_bytes())
        os.kill(int(doc["pid"]), 0)  # raises when no such process
    except (OSError, ValueError, KeyError, TypeError, orjson.JSONDecodeError):
        return None
    return doc if isinstance(doc, dict) else None


__all__ = ["clear_live", "live_path", "read_live", "write_live"]
