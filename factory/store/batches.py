"""Provider batches in the store: their state, written before each step, and the request keys they hold.

The batch client (factory.batch_queue) calls these from the runner's store thread; ``factory status``
reads them. A batch row moves ``uploading`` -> ``creating`` -> ``submitted`` -> ``settled`` (or
``dropped`` when it never reached the provider as a batch).
"""

from __future__ import annotations

import time
from typing import Any

import pyarrow as pa

from factory.store.tables import StoreBase, execute, insert_frame

OPEN_STATES = ("uploading", "creating", "submitted")
# what the batch client may set; the names are columns of ``batches``
FIELDS = (
    "state", "provider_status", "batch_id", "input_file_id", "output_file_id", "error_file_id", "total",
    "completed", "failed", "answered", "retried", "provider_created_at", "in_progress_at", "ended_at",
    "expires_at", "error",
)  # fmt: skip


class Batches(StoreBase):
    def batch_begin(self, row: dict[str, Any], keys: list[str], requests: list[str]) -> None:
        """A new batch file and its request keys, in one transaction, before anything is uploaded."""
        con = self.con
        execute(con, "BEGIN TRANSACTION")
        try:
            execute(
                con,
                "INSERT INTO batches (id, teacher, run_id, state, requests, bytes) VALUES (?, ?, ?, ?, ?, ?)",
                [row["id"], row["teacher"], row["run_id"], row["state"], row["requests"], row["bytes"]],
            )
            frame = pa.table(
                {
                    "batch": pa.array([row["id"]] * len(keys), pa.string()),
                    "key": pa.array(keys, pa.string()),
                    "request": pa.array(requests, pa.string()),
                }
            )
            insert_frame(con, "_batch_requests", frame, "INSERT INTO batch_requests (batch, key, request) ")
            execute(con, "COMMIT")
        except BaseException:
            execute(con, "ROLLBACK")
            raise

    def batch_update(self, batch: str, changes: dict[str, Any]) -> None:
        names = [n for n in FIELDS if n in changes]
        if len(names) != len(changes):
            raise ValueError(f"not batch fields: {sorted(set(changes) - set(names))}")
        sets = ", ".join(f"{n} = ?" for n in names)  # names from FIELDS only; values are parameters
        execute(
            self.con,
            f"UPDATE batches SET {sets}, updated_at = now() WHERE id = ?",
            [*(changes[n] for n in names), batch],
        )

    def open_batches(self, teacher: str) -> list[dict[str, Any]]:
        return self._dicts(
            "SELECT * FROM batches WHERE teacher = ? AND state IN (SELECT unnest(?::VARCHAR[])) ORDER BY created_at",
            [teacher, list(OPEN_STATES)],
        )

    def batch_keys(self, batch: str) -> list[str]:
        return [r[0] for r in self._rows("SELECT key FROM batch_requests WHERE batch = ?", [batch])]

    def batch_requests(self, batch: str) -> dict[str, str]:
        """key -> the request's JSON, of every request of one batch."""
        return dict(self._rows("SELECT key, request FROM batch_requests WHERE batch = ?", [batch]))

    def batch_answered(self, keys: list[str]) -> set[str]:
        """The keys among ``keys`` whose cached answer came from a provider batch (billed at its rate)."""
        rows = self._rows(
            "SELECT DISTINCT r.key FROM batch_requests r JOIN batches b ON b.id = r.batch "
            "JOIN cache c ON c.key = r.key WHERE b.state = 'settled' AND r.key IN (SELECT unnest(?::VARCHAR[])) "
            "AND c.status = 'ok'",
            [keys],
        )
        return {r[0] for r in rows}

    def batches_of(self, run_id: str) -> list[dict[str, Any]]:
        """The batches a run submitted, newest last, each with an ETA (seconds) while it runs: the
        provider's request counts over the time since it started running."""
        rows = self._dicts(
            "SELECT id, batch_id, state, provider_status, requests, bytes, total, completed, failed, answered, "
            "retried, provider_created_at, in_progress_at, ended_at, expires_at, error, created_at "
            "FROM batches WHERE run_id = ? ORDER BY created_at",
            [run_id],
        )
        now = time.time()
        for r in rows:
            r["created_at"] = r["created_at"].isoformat() if r["created_at"] is not None else None
            r["eta_s"] = eta_s(r, now)
        return rows


def eta_s(r: dict[str, Any], now: float) -> float | None:
    """Seconds left, from the provider's request counts and its in_progress timestamp; None when it cannot
    tell (not running yet, or nothing done yet)."""
    if r.get("state") != "submitted" or r.get("provider_status") != "in_progress":
        return None
    total, done = r.get("total") or 0, (r.get("completed") or 0) + (r.get("failed") or 0)
    start = r.get("in_progress_at")
    if not total or not done or not start or now <= start:
        return None
    return max(0.0, (total - done) * (now - start) / done)


__all__ = ["FIELDS", "OPEN_STATES", "Batches", "eta_s"]
