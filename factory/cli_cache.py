"""`factory cache stats | ls | forget`: look into the request cache and forget rows so they are asked again."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from factory.errors import ConfigError, StoreError

SELECTOR_FLAGS = "--run, --teacher, --status, --error, --failed-only or --older-than"


def _human(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000  # type: ignore[assignment]
    return str(n)


def _open(args: argparse.Namespace, *, write: bool = False) -> Any:
    """The store of --store / --config / $FACTORY_STORE / the default (cache commands are store-wide: a
    config chooses the store only)."""
    from factory.locate import locate, missing_store_message
    from factory.store import Store

    loc = locate(store=args.store, config=args.config, run=None)
    if not loc.store.is_file():
        raise ConfigError(missing_store_message(loc))
    return Store(loc.store, read_only=not write)


def _selector(args: argparse.Namespace, st: Any) -> Any:
    from factory.store.cache_admin import Selector, check_selector, parse_age
    from factory.store.runs import resolve_run

    run_id = None
    if args.run is not None:
        found = resolve_run(st, args.run)
        if found.note:
            print(f"note: {found.note}", file=sys.stderr)
        run_id = found.id
    sel = Selector(
        run_id=run_id, teacher=args.teacher, status=args.status, error=args.error, failed=args.failed,
        older_than_s=parse_age(args.older_than) if args.older_than is not None else None,
    )  # fmt: skip
    check_selector(st, sel)
    return sel


def cmd_cache_stats(args: argparse.Namespace) -> int:
    from factory.cli_output import print_rows
    from factory.store.cache_admin import cache_stats

    with _open(args) as st:
        s = cache_stats(st)
    if args.json:
        print(json.dumps(s))
        return 0
    disk = s["file_bytes"] + s["wal_bytes"] + s["journal_bytes"]
    print(f"store {s['store']}: {_human(disk)} on disk (file {_human(s['file_bytes'])}, WAL "
          f"{_human(s['wal_bytes'])}, journal {_human(s['journal_bytes'])}); "
          f"{s['free_blocks']} of {s['used_blocks'] + s['free_blocks']} blocks free for reuse")  # fmt: skip
    print(f"cache: {s['rows']:,} rows, {_human(s['bytes'])} of request and answer text (before compression), "
          f"{s['failed']:,} not ok; oldest {s['oldest'] or '-'}, newest {s['newest'] or '-'}")  # fmt: skip
    for title, key in (("teacher", "by_teacher"), ("status", "by_status"), ("age", "by_age"),
                       ("run that stored it", "by_run")):  # fmt: skip
        if s[key]:
            print(f"by {title}:")
            print_rows(["  " + title, "rows", "bytes", "not ok"],
                        [["  " + (g["name"] or "-"), g["rows"], _human(g["bytes"]), g["failed"]] for g in s[key]])  # fmt: skip
    if s["forgotten"]:
        print(f"forgotten keys (their tokens still count in the cards and reports of runs that used them): "
              f"{s['forgotten']:,}")  # fmt: skip
    return 0


def cmd_cache_ls(args: argparse.Namespace) -> int:
    from factory.cli_output import print_rows
    from factory.store.cache_admin import cache_rows

    if args.limit < 0:
        raise ConfigError(f"--limit {args.limit}: give 0 (every row) or more")
    with _open(args) as st:
        rows = cache_rows(st, _selector(args, st), limit=args.limit or None)
    if args.json:
        print(json.dumps(rows))
        return 0
    if not rows:
        print("no cache rows match", file=sys.stderr)
        return 0
    print_rows(
        ["key", "teacher", "status", "run", "created", "bytes", "error"],
        [[r["key"][:16], r["teacher"], r["status"], r["run"] or "-", (r["created"] or "")[:19].replace("T", " "),
          r["bytes"], (r["error"] or "")[:60]] for r in rows],
    )  # fmt: skip
    if args.limit and len(rows) == args.limit:
        print(f"(first {args.limit} rows, newest first; --limit 0 lists them all)", file=sys.stderr)
    return 0


def _confirm(n: int) -> bool:
    sys.stderr.write(f"forget these {n:,} cache rows? [y/N] ")
    sys.stderr.flush()
    return sys.stdin.readline().strip().lower() in ("y", "yes")


def cmd_cache_forget(args: argparse.Namespace) -> int:
    from factory.store.cache_admin import count_selected, forget
    from factory.store.compact import compact

    if not (
        args.run or args.teacher or args.status or args.error or args.failed or args.older_than is not None
    ):
        raise ConfigError(
            f"cache forget: give at least one of {SELECTOR_FLAGS} (to forget every row: --older-than 0s)"
        )
    with _open(args) as st:
        sel = _selector(args, st)
        plan = count_selected(st, sel)
        where = st.path
        failed_seeds = 0
        if sel.run_id is not None and not sel.failed:
            failed_seeds = int(st._scalar("SELECT count(*) FROM failures WHERE run_id = ?", [sel.run_id]))
    if failed_seeds:
        # A failed seed's failure row names one request; its other rejected requests may be cached too.
        print(f"note: the run has {failed_seeds:,} failed seed{'s' if failed_seeds != 1 else ''}; each failure names one request, and a seed's "
              "other requests may be cached rejections that another run stored: --failed-only without --run "
              "(narrowed by --teacher T) selects every cached rejection", file=sys.stderr)  # fmt: skip
    out: dict[str, Any] = {"store": str(where), "dry_run": True, **plan}
    if not args.json:
        print(f"{plan['rows']:,} cache rows ({_human(plan['bytes'])} of text) match in {where}")
        for g in plan["groups"]:
            print(f"  {g['teacher']} {g['status']}: {g['rows']:,} rows, {_human(g['bytes'])}")
        if plan["used_by"]:
            runs = ", ".join(f"{u['run']} ({u['rows']:,})" for u in plan["used_by"][:10])
            more = len(plan["used_by"]) - 10
            print(f"records of these runs were made from them (they keep their text; a new run asks again): "
                  f"{runs}" + (f" and {more} more" if more > 0 else ""))  # fmt: skip
    go = plan["rows"] > 0 and (args.yes or (not args.json and sys.stdin.isatty() and _confirm(plan["rows"])))
    if go:
        with _open(args, write=True) as st:
            done = forget(st, sel)
            after, compacted = done.file_bytes_after, False
            if not args.no_compact:
                try:
                    after, compacted = compact(st)[1], True
                except StoreError as exc:
                    raise StoreError(
                        f"forgot {done.rows:,} cache rows, but {exc}; run `factory cache compact` to try again"
                    ) from None
        out.update(dry_run=False, rows=done.rows, bytes=done.bytes, file_bytes_before=done.file_bytes_before,
                   file_bytes_after=after, compacted=compacted, notes=done.notes)  # fmt: skip
    if args.json:
        print(json.dumps(out))
        return 0
    if not plan["rows"]:
        print("nothing to forget: nothing changed")
        return 0
    if not go:
        print("dry run: nothing changed; add --yes to forget them")
        return 0
    how = (
        "compacted"
        if out["compacted"]
        else "not compacted (--no-compact): its free blocks are reused by later writes"
    )
    print(f"forgot {out['rows']:,} cache rows ({_human(out['bytes'])} of text); records, verdicts and exports are "
          f"unchanged; the store file went from {_human(out['file_bytes_before'])} to "
          f"{_human(out['file_bytes_after'])}, {how}")  # fmt: skip
    for note in out["notes"]:
        print(f"note: {note}", file=sys.stderr)
    return 0


def cmd_cache_compact(args: argparse.Namespace) -> int:
    from factory.store.compact import compact

    with _open(args, write=True) as st:
        before, after = compact(st)
    if args.json:
        print(json.dumps({"store": str(st.path), "file_bytes_before": before, "file_bytes_after": after}))
    else:
        print(f"compacted {st.path}: {_human(before)} → {_human(after)}")
    return 0


def add_cache_parser(sub: Any) -> None:
    c = sub.add_parser(
        "cache", help="the request cache: stats, ls, forget (rows are then asked again), compact"
    )
    csub = c.add_subparsers(dest="cache_command", required=True, metavar="stats|ls|forget|compact")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--store", help="DuckDB store path")
        p.add_argument("--config", metavar="CONFIG.yaml", help="the run config whose store: to use")
        p.add_argument("--json", action="store_true", help="machine-readable output")

    def selectors(p: argparse.ArgumentParser, failed_flag: str) -> None:
        p.add_argument("--run", help="rows the run stored or used (its records' and failures' requests)")
        p.add_argument("--teacher", help="rows of this teacher name (as `factory cache stats` lists them)")
        p.add_argument("--status", help="rows of this status (ok, rejected)")
        p.add_argument(
            "--error", metavar="TEXT", help="rows whose stored error holds TEXT (any case), e.g. 401"
        )
        p.add_argument(
            failed_flag, dest="failed", action="store_true", help="only rows that are not ok answers"
        )
        p.add_argument("--older-than", metavar="AGE", help="rows stored more than AGE ago: 30d, 12h, 45m, 2w")

    st = csub.add_parser("stats", help="rows and bytes by teacher, status, age and run; the store's size")
    common(st)
    st.set_defaults(fn=cmd_cache_stats)
    ls = csub.add_parser("ls", help="list cache rows, newest first")
    common(ls)
    selectors(ls, "--failed")
    ls.add_argument("--limit", type=int, default=50, help="at most N rows (default 50; 0: all)")
    ls.set_defaults(fn=cmd_cache_ls)
    fg = csub.add_parser("forget", help="delete cache rows so they are asked again; a dry-run count first")
    common(fg)
    selectors(fg, "--failed-only")
    fg.add_argument("--no-compact", action="store_true",
                    help="skip rewriting the store afterwards (quicker on a large store; the file keeps its size)")  # fmt: skip
    fg.add_argument(
        "--yes", action="store_true", help="forget without asking (else: ask on a terminal, or a dry run)"
    )
    fg.set_defaults(fn=cmd_cache_forget)
    cp = csub.add_parser("compact", help="rewrite the store with its live data only (what forget does after)")
    common(cp)
    cp.set_defaults(fn=cmd_cache_compact)
