"""The `factory` command. Each command parses, calls one library function, and renders.

One error boundary (``main``) turns a FactoryError into its message and exit code.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from factory import __version__
from factory.cli_output import print_funnel, print_rows
from factory.errors import ConfigError, FactoryError
from factory.pricing import usd

EXIT_INTERRUPTED = 130
EXIT_CLOSED_PIPE = 141  # 128 + SIGPIPE, as a shell reports a command whose reader went away


def _console() -> Any:
    from rich.console import Console

    return Console(stderr=True)


def _fmt_s(s: float | None) -> str:
    if s is None:
        return "?"
    s = int(s)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


class _BarView:
    """A rich progress display on stderr with one text column of details; plain lines when not a TTY."""

    def __init__(self) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        self.console = _console()
        self.live = self.console.is_terminal
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
            console=self.console, disable=not self.live, refresh_per_second=4,
        )  # fmt: skip

    def __enter__(self) -> Any:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.__exit__(*exc)


def _spent(p: Any) -> str:
    """Dollars of the progress line: spent so far (an estimate), and what the cache saved."""
    spent = getattr(p, "cost_usd", 0.0)
    out = f"≈{usd(spent)} spent" + (
        "" if getattr(p, "cost_known", True) else " (+ answers of no known price)"
    )
    saved = getattr(p, "saved_usd", 0.0)
    return out + (f", {usd(saved)} saved by the cache" if saved else "")


TOKEN_RATE_WINDOW_S = 10.0  # the output tokens/s shown is over this many seconds of reports


class ProgressView(_BarView):
    """A progress bar with rate, tokens, cache hits, failures (and the latest reason) and ETA; while the run
    drains, how many requests are still awaited (a plain line when not a TTY). For a teacher that shows its
    tokens as they are generated (a local engine, whose seeds mostly finish together at the end), the
    requests answered and in flight, the output tokens so far and per second, and an ETA from that rate."""

    def __init__(self, total: int, done: int, label: str, drain_s: float = 30.0):
        super().__init__()
        self.task = self.progress.add_task(label, total=total, completed=done, info="")
        self._last_line = 0.0
        self._last_said = ""
        self.drain_s = drain_s
        self._tokens: deque[tuple[float, int]] = deque()  # (elapsed_s, output tokens) of recent reports

    def token_rate(self, p: Any) -> float:
        """Output tokens per second over the last TOKEN_RATE_WINDOW_S seconds of reports."""
        now, out = p.elapsed_s, p.output_tokens
        self._tokens.append((now, out))
        while len(self._tokens) > 2 and now - self._tokens[1][0] >= TOKEN_RATE_WINDOW_S:
            self._tokens.popleft()
        t0, out0 = self._tokens[0]
        if now - t0 <= 0:
            return out / now if now > 0 else 0.0
        return max(0.0, (out - out0) / (now - t0))

    def update(self, p: Any) -> None:
        info = self.info(p)
        last = getattr(p, "last_failure", None)
        if self.live:
            self.progress.update(self.task, completed=p.seeds_done + p.seeds_failed, info=info)
            return
        # Plain lines: every 10 s, and at once when the run starts to drain, a new failure reason shows, a
        # batch's state changes or a local engine's first output tokens come (its engine may take minutes
        # to start).
        generating = getattr(p, "streaming", False) and p.output_tokens > 0
        waiting = getattr(p, "waiting_on", None)
        state = " ".join(
            w for w in (waiting or "").split() if "/" not in w
        )  # a batch's state, not its counts
        said = f"{getattr(p, 'draining', False)}|{last}|{generating}|{state}"
        if p.elapsed_s - self._last_line >= 10 or said != self._last_said:
            self._last_line, self._last_said = p.elapsed_s, said
            print(
                f"[{_fmt_s(p.elapsed_s)}] seeds {p.seeds_done}/{p.seeds_total} · {info}",
                file=sys.stderr,
                flush=True,
            )

    def info(self, p: Any) -> str:
        """The details column: what the run is doing now."""
        rate = p.requests_sent / p.elapsed_s if p.elapsed_s > 0 else 0.0
        fails = sum(p.failures.values())
        if getattr(p, "draining", False):
            info = (
                f"draining: waiting for {p.awaiting} requests in flight (up to {self.drain_s:g}s; "
                "Ctrl+C again abandons them) · "
                f"{p.requests_sent} sent · {p.completion_tokens} out tok"
            )
        elif getattr(p, "streaming", False):
            info = (
                f"{p.answered} answered · {p.in_flight} in flight · {p.output_tokens} out tok · "
                f"{self.token_rate(p):.1f} tok/s · {p.cache_hits} cached · {fails} failed attempts · "
                f"ETA {_fmt_s(p.eta_s)}"
            )
        else:
            info = (
                f"{rate:.1f} req/s · {p.requests_sent} sent · {p.cache_hits} cached · {p.in_flight} pending · "
                f"{p.completion_tokens} out tok · {_spent(p)} · {fails} failed attempts · ETA {_fmt_s(p.eta_s)}"
            )
            if getattr(p, "pacing", None):
                info += f" · {p.pacing}"
        waiting = getattr(p, "waiting_on", None)
        if waiting and not getattr(p, "draining", False):
            info = (
                f"{waiting} · {p.requests_sent} answered · {p.cache_hits} cached · {_spent(p)} · "
                f"{fails} failed attempts"
            )
        last = getattr(p, "last_failure", None)
        if fails and last:
            info += f" · last failure: {last}"
        return info


# -- commands ----------------------------------------------------------------------------------------
def cmd_run(args: argparse.Namespace) -> int:
    from factory import api

    prep = api.prepare(args.config, store=args.store)
    if args.executor:
        prep.config.executor.kind = args.executor
    if args.address:
        if prep.config.executor.kind != "ray":
            raise ConfigError("--address: give --executor ray too (or executor: {kind: ray} in the config)")
        prep.config.executor.address = args.address
    where = api.endpoints(prep)
    if args.dry_run:
        rep = api.dry_run(prep)
        if args.json:
            print(json.dumps({**rep.as_dict(), "endpoints": where}, indent=2))
            return 0
        for line in where:
            print(line)
        print(f"run {rep.run_id}: {rep.seeds} seeds ({rep.seeds_done} already done)")
        print(f"requests: {rep.requests} ({rep.cached} already cached)")
        print(f"prompt tokens: {rep.prompt_tokens_est} ({rep.prompt_tokens_how})")
        print(f"output tokens: at most {rep.max_output_tokens} (max_tokens of every request)")
        if rep.output_tokens_expected is not None:
            print(
                f"  about {rep.output_tokens_expected} for the requests not cached, at the median "
                f"({rep.output_tokens_median:g}) of this recipe's earlier answers in the store"
            )
        if rep.cost_usd_max is not None:
            line = f"cost of the requests not cached: at most {usd(rep.cost_usd_max)}"
            if rep.cost_usd_expected is not None:
                line += f", about {usd(rep.cost_usd_expected)} at the median output of earlier answers"
            print(line)
            print(f"  {rep.cost_basis}")
        if rep.example_prompt:
            print("first prompt:")
            for m in rep.example_prompt:
                print(f"  [{m['role']}] " + m["content"].replace("\n", "\n    "))
        for n in rep.notes:
            print(f"note: {n}")
        return 0

    def named() -> None:  # before the first request: a forgotten @URL shows now, not after the failures
        for line in where:
            print(line, file=sys.stderr, flush=True)

    view = ProgressView(len(prep.seeds), 0, prep.config.name, prep.config.runner.drain_s)
    with view:
        result = api.run_sync(
            api.run_async(
                prep,
                on_progress=view.update,
                handle_signals=True,
                retry_failed=args.retry_failed,
                on_start=named,
            )
        )
    p = result.progress
    summary = {
        "run_id": result.run_id, "status": result.status, "store": str(prep.store_path), "seeds_done": p.seeds_done,
        "seeds_failed": p.seeds_failed, "records_added": p.records, "requests_sent": p.requests_sent,
        "cache_hits": p.cache_hits, "completion_tokens": p.completion_tokens, "elapsed_s": round(p.elapsed_s, 2),
        "abandoned": p.abandoned, "cost_usd": round(p.cost_usd, 9), "saved_usd": round(p.saved_usd, 9),
    }  # fmt: skip
    if result.curation is not None:
        summary["curated"] = result.curation.funnel["curated"]
    if args.json:
        print(json.dumps(summary))
    else:
        for k, v in summary.items():
            print(f"{k:>18}: {v}")
        if result.curation is not None:
            print_funnel(result.curation.funnel)
    if result.error:
        print(f"error: {result.error}", file=sys.stderr)
        return result.exit_code or 3
    if result.status == "interrupted":
        if p.abandoned:
            print(f"interrupted: {p.abandoned} requests in flight were abandoned; re-run the same command to "
                  "resume: they are sent (and paid for) again, everything answered is kept", file=sys.stderr)  # fmt: skip
        else:
            print(
                "interrupted: re-run the same command to resume; nothing answered was lost", file=sys.stderr
            )
        return EXIT_INTERRUPTED
    if result.status == "budget":
        why = f" ({p.budget})" if p.budget else ""
        print(
            f"stopped at the budget{why}; {usd(p.cost_usd)} spent in this invocation (an estimate at the "
            "teachers' prices): raise budget.* in the config and re-run to continue",
            file=sys.stderr,
        )
        return 4
    if result.status == "incomplete":
        local = any(not tc.spec.strip().startswith("openai:") for tc in prep.config.roles().values())
        again = (
            "; add --retry-failed to also ask again the cached rejections"
            if local and not args.retry_failed
            else ""
        )
        print(
            f"{p.seeds_failed} seeds failed (see `factory status`); re-run to retry them{again}",
            file=sys.stderr,
        )
        return 1
    return 0


def _store_for(args: argparse.Namespace, *, write: bool = False, run_attr: str = "run") -> Any:
    """The store a command reads (``--store``, else ``--config``'s store:, else $FACTORY_STORE, else the
    default), opened; ``args.<run_attr>`` becomes the RUN to resolve (a config's name when none is given)."""
    from factory.locate import locate, missing_store_message
    from factory.store import Store

    loc = locate(store=args.store, config=getattr(args, "config", None), run=getattr(args, run_attr, None))
    if not loc.store.exists():
        raise ConfigError(missing_store_message(loc))
    if hasattr(args, run_attr):
        setattr(args, run_attr, loc.run)
    args.config_path = loc.config
    return Store(loc.store, read_only=not write)


def _resolve(st: Any, run: str | None) -> str:
    """The run id RUN names; a note on stderr when another run could have been meant."""
    from factory.store.runs import resolve_run

    found = resolve_run(st, run)
    if found.note:
        print(f"note: {found.note}", file=sys.stderr)
    return found.id


def _live_status(args: argparse.Namespace, exc: Exception) -> int:
    """`factory status` of a run in progress in another process (it holds the store): its live file."""
    from factory.live import read_live
    from factory.locate import locate

    loc = locate(store=args.store, config=getattr(args, "config", None), run=args.run)
    doc = read_live(loc.store)
    run = loc.run
    if doc is None or (run and run != doc["run_id"] and not str(doc["run_id"]).startswith(f"{run}-")):
        raise exc
    doc.pop("pid", None)
    as_of = time.time() - float(doc.pop("at"))
    doc = {"run_id": doc.pop("run_id"), "status": "running (in another process; the store is in use)",
           "as_of_s_ago": round(as_of, 1), **doc}  # fmt: skip
    if args.json:
        print(json.dumps(doc))
        return 0
    spent = usd(doc.pop("cost_usd")) + ("" if doc.pop("cost_known") else " (+ answers of no known price)")
    doc["spent"] = (
        f"≈{spent} so far (an estimate at the teachers' prices); {usd(doc.pop('saved_usd'))} saved by the cache"
    )
    if doc.get("pacing") is None:
        doc.pop("pacing", None)
    width = max(len(k) for k in doc)
    for k, v in doc.items():
        print(f"{k:>{width}}: {v}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from factory.errors import StoreInUse
    from factory.locate import is_config_path

    list_all = args.all and (args.run is None or args.config is not None or is_config_path(args.run))
    try:
        opened = _store_for(args)
    except StoreInUse as exc:
        if list_all:
            raise
        return _live_status(args, exc)
    with opened as st:
        if list_all:
            runs = st.runs()
            if args.json:
                print(
                    json.dumps(
                        [
                            {**r, "created_at": str(r["created_at"]), "updated_at": str(r["updated_at"])}
                            for r in runs
                        ]
                    )
                )
            else:
                for r in runs:
                    print(f"{r['id']:<40} {r['recipe']:<14} {r['status']:<12} {r['teacher']}")
            return 0
        run_id = _resolve(st, args.run)
        s = st.run_summary(run_id)
        drops = st.verdict_counts(run_id)
        s["funnel"] = st.funnel(run_id)
        from factory.costs import run_cost

        cost = run_cost(st, run_id, s, s["funnel"])
        for k in ("cost_usd", "saved_usd", "unpriced"):
            s.pop(k, None)
        pacing = s.pop("pacing", None) if s["status"] == "running" else None  # held by pacing now
        s.pop("pacing", None)
        s["batches"] = st.batches_of(run_id)
        if args.diversity:
            s["diversity"] = _diversity(st.curated_table(run_id))
    s["dropped"] = [{"filter": f, "reason": r, "records": n} for f, r, n in drops]
    s["cost"] = cost.as_dict()
    s["pacing"] = pacing
    if args.json:
        print(json.dumps(s, default=str))
        return 0
    funnel = s.pop("funnel")
    reasons = s.pop("failure_reasons")
    s["cost"] = cost.sentence()
    if pacing is None:
        del s["pacing"]
    else:  # a run whose process died (a live one holds the store): what held it when it last wrote
        s["pacing"] = f"{pacing} (as last journaled)"
    batches = s.pop("batches")
    width = max(len(k) for k in s)
    for k, v in s.items():
        print(f"{k:>{width}}: {v}")
    print_funnel(funnel)
    if batches:
        print_batches(batches)
    if reasons:
        print("failure reasons (failed attempts, retries included; seeds that finally failed):")
        for r in reasons:
            print(f"  {r['kind']}: {r['attempts']} attempts, {r['seeds']} seeds; e.g. {r['example']}")
    return 0


def print_batches(batches: list[dict[str, Any]]) -> None:
    """The run's provider batches: state, request counts, ETA of the ones running."""
    states: dict[str, int] = {}
    for b in batches:
        states[b["state"]] = states.get(b["state"], 0) + 1
    print("batches: " + ", ".join(f"{n} {st}" for st, n in states.items()))
    for b in batches:
        where = b["provider_status"] or b["state"]
        done = (b["completed"] or 0) + (b["failed"] or 0)
        counts = f"{done}/{b['total'] or b['requests']} run ({b['failed'] or 0} failed)"
        tail = f" · ETA {_fmt_s(b['eta_s'])}" if b["eta_s"] is not None else ""
        if b["state"] == "settled":
            tail = f" · {b['answered']} answered, {b['retried']} left for a later batch"
        if b["error"]:
            tail += f" · {b['error']}"
        print(
            f"  {b['batch_id'] or b['id']}: {b['state']} ({where}) · {b['requests']} requests · {counts}{tail}"
        )


def _diversity(curated: Any) -> dict[str, Any]:
    """Diversity of the curated set: distinct-1/2, mean pairwise cosine (MiniLM), records per label."""
    from factory.embeddings import encode
    from filters.diversity import diversity_report

    texts = [t or "" for t in curated.column("text").to_pylist()]
    payloads = [json.loads(p) for p in curated.column("payload").to_pylist()]
    labels = [p.get("label") for p in payloads]
    has_labels = any(label is not None for label in labels)
    return diversity_report(texts, encode(texts) if texts else None, labels if has_labels else None)


def cmd_filter(args: argparse.Namespace) -> int:
    from factory import api
    from factory.config import load_config
    from factory.curation import parse_steps, recipe_filters

    with _store_for(args, write=True) as st:
        run_id = _resolve(st, args.run)
        if args.config_path:
            cfg = load_config(args.config_path)
            items, where, implied = cfg.filters, f"{args.config_path}: filters", recipe_filters(cfg)
        else:
            from factory import stored_recipe

            stored = st.run_config(run_id)
            items, where = stored.get("filters") or [], "the run's config: filters"
            # a recipe this process cannot load (one from a Python session): its filters as the last pass ran them
            from_pass = stored_recipe.implied_filters(st, run_id, items)
            implied = recipe_filters(stored) if from_pass is None else from_pass
        steps = parse_steps(items, args.set, where=where, implied=implied)
        if not steps:
            raise ConfigError(f"{where}: no filters to apply; list some in the config (or pass --config)")
        res = api.run_sync(api.filter_run(st, run_id, steps))
    if args.json:
        print(json.dumps({"run_id": run_id, "pass": res.pass_id, "scored": res.scored, "funnel": res.funnel}))
        return 0
    scored = ", ".join(f"{k} {v}" for k, v in res.scored.items())
    print(f"pass {res.pass_id} of {run_id}; records scored now: {scored}")
    print_funnel(res.funnel)
    return 0


def cmd_why(args: argparse.Namespace) -> int:
    from factory.errors import StoreError

    with _store_for(args) as st:
        try:
            rec = st.why(args.record)
        except StoreError as exc:
            raise ConfigError(str(exc)) from None
    if args.json:
        print(json.dumps(rec, default=str))
        return 0
    state = "curated" if rec["curated"] else "not curated"
    print(
        f"record {rec['id']} ({rec['recipe']}/{rec['stage']}, seed {rec['seed_id']}, run {rec['run_id']}): {state}"
    )
    print(f"  text: {(rec['text'] or '')[:200]!r}")
    for v in rec["verdicts"]:
        mark = "keep" if v["keep"] else "DROP"
        score = "" if v["score"] is None else f" score {v['score']:g}"
        print(
            f"  {mark} {v['filter']} ({v['filter_version']}){score}: {v['reason'] or ''} {v['detail'] or ''}".rstrip()
        )
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from factory.report import write_report

    with _store_for(args) as st:
        run_id = _resolve(st, args.run)
        out = Path(args.out) if args.out else Path("out") / f"{st.run_summary(run_id)['name']}-report.html"
        res = write_report(st, run_id, out, map_points=args.map_points)
    for note in res.notes:
        print(f"note: {note}")
    print(f"report of {run_id}: {res.path}")
    return 0


def cmd_view(args: argparse.Namespace) -> int:
    import asyncio
    import contextlib

    from factory.locate import is_config_path, locate, missing_store_message
    from factory.view import serve

    if is_config_path(args.store_path):  # `factory view run.yaml`: the store and run the config names
        if args.config:
            raise ConfigError(f"STORE {args.store_path} is a config file and --config is given too; give one")
        args.config, args.store_path = args.store_path, None
    if args.store_path and args.store and args.store_path != args.store:
        raise ConfigError(f"STORE {args.store_path} and --store {args.store}: give one of them")
    flag = "STORE" if args.store_path else "--store"
    loc = locate(store=args.store_path or args.store, config=args.config, run=args.run, store_flag=flag)
    path = loc.store
    if not path.is_file():
        raise ConfigError(missing_store_message(loc))

    def ready(url: str) -> None:
        print(f"serving {path} read-only at {url} (Ctrl+C stops)", flush=True)

    with contextlib.suppress(KeyboardInterrupt):  # a second Ctrl+C during the clean-up
        asyncio.run(serve(path, port=args.port, run=loc.run, on_ready=ready))
    print("stopped", file=sys.stderr)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from factory.export import export_configured
    from factory.export_shapes import set_aside_note, soft_labels_note

    with _store_for(args) as st:
        run_id = _resolve(st, args.run)
        res = export_configured(
            st, run_id, args.out, overwrite=args.overwrite, fmt=args.format, shape=args.shape,
            stage=args.stage, split_by=args.split_by, max_shard_mb=args.max_shard_mb, slim=args.slim,
            include_rejected=args.include_rejected, pairs_per_question=args.pairs_per_question,
        )  # fmt: skip
    note = set_aside_note(res.set_aside)
    soft = soft_labels_note(res.soft_labels)
    if args.json:
        print(json.dumps({
            "run_id": run_id, "out": str(res.out), "format": res.format, "shape": res.shape, "rows": res.rows,
            "splits": res.splits, "skipped": res.skipped, "set_aside": res.set_aside, "set_aside_note": note,
            "pairs_per_question": res.pairs_per_question, "soft_labels": res.soft_labels,
        }))  # fmt: skip
        return 0
    parts = ", ".join(f"{k}: {v}" + (f" in {res.shards[k]} shards" if res.shards.get(k, 1) > 1 else "")
                      for k, v in res.splits.items())  # fmt: skip
    what = "pairs" if res.pairs_per_question else "records"
    print(f"exported {res.rows} {what} of {run_id} as {res.shape} ({parts}) to {res.out}")
    if note:
        print(note)
    if soft:
        print(soft)
    if res.skipped and res.pairs_per_question:
        print(f"{res.skipped} samples are in no pair (their question lacks a trusted or a wrong sample)")
    elif res.skipped:
        print(
            f"{res.skipped} curated records could not be shown as {res.shape} (no value for it) and were left out"
        )
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from factory.config import DEFAULT_STORE
    from factory.store import Store, diagnose

    path = Path(args.store or os.environ.get("FACTORY_STORE", DEFAULT_STORE))
    if not path.exists() and not Path(f"{path}.journal").exists():
        raise ConfigError(f"--store: no store at {path}; pass --store PATH")
    d = diagnose(path)
    repaired = None
    if args.repair and d.bad_lines and all(c.ok for c in d.checks if c.what != "journal"):
        n_bad = len(d.bad_lines)
        with Store(path, repair_journal=True) as st:
            rejected = st.path.with_name(st.path.name + ".journal.rejected")
        repaired = f"set {n_bad} unreadable line(s) aside in {rejected}; committed {d.journal_rows} answer(s)"
        d = diagnose(path)
    if args.json:
        print(json.dumps({"store": str(path), "ok": d.ok, "repaired": repaired,
                          "checks": [{"what": c.what, "ok": c.ok, "detail": c.detail} for c in d.checks],
                          "unreadable_lines": [{"segment": str(b.path), "line": b.line, "reason": b.reason}
                                               for b in d.bad_lines]}))  # fmt: skip
    else:
        print(f"store {path}")
        for c in d.checks:
            print(f"  {'ok' if c.ok else 'FAIL':<5} {c.what}: {c.detail}")
        for b in d.bad_lines[:10]:
            print(f"        {b.path.name} line {b.line}: {b.reason}")
        if len(d.bad_lines) > 10:
            print(f"        ... and {len(d.bad_lines) - 10} more")
        if repaired:
            print(f"repaired: {repaired}")
    if d.ok:
        return 0
    if d.bad_lines and not args.repair:
        hint = (
            f"`factory doctor --store {path} --repair` sets the unreadable lines aside and commits the rest"
        )
    elif any(c.what == "journal" for c in d.checks if not c.ok) and not d.bad_lines:
        hint = "move the journal path named above away, then run again"
    else:
        readable = any(c.ok for c in d.checks if c.what.startswith("table "))
        hint = (f"the store file cannot be read whole: restore {path} from a backup, or start a new store with "
                "--store NEW.duckdb" + ("; tables marked ok can still be read with DuckDB" if readable else ""))  # fmt: skip
    print(f"next: {hint}", file=sys.stderr)
    return 3


def cmd_push(args: argparse.Namespace) -> int:
    from factory import hub
    from factory.locate import is_config_path

    # A run name never holds a slash, so a path with one (or an existing folder) is the export itself;
    # a run config file (or --config) names a run and its store.
    if args.target is None and args.config is None:
        raise ConfigError("RUN|DIR: give an export folder, a run, or --config CONFIG.yaml")
    t = args.target
    if t is not None and not is_config_path(t) and (Path(t).is_dir() or "/" in t or os.sep in t):
        if args.out:
            raise ConfigError("--out: only with a run; TARGET is already an export folder")
        if args.config:
            raise ConfigError("--config: only with a run; TARGET is already an export folder")
        res = hub.push_folder(Path(args.target), args.repo_id, private=args.private)
    else:
        with _store_for(args, run_attr="target") as st:
            out = Path(args.out) if args.out else None
            run_id = _resolve(st, args.target)
            exported, res = hub.push_run(st, run_id, args.repo_id, out=out, private=args.private)
        print(f"exported {exported.rows} records to {exported.out}")
    visibility = "private" if res.private else "public"
    if res.unchanged:
        print(f"{res.repo_id} ({visibility}) already holds this export; no commit made: {res.repo_url}")
    else:
        deleted = f", deleted {len(res.deleted)}" if res.deleted else ""
        files = f"{len(res.uploaded)} file" + ("" if len(res.uploaded) == 1 else "s")
        print(f"pushed {files}{deleted} to {res.repo_id} ({visibility}): {res.commit_url}")
    return 0


class TrainView(_BarView):
    """Training steps with loss and ETA, then evaluation progress (plain lines when not a TTY)."""

    def __init__(self) -> None:
        super().__init__()
        self.tasks: dict[str, Any] = {}
        self._last_line = -10.0
        self._last_done: tuple[str, int] | None = None

    def update(self, p: Any) -> None:
        label = "training steps" if p.phase == "train" else "evaluating"
        if p.phase not in self.tasks:
            self.tasks[p.phase] = self.progress.add_task(label, total=p.total, completed=p.done, info="")
        loss = "" if p.loss is None else f"loss {p.loss:.4f} · "
        info = f"{loss}ETA {_fmt_s(p.eta_s)}" if p.phase == "train" else ""
        if self.live:
            self.progress.update(self.tasks[p.phase], total=p.total, completed=p.done, info=info)
        elif (p.phase, p.done) != self._last_done and (
            p.done == p.total or p.elapsed_s - self._last_line >= 10
        ):
            self._last_line, self._last_done = p.elapsed_s, (p.phase, p.done)
            print(f"{label} {p.done}/{p.total} {info}".rstrip(), file=sys.stderr, flush=True)


def _print_eval(report: dict[str, Any]) -> None:
    from trainers.card import eval_rows

    print(f"{report['task']} on {report['split']} of {report['export']}: {report['rows']} rows, "
          f"{report.get('inputs', report['rows'])} inputs; reference: {report.get('reference', '')}")  # fmt: skip
    print_rows(*eval_rows(report))
    for note in report.get("notes", []):
        print(f"note: {note}")
    for path in report.get("per_input_files", []):
        print(f"per-input results: {path}")


def cmd_train(args: argparse.Namespace) -> int:
    from trainers.config import load_train_config
    from trainers.run import train

    given = {
        "export": args.export, "task": args.task, "student": args.student, "out": args.out, "lora": args.lora,
        "epochs": args.epochs, "max_steps": args.max_steps, "batch_size": args.batch_size,
        "learning_rate": args.lr, "alpha": args.alpha, "label_only": args.label_only, "beta": args.beta,
        "sft_weight": args.sft_weight, "kd_weight": args.kd_weight, "kd_temperature": args.kd_temperature,
        "max_length": args.max_length, "eval_split": args.eval_split, "max_train_examples": args.max_train_examples,
        "max_eval_examples": args.max_eval_examples, "overwrite": args.overwrite, "device": args.device,
        "gradient_checkpointing": args.gradient_checkpointing,
    }  # fmt: skip
    cfg = load_train_config(args.config, given)
    with TrainView() as view:
        res = train(cfg, on_progress=view.update)
    if res.status == "interrupted":
        where = f"checkpoint {res.checkpoint}" if res.checkpoint else "no step had finished, nothing saved"
        print(f"interrupted at step {res.global_step} ({where}); re-run the same command to resume",
              file=sys.stderr)  # fmt: skip
        return EXIT_INTERRUPTED
    m = res.metrics or {}
    if args.json:
        print(json.dumps(m, default=str))
        return 0
    t = m.get("train", {})
    if res.status == "already_done":
        print(f"{res.out} already holds this finished training (--overwrite trains it again)")
    print(f"model: {res.out} (metrics.json, README.md)")
    loss = " → ".join(f"{x:.4f}" for x in (t.get("first_loss"), t.get("final_loss")) if x is not None)
    print(f"steps {t.get('global_step')} · loss {loss} · {t.get('examples_per_s')} examples/s · "
          f"train {t.get('train_s')} s · wall {t.get('wall_s')} s")  # fmt: skip
    if res.resumed_from:
        print(f"resumed from step {res.resumed_from}")
    _print_eval(m["eval"])
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from trainers.run import evaluate_models

    paths = list(args.paths)
    if args.gold or args.predictions:
        from trainers.entity_eval import evaluate_entities
        from trainers.student import quiet

        with quiet():
            report = evaluate_entities([Path(p).expanduser() for p in paths], gold_path=args.gold,
                                       predictions=args.predictions, batch_size=16)  # fmt: skip
        if args.json:
            print(json.dumps(report, default=str))
            return 0
        _print_eval(report)
        return 0
    if not paths:
        raise ConfigError("factory eval: give MODEL folders (or --gold FILE with --predictions FILE)")
    export = None
    if len(paths) > 1 and not (Path(paths[-1]) / "factory_train.json").is_file():
        export = paths.pop()
    with TrainView() as view:
        report = evaluate_models(paths, export, split=args.split, max_examples=args.max_examples,
                                 on_progress=view.update, per_input=args.per_input)  # fmt: skip
    if args.json:
        print(json.dumps(report, default=str))
        return 0
    _print_eval(report)
    return 0


RUN_HELP = "run id, name, unique prefix of either, or a run config file (default: the latest run)"
CONFIG_HELP = "the run config: its store: (unless --store) and its run, by name (unless RUN)"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="factory", description="Synthetic dataset factory for LLM distillation.")
    p.add_argument("--version", action="version", version=f"factory {__version__}")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    r = sub.add_parser("run", help="run (or resume) a config: seeds → teacher → records in the store")
    r.add_argument("config", help="run config YAML")
    r.add_argument(
        "--dry-run", action="store_true", help="render prompts and estimate requests/tokens; call no teacher"
    )
    r.add_argument("--store", help="DuckDB store path (overrides the config)")
    r.add_argument("--json", action="store_true", help="print the summary as JSON")
    r.add_argument(
        "--retry-failed",
        action="store_true",
        help="ask again the requests whose cached answer is a rejection (a prompt over max_model_len, a "
        "schema the engine refused); their new outcome replaces the cached one",
    )
    r.add_argument(
        "--executor", choices=["local", "ray"], help="where the shards run (overrides executor.kind)"
    )
    r.add_argument(
        "--address", help="Ray cluster address: auto, ray://HOST:10001 (default: start a local one)"
    )
    r.set_defaults(fn=cmd_run)

    s = sub.add_parser("status", help="show a run: records, requests, cache hits, failures by kind")
    s.add_argument("run", nargs="?", help=RUN_HELP)
    s.add_argument("--store", help="DuckDB store path")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.add_argument("--config", metavar="CONFIG.yaml", help=CONFIG_HELP)
    s.add_argument("--all", action="store_true", help="list every run in the store")
    s.add_argument(
        "--diversity", action="store_true", help="also measure the curated set's diversity (loads MiniLM)"
    )
    s.set_defaults(fn=cmd_status)

    e = sub.add_parser("export", help="write the curated records of a run")
    e.add_argument("run", nargs="?", help=RUN_HELP)
    e.add_argument("--out", help="output folder (default: the config's export.out, else out/RUN_NAME)")
    e.add_argument(
        "--format", choices=["hf", "parquet", "jsonl"], help="default: the config's export.format, else hf"
    )
    e.add_argument(
        "--as", dest="shape", metavar="SHAPE",
        help="training format (default: the config's export.shape, else records): records, messages, or one "
        "the recipe offers (`factory recipes -v` lists each recipe's). messages, prompt_completion and step_by_step take only samples whose answer is "
        "trusted; preference pairs trusted and wrong samples of one question (TRL DPOTrainer format)",
    )  # fmt: skip
    e.add_argument(
        "--pairs-per-question", type=int, metavar="N",
        help="--as preference: the most pairs made from one question (default: export.pairs_per_question, 4)",
    )  # fmt: skip
    e.add_argument("--stage", help="records of one stage (default: the recipe's last), or all")
    e.add_argument(
        "--split-by", choices=["seed", "record"], help="hash the seed id (default) or the record id"
    )
    e.add_argument("--max-shard-mb", type=float, help="largest parquet shard of an hf export (default 256)")
    e.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder")
    e.add_argument("--store", help="DuckDB store path")
    e.add_argument("--config", metavar="CONFIG.yaml", help=CONFIG_HELP)
    e.add_argument("--slim", action="store_true", help="drop lineage columns")
    e.add_argument(
        "--include-rejected", action="store_true", help="all records, with the reasons they were dropped"
    )
    e.add_argument("--json", action="store_true", help="print the result as JSON")
    e.set_defaults(fn=cmd_export)

    pu = sub.add_parser("push", help="publish an export (or export a run first) to the Hugging Face Hub")
    pu.add_argument("target", nargs="?", metavar="RUN|DIR",
                    help="an export folder (format hf), or a run id, name, prefix or config file")  # fmt: skip
    pu.add_argument("--repo-id", required=True, metavar="OWNER/NAME", help="the dataset repo on the Hub")
    pu.add_argument("--private", action="store_true", help="create the repo private (refuses a public one)")
    pu.add_argument("--out", help="with a RUN: export here (default: the config's export.out, else out/NAME)")
    pu.add_argument("--store", help="DuckDB store path (with a RUN)")
    pu.add_argument("--config", metavar="CONFIG.yaml", help=CONFIG_HELP)
    pu.set_defaults(fn=cmd_push)

    f = sub.add_parser("filter", help="apply a run's filters again (new thresholds use stored scores)")
    f.add_argument("run", nargs="?", help=RUN_HELP)
    f.add_argument("--set", action="append", default=[], metavar="FILTER.PARAM=VALUE",
                   help="override a filter param, e.g. --set agreement.min_vote_share=0.75 (repeatable)")  # fmt: skip
    f.add_argument("--config", metavar="CONFIG.yaml",
                   help="the run config: its store, its run (by name) and its filter list instead of the stored one")  # fmt: skip
    f.add_argument("--store", help="DuckDB store path")
    f.add_argument("--json", action="store_true", help="machine-readable output")
    f.set_defaults(fn=cmd_filter)

    w = sub.add_parser("why", help="why a record is (not) in the curated set: its verdicts")
    w.add_argument("record", help="record id (or a unique prefix)")
    w.add_argument("--store", help="DuckDB store path")
    w.add_argument("--config", metavar="CONFIG.yaml", help=CONFIG_HELP)
    w.add_argument("--json", action="store_true", help="machine-readable output")
    w.set_defaults(fn=cmd_why)

    rp = sub.add_parser("report", help="write a run's report: one self-contained HTML page of charts")
    rp.add_argument("run", nargs="?", help=RUN_HELP)
    rp.add_argument("--out", help="the HTML file to write (default: out/RUN_NAME-report.html)")
    rp.add_argument("--map-points", type=int, default=1500, metavar="N",
                    help="records on the embedding map (default 1500; 0: no map)")  # fmt: skip
    rp.add_argument("--store", help="DuckDB store path")
    rp.add_argument("--config", metavar="CONFIG.yaml", help=CONFIG_HELP)
    rp.set_defaults(fn=cmd_report)

    vw = sub.add_parser("view", help="browse a store's records in a local read-only web page")
    vw.add_argument(
        "store_path", nargs="?", metavar="STORE", help="DuckDB store (default: --store, else the default)"
    )
    vw.add_argument("--store", help="DuckDB store path (same as STORE)")
    vw.add_argument("--config", metavar="CONFIG.yaml", help=CONFIG_HELP)
    vw.add_argument(
        "--port", type=int, default=8765, help="port on 127.0.0.1 (default 8765; 0: any free port)"
    )
    vw.add_argument("--run", help="run to open first (default: the latest run)")
    vw.set_defaults(fn=cmd_view)

    tr = sub.add_parser(
        "train", help="fine-tune a student on an export; evaluate it; write model, metrics, card"
    )
    tr.add_argument(
        "export", nargs="?", metavar="EXPORT_DIR", help="the export folder (or `export:` in --config)"
    )
    tr.add_argument(
        "--task", choices=["sft", "step_by_step", "classifier", "triples", "dpo", "kd"], help="what to train"
    )
    tr.add_argument("--student", help="embedded | minilm | a local model folder")
    tr.add_argument("--config", help="a training YAML with the same fields; flags given win")
    tr.add_argument("--out", help="output folder (default: out/students/EXPORT-TASK)")
    tr.add_argument("--lora", action="store_true", default=None, help="train LoRA adapters (merged on save)")
    tr.add_argument("--epochs", type=float, help="passes over train (default 1)")
    tr.add_argument("--max-steps", type=int, help="optimizer steps (overrides --epochs)")
    tr.add_argument("--batch-size", type=int, help="examples per step (default 8)")
    tr.add_argument("--lr", type=float, help="learning rate (default 5e-5; 2e-4 with --lora)")
    tr.add_argument("--alpha", type=float, help="step_by_step: weight of the label loss (default 0.5)")
    tr.add_argument(
        "--label-only", action="store_true", default=None, help="step_by_step: the label-only baseline"
    )
    tr.add_argument("--beta", type=float, help="dpo: strength of the pull to the reference (default 0.1)")
    tr.add_argument("--sft-weight", type=float, help="dpo: weight of an SFT term on the chosen answers (0)")
    tr.add_argument("--kd-weight", type=float, help="kd: weight of the KL to the teacher's top-k (0.5)")
    tr.add_argument("--kd-temperature", type=float, help="kd: temperature of the KL term (1.0)")
    tr.add_argument("--max-length", type=int, help="longest tokenized example (default 512)")
    tr.add_argument(
        "--eval-split", help="held-out split (default: test, else validation, else 10%% of train)"
    )
    tr.add_argument("--max-train-examples", type=int, help="train on at most N rows")
    tr.add_argument("--max-eval-examples", type=int, help="evaluate at most N inputs")
    tr.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda"],
        help="where to train (default auto: the GPU when there is one)",
    )
    tr.add_argument(
        "--gradient-checkpointing", action="store_true", default=None,
        help="recompute activations in the backward pass: less memory, about a third more compute",
    )  # fmt: skip
    tr.add_argument("--overwrite", action="store_true", default=None, help="replace a non-empty --out")
    tr.add_argument("--json", action="store_true", help="print metrics.json")
    tr.set_defaults(fn=cmd_train)

    ev = sub.add_parser(
        "eval", help="score students (and the teacher's own answers) on an export's held-out split"
    )
    ev.add_argument("paths", nargs="*", metavar="MODEL [MODEL ...] [EXPORT_DIR]",
                    help="model folders `factory train` wrote, then the export (default: the one trained on)")  # fmt: skip
    ev.add_argument("--split", help="split to score (default: the one held out in training)")
    ev.add_argument("--max-examples", type=int, help="score at most N inputs")
    ev.add_argument(
        "--gold",
        metavar="FILE",
        help="entity precision/recall/F1 against a labeled JSONL file "
        "{id?, text, entities: {type: [mentions]}} (students trained on an entities conversation export)",
    )
    ev.add_argument(
        "--predictions", metavar="FILE", help="with --gold: score this predictions file (same form)"
    )
    ev.add_argument(
        "--per-input", metavar="PATH",
        help="write each input's result (seed id, answer, right/wrong, loss, teacher agreement) to this JSONL "
        "(default: eval_inputs.jsonl in each MODEL folder); a run config's focus.from_eval reads it",
    )  # fmt: skip
    ev.add_argument("--json", action="store_true", help="machine-readable output")
    ev.set_defaults(fn=cmd_eval)

    dr = sub.add_parser("doctor", help="check a store: the file, migrations, every table, the journal")
    dr.add_argument("--store", help="DuckDB store path")
    dr.add_argument(
        "--repair", action="store_true",
        help="set unreadable journal lines aside (STORE.journal.rejected) and commit the others",
    )  # fmt: skip
    dr.add_argument("--json", action="store_true", help="machine-readable output")
    dr.set_defaults(fn=cmd_doctor)
    from factory.cli_cache import add_cache_parser

    add_cache_parser(sub)
    from factory.cli_import import add_import_parser

    add_import_parser(sub)

    from factory.cli_plugins import add_plugin_parsers

    add_plugin_parsers(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        code = int(args.fn(args))
        sys.stdout.flush()  # here, so that a reader gone away is met inside the boundary
        return code
    except FactoryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return _closed_pipe()
    except Exception as exc:
        err = _store_error(exc)
        if err is None:
            raise
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code


def _store_error(exc: Exception) -> FactoryError | None:
    """A DuckDB error met while reading a store (a corrupt block found by a query) as a StoreError."""
    if "duckdb" not in sys.modules:
        return None
    from factory.store.doctor import store_error_from

    return store_error_from(exc)


def _closed_pipe() -> int:
    """The reader of stdout went away (`factory status | head -1`): stop quietly. stdout is pointed at
    /dev/null so that the interpreter's final flush does not fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return EXIT_CLOSED_PIPE


if __name__ == "__main__":
    sys.exit(main())
