"""Repeated ids in a seed file too long to keep its ids in memory.

The ids go, a window at a time, to a scratch DuckDB file of their own (not the store: nothing of a seed
file that fails its check is written there), with DuckDB's memory capped so that the grouping spills to
disk instead of growing with the file. One grouped query then finds the first row whose id repeats an
earlier row, as a check that keeps every id in a dict would have.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

import duckdb
import pyarrow as pa

# DuckDB's memory for the grouping; beyond it the ids spill to the scratch folder
MEMORY_LIMIT = "64MB"


class IdLedger:
    """Seed ids with their row numbers, on disk; ``first_repeat`` answers once every row is in."""

    def __init__(self) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="factory-seed-ids-")
        folder = Path(self._tmp.name)
        self.con = duckdb.connect(str(folder / "ids.duckdb"))
        for sql, value in (
            ("SET memory_limit = ?", MEMORY_LIMIT),
            ("SET temp_directory = ?", str(folder / "spill")),
            ("SET threads = ?", 1),
            ("SET preserve_insertion_order = ?", False),
        ):
            self.con.execute(sql, [value]).fetchall()
        self.con.execute("SET enable_progress_bar = false").fetchall()
        self.con.execute("CREATE TABLE ids (id VARCHAR, row BIGINT)").fetchall()

    def add(self, ids: Sequence[str], rows: Sequence[int]) -> None:
        self.con.register(
            "_ids", pa.table({"id": pa.array(ids, pa.string()), "row": pa.array(rows, pa.int64())})
        )
        try:
            self.con.execute("INSERT INTO ids SELECT * FROM _ids").fetchall()
        finally:
            self.con.unregister("_ids")

    def first_repeat(self) -> tuple[str, int, int] | None:
        """(id, its first row, the row that repeats it) for the earliest repeating row, or None."""
        found = self.con.execute(
            "WITH twice AS (SELECT id FROM ids GROUP BY id HAVING count(*) > 1) "
            "SELECT id, rows[1], rows[2] FROM ("
            "  SELECT id, list(row ORDER BY row) AS rows FROM ids SEMI JOIN twice USING (id) GROUP BY id"
            ") ORDER BY rows[2] LIMIT 1"
        ).fetchall()
        return (str(found[0][0]), int(found[0][1]), int(found[0][2])) if found else None

    def close(self) -> None:
        self.con.close()
        self._tmp.cleanup()
