"""Reads for `factory view`: a page of a run's records under filters, their facets, and one record whole.

A run is indexed once per connection in temporary tables (in memory: a read-only store stays untouched):
``_view_idx`` holds one narrow row per record (its position ``n`` in the store's stable order, its row id in
``records``, id, stage, label, curated or not), ``_view_drop`` one row per rejecting verdict that counts now,
and ``_view_verdict`` the row id of every verdict of each record. A page filters these narrow columns, takes
the top rows by position, and fetches just those rows from ``records`` by row id; one record's verdicts are
fetched the same way. A search scans the text once: a lower-cased copy kept in memory after the first
search (when the run's text fits ``SEARCH_COPY_CHARS``), else ``records.text`` on disk. Nothing is loaded into
Python beyond one page.
"""

from __future__ import annotations

import contextlib
import threading
from typing import TYPE_CHECKING, Any

import orjson

from factory.errors import ConfigError

if TYPE_CHECKING:
    from factory.store import Store

SNIPPET = 240  # characters of text per row in a page
TOP_REASONS = 25  # reasons listed per filter in the facets
TOP_LABELS = 40
SEARCH_COPY_CHARS = 400_000_000  # largest run text (characters) kept lower-cased in memory for search

_TABLES = (
    "CREATE TEMP TABLE IF NOT EXISTS _view_idx (run_id VARCHAR, n BIGINT, rid BIGINT, id VARCHAR, "
    "stage VARCHAR, label VARCHAR, kept BOOLEAN)",
    "CREATE TEMP TABLE IF NOT EXISTS _view_drop (run_id VARCHAR, n BIGINT, filter VARCHAR, reason VARCHAR)",
    "CREATE TEMP TABLE IF NOT EXISTS _view_verdict (run_id VARCHAR, record_id VARCHAR, vrid BIGINT)",
    "CREATE TEMP TABLE IF NOT EXISTS _view_text (run_id VARCHAR, rid BIGINT, t VARCHAR)",
)


def _equal(where: list[str], params: list[Any], *columns: tuple[str, str | None]) -> None:
    """Add ``column = ?`` and its value for each (column, value) whose value is given."""
    for column, value in columns:
        if value is not None:
            where.append(f"{column} = ?")
            params.append(value)


class Browser:
    """Paged, filtered reads of one store's runs. Use it from one thread at a time."""

    def __init__(self, store: Store, label_fields: dict[str, tuple[str, ...]]):
        self.store = store
        self.label_fields = label_fields  # recipe slug -> payload fields holding a label, first present wins
        self._indexed: set[str] = set()
        self._text_copied: set[str] = set()
        self._facets: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        for sql in _TABLES:
            store._rows(sql)

    def runs(self) -> list[dict[str, Any]]:
        rows = self.store._dicts(
            "SELECT r.id, r.name, r.recipe, r.teacher, r.status, r.created_at, r.updated_at, "
            "coalesce(c.n, 0) AS records FROM runs r "
            "LEFT JOIN (SELECT run_id, count(*) AS n FROM records GROUP BY run_id) c ON c.run_id = r.id "
            "ORDER BY r.updated_at DESC"
        )
        for r in rows:
            for k in ("created_at", "updated_at"):
                r[k] = r[k].isoformat() if r[k] is not None else None
        return rows

    # -- indexing ----------------------------------------------------------------------------------
    def index(self, run_id: str) -> None:
        """Build the run's rows in the temporary tables (once per connection)."""
        with self._lock:
            if run_id in self._indexed:
                return
            st = self.store
            recipe = st._scalar("SELECT recipe FROM runs WHERE id = ?", [run_id])
            if recipe is None:
                raise ConfigError(f"no run {run_id!r} in {st.path}")
            fields = self.label_fields.get(str(recipe), ())
            label = (
                "coalesce(" + ", ".join("json_extract_string(r.payload, ?)" for _ in fields) + ")"
                if fields
                else "CAST(NULL AS VARCHAR)"
            )
            live = st._LIVE
            for table in ("_view_idx", "_view_drop", "_view_verdict"):  # another Browser on this connection
                st._rows(f"DELETE FROM {table} WHERE run_id = ?", [run_id])
            st._rows(
                f"INSERT INTO _view_idx WITH d AS (SELECT DISTINCT record_id FROM verdicts WHERE {live}) "
                "SELECT r.run_id, row_number() OVER (ORDER BY r.seed_id, r.stage, r.sample_index, r.id) - 1 AS n, "
                f"r.rowid, r.id, r.stage, {label}, d.record_id IS NULL "
                "FROM records r LEFT JOIN d ON d.record_id = r.id WHERE r.run_id = ? ORDER BY n",
                [run_id, *(f'$."{f}"' for f in fields), run_id],
            )
            st._rows(
                "INSERT INTO _view_drop SELECT v.run_id, i.n, v.filter, coalesce(v.reason, '') "
                f"FROM (SELECT * FROM verdicts WHERE {live}) v "
                "JOIN _view_idx i ON i.run_id = v.run_id AND i.id = v.record_id",
                [run_id],
            )
            st._rows(
                "INSERT INTO _view_verdict SELECT run_id, record_id, rowid FROM verdicts WHERE run_id = ?",
                [run_id],
            )
            self._indexed.add(run_id)

    def _search_source(self, run_id: str) -> tuple[str, list[Any]]:
        """The subquery of row ids whose text contains a lower-cased needle (one ``?`` left to bind)."""
        st = self.store
        if run_id not in self._text_copied:
            chars = st._scalar(
                "SELECT coalesce(sum(length(text)), 0) FROM records WHERE run_id = ?", [run_id]
            )
            if int(chars) <= SEARCH_COPY_CHARS:
                st._rows("DELETE FROM _view_text WHERE run_id = ?", [run_id])
                st._rows(
                    "INSERT INTO _view_text SELECT run_id, rowid, lower(text) FROM records WHERE run_id = ?",
                    [run_id],
                )
                self._text_copied.add(run_id)
        if run_id in self._text_copied:
            return "SELECT rid FROM _view_text WHERE run_id = ? AND contains(t, ?)", [run_id]
        return "SELECT rowid FROM records WHERE run_id = ? AND contains(lower(text), ?)", [run_id]

    # -- facets ------------------------------------------------------------------------------------
    def facets(self, run_id: str) -> dict[str, Any]:
        """Counts to filter by: curated/rejected, each filter with its top reasons, labels, stages."""
        if run_id in self._facets:
            return self._facets[run_id]
        self.index(run_id)
        st = self.store
        total, kept = st._rows(
            "SELECT count(*), count(*) FILTER (WHERE kept) FROM _view_idx WHERE run_id = ?", [run_id]
        )[0]
        order = {f["filter"]: i for i, f in enumerate((st.latest_pass(run_id) or {}).get("filters", []))}
        by_filter: dict[str, dict[str, Any]] = {}
        for flt, records in st._rows(
            "SELECT filter, count(DISTINCT n) FROM _view_drop WHERE run_id = ? GROUP BY filter", [run_id]
        ):
            by_filter[flt] = {"filter": flt, "records": int(records), "reasons": [], "more": 0}
        for flt, reason, records, kinds in st._rows(
            "SELECT filter, reason, n, kinds FROM (SELECT filter, reason, count(*) AS n, "
            "row_number() OVER (PARTITION BY filter ORDER BY count(*) DESC, reason) AS rk, "
            "count(*) OVER (PARTITION BY filter) AS kinds FROM _view_drop WHERE run_id = ? "
            "GROUP BY filter, reason) WHERE rk <= ? ORDER BY filter, rk",
            [run_id, TOP_REASONS],
        ):
            f = by_filter[flt]
            f["reasons"].append({"reason": reason, "records": int(records)})
            f["more"] = int(kinds) - len(f["reasons"])
        filters = sorted(by_filter.values(), key=lambda f: (order.get(f["filter"], -1), f["filter"]))
        labels = [
            {"label": lab, "records": int(n), "kept": int(k)}
            for lab, n, k in st._rows(
                "SELECT label, count(*), count(*) FILTER (WHERE kept) FROM _view_idx WHERE run_id = ? "
                "AND label IS NOT NULL GROUP BY label ORDER BY 2 DESC, 1 LIMIT ?",
                [run_id, TOP_LABELS],
            )
        ]
        stages = [
            {"stage": s, "records": int(n)}
            for s, n in st._rows(
                "SELECT stage, count(*) FROM _view_idx WHERE run_id = ? GROUP BY stage ORDER BY stage",
                [run_id],
            )
        ]
        out = {"run_id": run_id, "records": int(total), "kept": int(kept), "rejected": int(total - kept),
               "filters": filters, "labels": labels, "stages": stages}  # fmt: skip
        self._facets[run_id] = out
        return out

    # -- pages -------------------------------------------------------------------------------------
    def page(
        self, run_id: str, *, status: str = "all", filter: str | None = None, reason: str | None = None,
        label: str | None = None, stage: str | None = None, q: str | None = None, offset: int = 0,
        limit: int = 50,
    ) -> dict[str, Any]:  # fmt: skip
        """One page of records in the store's order, with the total that match."""
        self.index(run_id)
        where, params = ["i.run_id = ?"], [run_id]
        if status == "kept":
            where.append("i.kept")
        elif status == "rejected":
            where.append("NOT i.kept")
        elif status != "all":
            raise ConfigError(f"status must be all, kept or rejected, not {status!r}")
        _equal(where, params, ("i.label", label), ("i.stage", stage))
        if filter is not None or reason is not None:
            sub, sub_params = ["run_id = ?"], [run_id]
            _equal(sub, sub_params, ("filter", filter), ("reason", reason))
            where.append(f"i.n IN (SELECT n FROM _view_drop WHERE {' AND '.join(sub)})")
            params += sub_params
        if q:
            source, source_params = self._search_source(run_id)
            where.append(f"(i.rid IN ({source}) OR starts_with(i.id, ?))")
            params += [*source_params, q.lower(), q]
        cond = " AND ".join(where)
        st = self.store
        cols = "i.n, i.rid, i.id, i.stage, i.label, i.kept"
        if q:  # the search scans the text: count and page in one pass
            found = st._rows(
                f"SELECT {cols}, count(*) OVER () FROM _view_idx i WHERE {cond} ORDER BY i.n LIMIT ? OFFSET ?",
                [*params, limit, offset],
            )
            total = int(found[0][6]) if found else None
        elif len(where) == 1:  # every record: positions are dense, so the page starts at n = offset
            found = st._rows(
                f"SELECT {cols} FROM _view_idx i WHERE {cond} AND i.n >= ? ORDER BY i.n LIMIT ?",
                [*params, offset, limit],
            )
            total = None
        else:
            found = st._rows(
                f"SELECT {cols} FROM _view_idx i WHERE {cond} ORDER BY i.n LIMIT ? OFFSET ?",
                [*params, limit, offset],
            )
            total = None
        if total is None:  # no search, or a search page past its end
            total = (
                0
                if q and offset == 0
                else int(st._scalar(f"SELECT count(*) FROM _view_idx i WHERE {cond}", params))
            )
        rows = [{"n": int(r[0]), "rid": int(r[1]), "id": r[2], "stage": r[3], "label": r[4], "kept": bool(r[5])}
                for r in found]  # fmt: skip
        if rows:
            texts = {
                int(rid): (sd, si, tx, ln)
                for rid, sd, si, tx, ln in st._rows(
                    "SELECT rowid, seed_id, sample_index, left(text, ?), length(text) FROM records "
                    "WHERE rowid IN (SELECT unnest(?::BIGINT[]))",
                    [SNIPPET, [r["rid"] for r in rows]],
                )
            }
            reasons: dict[int, list[dict[str, str]]] = {}
            for n, flt, why in st._rows(
                "SELECT n, filter, reason FROM _view_drop WHERE run_id = ? AND n IN (SELECT unnest(?::BIGINT[])) "
                "ORDER BY n, filter",
                [run_id, [r["n"] for r in rows]],
            ):
                reasons.setdefault(int(n), []).append({"filter": flt, "reason": why})
            for r in rows:
                sd, si, tx, ln = texts.get(r.pop("rid"), (None, None, None, None))
                r.update(seed_id=sd, sample_index=si, text=tx, chars=ln, dropped_by=reasons.get(r["n"], []))
        return {"total": total, "offset": offset, "limit": limit, "rows": rows}

    # -- one record --------------------------------------------------------------------------------
    def record(self, run_id: str, record_id: str) -> dict[str, Any]:
        """A record whole: fields, payload, lineage, the answers behind it (prompt and raw completion), its
        parents and children, and every verdict it ever got (``live``: counts in the curated view now)."""
        self.index(run_id)
        st = self.store
        at = st._rows("SELECT rid FROM _view_idx WHERE run_id = ? AND id = ?", [run_id, record_id])
        if not at:
            raise ConfigError(f"no record {record_id!r} in run {run_id!r}")
        rid = at[0][0]
        rec = st._dicts(
            "SELECT id, run_id, recipe, stage, seed_id, sample_index, text, payload, parent_ids, request_keys, "
            "teacher, template_version, created_at FROM records WHERE rowid = ?",
            [rid],
        )[0]
        rec["created_at"] = rec["created_at"].isoformat() if rec["created_at"] is not None else None
        with contextlib.suppress(orjson.JSONDecodeError):  # else shown as stored
            rec["payload"] = orjson.loads(rec["payload"])
        rec["answers"] = self._answers(list(rec["request_keys"] or []))
        rec["verdicts"] = self._verdicts(run_id, record_id)
        rec["curated"] = not any(v["live"] and not v["keep"] for v in rec["verdicts"])
        rec["parents"] = self._brief(run_id, list(rec["parent_ids"] or []))
        rec["children"] = []
        if len(self.facets(run_id)["stages"]) > 1:  # only a multi-stage run has records made from others
            kids = st._rows(
                "SELECT id FROM records WHERE run_id = ? AND list_contains(parent_ids, ?) ORDER BY id LIMIT 50",
                [run_id, record_id],
            )
            rec["children"] = self._brief(run_id, [k for (k,) in kids])
        return rec

    def _answers(self, keys: list[str]) -> list[dict[str, Any]]:
        found = self.store._dicts(
            "SELECT key, teacher, status, request, text, finish_reason, prompt_tokens, completion_tokens, "
            "latency_ms, error, reasoning FROM cache WHERE key IN (SELECT unnest(?::VARCHAR[]))",
            [keys],
        )
        by_key = {a["key"]: a for a in found}
        gone = [k for k in keys if k not in by_key]
        forgotten = {r[0] for r in self.store._rows(
            "SELECT key FROM cache_forgotten WHERE key IN (SELECT unnest(?::VARCHAR[]))", [gone]
        )} if gone else set()  # fmt: skip
        out: list[dict[str, Any]] = []
        for k in keys:
            a = by_key.get(k)
            if a is None:
                out.append({"key": k, "missing": True, "forgotten": k in forgotten})
                continue
            try:
                req = orjson.loads(a.pop("request"))
            except orjson.JSONDecodeError:
                req = {}
            a.update(
                messages=req.get("messages", []), sampling=req.get("sampling", {}), sample=req.get("sample")
            )
            out.append(a)
        return out

    def _verdicts(self, run_id: str, record_id: str) -> list[dict[str, Any]]:
        """Every verdict of a record: its recipe's first, then the latest pass first, each pass in its filter
        order."""
        st = self.store
        vrids = [
            int(v)
            for (v,) in st._rows(
                "SELECT vrid FROM _view_verdict WHERE run_id = ? AND record_id = ?", [run_id, record_id]
            )
        ]
        found = st._dicts(
            "SELECT filter, filter_version, keep, score, reason, detail, pass_id FROM verdicts "
            "WHERE rowid IN (SELECT unnest(?::BIGINT[]))",
            [vrids],
        )
        orders = {
            int(pid): {f["filter"]: i for i, f in enumerate(orjson.loads(blob))}
            for pid, blob in st._rows("SELECT pass_id, filters FROM filter_passes WHERE run_id = ?", [run_id])
        }
        latest = max(orders, default=None)
        for v in found:
            v["live"] = v["pass_id"] is None or v["pass_id"] == latest
            if v["detail"]:
                with contextlib.suppress(orjson.JSONDecodeError):
                    v["detail"] = orjson.loads(v["detail"])
        found.sort(
            key=lambda v: (v["pass_id"] is not None, -(v["pass_id"] or 0),
                           orders.get(v["pass_id"] or 0, {}).get(v["filter"], 99), v["filter"])
        )  # fmt: skip
        return found

    def _brief(self, run_id: str, ids: list[str]) -> list[dict[str, Any]]:
        if not ids:
            return []
        rids = [
            int(r)
            for (r,) in self.store._rows(
                "SELECT rid FROM _view_idx WHERE run_id = ? AND id IN (SELECT unnest(?::VARCHAR[]))",
                [run_id, ids],
            )
        ]
        return self.store._dicts(
            "SELECT id, stage, left(text, 120) AS text FROM records WHERE rowid IN (SELECT unnest(?::BIGINT[])) "
            "ORDER BY id",
            [rids],
        )
