"""The verdict ledger and the curated view: filter passes, their verdicts, stored scores, the funnel,
why a record is (not) curated, and the curated records as Arrow."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import duckdb
import orjson
import pyarrow as pa

from factory.errors import StoreError
from factory.store.tables import (
    StoreBase,
    arrow_table,
    execute,
    insert_frame,
)

log = logging.getLogger(__name__)


class Verdicts(StoreBase):
    def curated_table(self, run_id: str, *, include_rejected: bool = False) -> pa.Table:
        """The curated view: records with no rejecting verdict. With include_rejected, all records plus
        the reasons they were dropped (NULL when kept)."""
        where = "" if include_rejected else "AND v.reasons IS NULL"
        cur = self.con.execute(
            "WITH v AS (SELECT record_id, string_agg(filter || ': ' || coalesce(reason, ''), '; ') AS reasons "
            f"           FROM verdicts WHERE {self._LIVE} GROUP BY record_id) "
            "SELECT r.id, r.recipe, r.stage, r.seed_id, r.sample_index, r.text, r.payload, r.parent_ids, "
            "r.request_keys, r.teacher, r.template_version, v.reasons AS dropped_by "
            "FROM records r LEFT JOIN v ON v.record_id = r.id "
            f"WHERE r.run_id = ? {where} ORDER BY r.seed_id, r.stage, r.sample_index, r.id",
            [run_id, run_id],
        )
        return arrow_table(cur)

    def limit_memory(self, limit: str | None) -> None:
        """Cap DuckDB's memory (its page cache included) for the work that follows, e.g. '256MB'; None
        restores the default."""
        if limit is None:
            execute(self.con, "RESET memory_limit")
        else:
            execute(self.con, "SET memory_limit = ?", [limit])

    def curated_reader(
        self,
        run_id: str,
        *,
        stage: str | None = None,
        include_rejected: bool = False,
        batch_rows: int = 20_000,
    ) -> Iterator[pa.RecordBatch]:
        """``curated_table`` as Arrow batches in the same order (optionally one stage's records), read a
        range of seeds at a time: sorting a whole run at once would hold it all in memory, so an export of
        any size reads about ``batch_rows`` records per query. Uses its own cursor."""
        cur = self.con.cursor()
        scope = "run_id = ?" + (" AND stage = ?" if stage is not None else "")
        sp: list[Any] = [run_id] + ([stage] if stage is not None else [])
        n_seeds, n_records = cur.execute(
            f"SELECT count(DISTINCT seed_id), count(*) FROM records WHERE {scope}", sp
        ).fetchone() or (0, 0)
        if not n_records:
            return
        per_query = max(1, int(batch_rows * n_seeds / n_records))
        # The first seed id of each range, in order; a range ends where the next begins.
        starts = [
            r[0]
            for r in cur.execute(
                "SELECT seed_id FROM (SELECT seed_id, row_number() OVER (ORDER BY seed_id) AS i FROM "
                f"(SELECT DISTINCT seed_id FROM records WHERE {scope})) WHERE (i - 1) % ? = 0 ORDER BY seed_id",
                [*sp, per_query],
            ).fetchall()
        ]
        keep = "" if include_rejected else "AND v.reasons IS NULL"
        for i, lo in enumerate(starts):
            hi = starts[i + 1] if i + 1 < len(starts) else None
            rng = "seed_id >= ?" + (" AND seed_id < ?" if hi is not None else "")
            rp: list[Any] = [lo] + ([hi] if hi is not None else [])
            sql = (
                f"WITH r AS (SELECT * FROM records WHERE {scope} AND {rng}), "
                "v AS (SELECT record_id, string_agg(filter || ': ' || coalesce(reason, ''), '; ') AS reasons "
                f"     FROM verdicts WHERE {self._LIVE} AND record_id IN (SELECT id FROM r) GROUP BY record_id) "
                "SELECT r.id, r.stage, r.seed_id, r.sample_index, r.text, r.payload, r.request_keys, r.teacher, "
                "r.template_version, v.reasons AS dropped_by "
                f"FROM r LEFT JOIN v ON v.record_id = r.id WHERE true {keep} "
                "ORDER BY r.seed_id, r.stage, r.sample_index, r.id"
            )
            yield from cur.sql(sql, params=[*sp, *rp, run_id]).to_arrow_reader(batch_rows)

    def verdict_counts(self, run_id: str) -> list[tuple[str, str, int]]:
        rows = self._rows(
            f"SELECT filter, coalesce(reason, ''), count(*) FROM verdicts WHERE {self._LIVE} "
            "GROUP BY ALL ORDER BY 3 DESC",
            [run_id],
        )
        return [(str(f), str(r), int(n)) for f, r, n in rows]

    # -- filter passes -----------------------------------------------------------------------------

    def parse_rejected(self, run_id: str) -> set[str]:
        rows = self._rows(
            "SELECT DISTINCT record_id FROM verdicts WHERE run_id = ? AND NOT keep AND pass_id IS NULL",
            [run_id],
        )
        return {r[0] for r in rows}

    def stored_scores(self, run_id: str, filter_slug: str, version: str) -> dict[str, tuple[Any, Any]]:
        """The latest (score, detail JSON) per record for one filter version."""
        rows = self._rows(
            "SELECT record_id, score, detail FROM verdicts "
            "WHERE run_id = ? AND filter = ? AND filter_version = ? AND pass_id IS NOT NULL "
            "QUALIFY row_number() OVER (PARTITION BY record_id ORDER BY pass_id DESC) = 1",
            [run_id, filter_slug, version],
        )
        return {r[0]: (r[1], r[2]) for r in rows}

    def write_pass(self, run_id: str, filters: list[dict[str, Any]], verdicts: list[tuple[Any, ...]]) -> int:
        """Append a filter pass and its verdicts (record_id, filter, filter_version, keep, score, reason,
        detail) in one transaction. Returns the pass id."""
        con = self.con
        try:
            execute(con, "BEGIN TRANSACTION")
            pass_id = int(
                execute(
                    con, "SELECT coalesce(max(pass_id), 0) + 1 FROM filter_passes WHERE run_id = ?", [run_id]
                )[0][0]
            )
            execute(con, "INSERT INTO filter_passes (run_id, pass_id, filters) VALUES (?, ?, ?)",
               [run_id, pass_id, orjson.dumps(filters).decode()])  # fmt: skip
            if verdicts:
                cols = list(zip(*verdicts, strict=True))
                n = len(verdicts)
                t = pa.table(
                    {"record_id": pa.array(cols[0], pa.string()), "run_id": pa.array([run_id] * n, pa.string()),
                     "filter": pa.array(cols[1], pa.string()), "filter_version": pa.array(cols[2], pa.string()),
                     "keep": pa.array(cols[3], pa.bool_()), "score": pa.array(cols[4], pa.float64()),
                     "reason": pa.array(cols[5], pa.string()), "detail": pa.array(cols[6], pa.string()),
                     "pass_id": pa.array([pass_id] * n, pa.int32())}
                )  # fmt: skip
                insert_frame(
                    con, "_batch_pass", t,
                    "INSERT INTO verdicts (record_id, run_id, filter, filter_version, keep, score, reason, detail, "
                    "pass_id) ",
                )  # fmt: skip
            execute(con, "COMMIT")
        except duckdb.Error as exc:
            with contextlib.suppress(duckdb.Error):
                execute(con, "ROLLBACK")
            raise StoreError(f"cannot write the filter verdicts to {self.path}: {exc}") from exc
        return pass_id

    def pass_is_current(self, run_id: str, filters: list[dict[str, Any]]) -> bool:
        """True when the latest pass applied exactly these filters and no record was added since."""
        rows = self._rows(
            "SELECT filters, created_at >= (SELECT max(created_at) FROM records WHERE run_id = ?) "
            "FROM filter_passes WHERE run_id = ? ORDER BY pass_id DESC LIMIT 1",
            [run_id, run_id],
        )
        return bool(rows) and orjson.loads(rows[0][0]) == filters and bool(rows[0][1])

    def funnel(self, run_id: str) -> dict[str, Any]:
        """generated → parsed → each filter of the latest pass (in, kept, dropped, top reasons) → curated."""
        generated = int(self._scalar("SELECT count(*) FROM records WHERE run_id = ?", [run_id]))
        parsed = generated - len(self.parse_rejected(run_id))
        steps: list[dict[str, Any]] = []
        latest = self._rows(
            "SELECT pass_id, filters FROM filter_passes WHERE run_id = ? ORDER BY pass_id DESC LIMIT 1",
            [run_id],
        )
        if latest:
            pass_id, blob = latest[0]
            counts = {
                f: (int(n), int(k))
                for f, n, k in self._rows(
                    "SELECT filter, count(*), count(*) FILTER (WHERE keep) FROM verdicts "
                    "WHERE run_id = ? AND pass_id = ? GROUP BY filter",
                    [run_id, pass_id],
                )
            }
            reasons: dict[str, list[dict[str, Any]]] = {}
            for f, r, n in self._rows(
                "SELECT filter, reason, n FROM (SELECT filter, coalesce(reason, '') AS reason, count(*) AS n "
                "FROM verdicts WHERE run_id = ? AND pass_id = ? AND NOT keep GROUP BY 1, 2) "
                "QUALIFY row_number() OVER (PARTITION BY filter ORDER BY n DESC, reason) <= 3 ORDER BY 1, 3 DESC",
                [run_id, pass_id],
            ):
                reasons.setdefault(f, []).append({"reason": r, "records": int(n)})
            for spec in orjson.loads(blob):
                n_in, kept = counts.get(spec["filter"], (0, 0))
                steps.append({"filter": spec["filter"], "version": spec["version"], "in": n_in, "kept": kept,
                              "dropped": n_in - kept, "top_reasons": reasons.get(spec["filter"], [])})  # fmt: skip
        curated = int(
            self._scalar(
                "SELECT count(*) FROM records r WHERE r.run_id = ? AND r.id NOT IN "
                f"(SELECT record_id FROM verdicts WHERE {self._LIVE})",
                [run_id, run_id],
            )
        )
        return {"generated": generated, "parsed": parsed, "filters": steps, "curated": curated,
                "pass": latest[0][0] if latest else None}  # fmt: skip

    def latest_pass(self, run_id: str) -> dict[str, Any] | None:
        """The run's latest filter pass: its number, the filters applied ({filter, version, params}, in
        order) and when; None before any pass."""
        rows = self._rows(
            "SELECT pass_id, filters, created_at FROM filter_passes WHERE run_id = ? ORDER BY pass_id DESC LIMIT 1",
            [run_id],
        )
        if not rows:
            return None
        pass_id, blob, created = rows[0]
        return {"pass": int(pass_id), "filters": orjson.loads(blob),
                "created_at": created.isoformat() if created is not None else None}  # fmt: skip

    def pass_verdicts(self, run_id: str, filter_slug: str) -> list[dict[str, Any]]:
        """One filter's verdicts in the run's latest pass (record_id, keep, score, reason, detail JSON),
        by record id."""
        return self._dicts(
            "SELECT record_id, keep, score, reason, detail FROM verdicts WHERE run_id = ? AND filter = ? "
            "AND pass_id = (SELECT max(pass_id) FROM filter_passes WHERE run_id = ?) ORDER BY record_id",
            [run_id, filter_slug, run_id],
        )

    def earlier_texts(self, run_id: str) -> list[tuple[str, str]]:
        """(record id in its run, text) of the records of runs created before this one."""
        rows = self._rows(
            "SELECT r.run_id || '/' || r.id, r.text FROM records r JOIN runs o ON o.id = r.run_id "
            "WHERE o.created_at < (SELECT created_at FROM runs WHERE id = ?) ORDER BY o.created_at, r.id",
            [run_id],
        )
        return [(w, t or "") for w, t in rows]

    def why(self, record_id: str) -> dict[str, Any]:
        """A record and every verdict that bears on it now (its recipe's, and the latest pass's)."""
        found = self._dicts(
            "SELECT id, run_id, recipe, stage, seed_id, sample_index, text FROM records WHERE id = ? "
            "OR starts_with(id, ?) LIMIT 2",
            [record_id, record_id],
        )
        if len(found) != 1:
            what = "no record" if not found else "more than one record"
            raise StoreError(
                f"{what} with id {record_id!r} in {self.path}; ids are in exports and `factory status`"
            )
        rec = found[0]
        rec["verdicts"] = self._dicts(
            "SELECT filter, filter_version, keep, score, reason, detail, pass_id FROM verdicts "
            "WHERE record_id = ? AND (pass_id IS NULL OR pass_id = "
            "(SELECT max(pass_id) FROM filter_passes WHERE run_id = ?)) ORDER BY pass_id NULLS FIRST",
            [rec["id"], rec["run_id"]],
        )
        rec["curated"] = not any(not v["keep"] for v in rec["verdicts"])
        return rec
