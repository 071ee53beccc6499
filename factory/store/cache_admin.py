"""Reading and forgetting request-cache rows: `factory cache stats | ls | forget`.

Forgetting deletes cache rows (the request and answer text) so the next run that needs those requests asks
the teacher again. It never touches records, verdicts, runs or exports: records hold their own text and
payload. Per forgotten key one small row is kept in ``cache_forgotten`` (teacher, status, sampling, tokens,
latency, error, run): the cards and reports of runs that used the answer count it as before. A key that is
answered again is read from the cache, its forgotten row no longer counts.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb

from factory.errors import ConfigError, StoreError

if TYPE_CHECKING:
    from factory.store import Store

log = logging.getLogger(__name__)

# Every answer a run can count: the cache, plus the forgotten rows whose key is not cached again. A constant
# SQL fragment (no values) for the store's reads of "the answers behind a run".
ANSWERS = (
    "(SELECT key, teacher, status, request, prompt_tokens, completion_tokens, latency_ms, error, run_id "
    "FROM cache UNION ALL SELECT f.key, f.teacher, f.status, f.request, f.prompt_tokens, f.completion_tokens, "
    "f.latency_ms, f.error, f.run_id FROM cache_forgotten f ANTI JOIN cache c2 ON c2.key = f.key)"
)
# The text a row holds, in bytes before compression (DuckDB compresses it on disk).
_BYTES = (
    "(strlen(c.key) + strlen(c.request) + coalesce(strlen(c.text), 0) + coalesce(strlen(c.reasoning), 0) "
    "+ coalesce(strlen(c.error), 0) + coalesce(octet_length(c.logprobs), 0))"
)
_AGE = (
    "CASE WHEN c.created_at >= now() - INTERVAL 1 DAY THEN '< 1 day' "
    "WHEN c.created_at >= now() - INTERVAL 7 DAY THEN '1-7 days' "
    "WHEN c.created_at >= now() - INTERVAL 30 DAY THEN '7-30 days' "
    "WHEN c.created_at >= now() - INTERVAL 90 DAY THEN '30-90 days' ELSE '> 90 days' END"
)
AGE_ORDER = ("< 1 day", "1-7 days", "7-30 days", "30-90 days", "> 90 days")


@dataclass(frozen=True, slots=True)
class Selector:
    """Which cache rows: all conditions given must hold. ``run_id``: the rows the run stored, its records
    name or its failures name (also those served to it from the cache). ``error``: rows whose stored error
    holds this text (any case). ``failed``: every row that is not an ``ok`` answer."""

    run_id: str | None = None
    teacher: str | None = None
    status: str | None = None
    error: str | None = None
    failed: bool = False
    older_than_s: float | None = None

    def empty(self) -> bool:
        return not (self.run_id or self.teacher or self.status or self.error or self.failed) and (
            self.older_than_s is None
        )

    def where(self) -> tuple[str, list[Any]]:
        conds: list[str] = []
        params: list[Any] = []
        if self.run_id is not None:
            conds.append(
                "(c.run_id = ? OR c.key IN (SELECT unnest(request_keys) FROM records WHERE run_id = ?) "
                "OR c.key IN (SELECT key FROM failures WHERE run_id = ?))"
            )
            params += [self.run_id] * 3
        if self.teacher is not None:
            conds.append("c.teacher = ?")
            params.append(self.teacher)
        if self.status is not None:
            conds.append("c.status = ?")
            params.append(self.status)
        if self.error is not None:
            conds.append("contains(lower(coalesce(c.error, '')), lower(?))")
            params.append(self.error)
        if self.failed:
            conds.append("c.status <> 'ok'")
        if self.older_than_s is not None:
            conds.append("c.created_at < now() - to_seconds(?)")
            params.append(float(self.older_than_s))
        return (" AND ".join(conds) or "TRUE"), params


def check_selector(store: Store, sel: Selector) -> None:
    """A teacher or status that no row has is a typo until shown otherwise: name what there is."""
    for what, value, sql, holder in (
        ("--teacher", sel.teacher, "SELECT DISTINCT teacher FROM cache ORDER BY 1", "no cache row has it"),
        ("--status", sel.status, "SELECT DISTINCT status FROM cache ORDER BY 1", "no cache row has it"),
    ):
        if value is None:
            continue
        known = [str(r[0]) for r in store._rows(sql)]
        if value not in known:
            raise ConfigError(
                f"{what} {value!r}: {holder} in {store.path}; there are: {', '.join(known) or 'none'}"
            )


def _files(path: Path) -> dict[str, int]:
    """Bytes on disk: the store file, its WAL, and the journal of answers not yet committed."""
    wal = Path(str(path) + ".wal")
    journal = Path(str(path) + ".journal")
    jbytes = 0
    if journal.is_dir():
        with contextlib.suppress(OSError):
            jbytes = sum(p.stat().st_size for p in journal.iterdir() if p.is_file())
    return {
        "file_bytes": path.stat().st_size if path.exists() else 0,
        "wal_bytes": wal.stat().st_size if wal.exists() else 0,
        "journal_bytes": jbytes,
    }


def cache_stats(store: Store) -> dict[str, Any]:
    """Rows and text bytes of the cache, by teacher, status, age and run; and the store's size on disk."""

    def groups(col: str, order: str = "2 DESC, 1") -> list[dict[str, Any]]:
        return store._dicts(
            f"SELECT {col} AS name, count(*) AS rows, coalesce(sum({_BYTES}), 0) AS bytes, "
            "count(*) FILTER (WHERE c.status <> 'ok') AS failed FROM cache c GROUP BY 1 "
            f"ORDER BY {order}"
        )

    total = store._dicts(
        f"SELECT count(*) AS rows, coalesce(sum({_BYTES}), 0) AS bytes, "
        "count(*) FILTER (WHERE c.status <> 'ok') AS failed, min(c.created_at) AS oldest, "
        "max(c.created_at) AS newest FROM cache c"
    )[0]
    by_age = {g["name"]: g for g in groups(_AGE)}
    size = store._dicts("PRAGMA database_size")[0]
    out: dict[str, Any] = {
        "store": str(store.path),
        **_files(store.path),
        "block_size": int(size["block_size"]),
        "used_blocks": int(size["used_blocks"]),
        "free_blocks": int(size["free_blocks"]),
        "rows": int(total["rows"]),
        "bytes": int(total["bytes"]),
        "failed": int(total["failed"]),
        "oldest": total["oldest"].isoformat() if total["oldest"] is not None else None,
        "newest": total["newest"].isoformat() if total["newest"] is not None else None,
        "by_teacher": groups("c.teacher"),
        "by_status": groups("c.status"),
        "by_age": [by_age[a] for a in AGE_ORDER if a in by_age],
        "by_run": groups("coalesce(c.run_id, '')", "2 DESC, 1 LIMIT 20"),
        "forgotten": int(store._rows("SELECT count(*) FROM cache_forgotten")[0][0]),
    }
    for g in (*out["by_teacher"], *out["by_status"], *out["by_age"], *out["by_run"]):
        for k in ("rows", "bytes", "failed"):
            g[k] = int(g[k])
    return out


def cache_rows(store: Store, sel: Selector, limit: int | None = 50) -> list[dict[str, Any]]:
    """The selected rows, newest first: key, teacher, status, run, created, text bytes, error (cut)."""
    where, params = sel.where()
    rows = store._dicts(
        f"SELECT c.key, c.teacher, c.status, c.run_id AS run, c.created_at AS created, {_BYTES} AS bytes, "
        "left(c.error, 200) AS error FROM cache c "
        f"WHERE {where} ORDER BY c.created_at DESC, c.key" + (" LIMIT ?" if limit is not None else ""),
        params + ([limit] if limit is not None else []),
    )
    for r in rows:
        r["created"] = r["created"].isoformat() if r["created"] is not None else None
        r["bytes"] = int(r["bytes"])
    return rows


def count_selected(store: Store, sel: Selector) -> dict[str, Any]:
    """Rows and text bytes the selector picks, by teacher and status, and the runs whose records were made
    from them (a dry run of ``forget``)."""
    where, params = sel.where()
    groups = store._dicts(
        f"SELECT c.teacher, c.status, count(*) AS rows, coalesce(sum({_BYTES}), 0) AS bytes FROM cache c "
        f"WHERE {where} GROUP BY ALL ORDER BY 3 DESC, 1, 2",
        params,
    )
    for g in groups:
        g["rows"], g["bytes"] = int(g["rows"]), int(g["bytes"])
    used_by = store._dicts(
        f"WITH s AS (SELECT c.key FROM cache c WHERE {where}), "
        "k AS (SELECT run_id, unnest(request_keys) AS key FROM records) "
        "SELECT k.run_id AS run, count(DISTINCT k.key) AS rows FROM k SEMI JOIN s ON s.key = k.key "
        "GROUP BY 1 ORDER BY 2 DESC, 1",
        params,
    ) if groups else []  # fmt: skip
    return {
        "rows": sum(g["rows"] for g in groups),
        "bytes": sum(g["bytes"] for g in groups),
        "groups": groups,
        "used_by": [{"run": u["run"], "rows": int(u["rows"])} for u in used_by],
    }


@dataclass(slots=True)
class Forgotten:
    rows: int
    bytes: int
    file_bytes_before: int
    file_bytes_after: int
    notes: list[str] = field(default_factory=list)


def forget(store: Store, sel: Selector) -> Forgotten:
    """Delete the selected cache rows in one transaction (keeping their small ``cache_forgotten`` rows),
    then checkpoint so the freed blocks are reused (the file is not rewritten)."""
    if store.read_only:
        raise StoreError(f"the store {store.path} is open read-only; forgetting needs it writable")
    if sel.empty():
        raise ConfigError(
            "forget: give a selector (--run, --teacher, --status, --error, --failed-only, --older-than)"
        )
    con = store.con
    where, params = sel.where()
    before = _files(store.path)
    try:
        con.execute("BEGIN TRANSACTION").fetchall()
        con.execute(
            f"CREATE TEMP TABLE _forget AS SELECT c.key, {_BYTES} AS bytes FROM cache c WHERE {where}", params
        )
        rows, nbytes = con.execute("SELECT count(*), coalesce(sum(bytes), 0) FROM _forget").fetchall()[0]
        con.execute(
            "INSERT INTO cache_forgotten (key, teacher, status, request, prompt_tokens, completion_tokens, "
            "latency_ms, error, run_id, created_at) "
            "SELECT c.key, c.teacher, c.status, CASE WHEN json_valid(c.request) "
            "THEN json_object('sampling', json_extract(c.request, '$.sampling')) END, c.prompt_tokens, "
            "c.completion_tokens, c.latency_ms, c.error, c.run_id, c.created_at "
            "FROM cache c SEMI JOIN _forget f ON f.key = c.key ON CONFLICT DO NOTHING"
        ).fetchall()
        con.execute("DELETE FROM cache WHERE key IN (SELECT key FROM _forget)").fetchall()
        con.execute("DROP TABLE _forget").fetchall()
        con.execute("COMMIT").fetchall()
    except duckdb.Error as exc:
        with contextlib.suppress(duckdb.Error):
            con.execute("ROLLBACK").fetchall()
        raise StoreError(f"cannot forget cache rows in {store.path}: {exc}; nothing was changed") from exc
    notes: list[str] = []
    try:
        con.execute("CHECKPOINT").fetchall()
    except duckdb.Error as exc:  # the delete is committed (in the WAL); the next writer checkpoints it
        notes.append(f"checkpoint deferred: {exc}")
    after = _files(store.path)
    log.info("forgot %d cache rows (%d bytes of text) in %s", rows, nbytes, store.path)
    return Forgotten(
        int(rows),
        int(nbytes),
        before["file_bytes"] + before["wal_bytes"],
        after["file_bytes"] + after["wal_bytes"],
        notes,
    )


def parse_age(text: str) -> float:
    """``90d``, ``12h``, ``30m``, ``45s`` or ``2w`` → seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    t = text.strip().lower()
    try:
        value = float(t[:-1]) if t and t[-1] in units else float("nan")
    except ValueError:
        value = float("nan")
    if not value >= 0:
        raise ConfigError(f"--older-than {text!r}: give a number and a unit, e.g. 30d, 12h, 45m, 2w")
    seconds = value * units[t[-1]]
    if seconds > 100 * 365 * 86400:
        raise ConfigError(f"--older-than {text!r}: at most 100 years (36500d)")
    return seconds
