"""What `status`, `export`, the report and the viewer read: runs, their summaries and counters, and the
queries behind the report's charts."""

from __future__ import annotations

import logging
from typing import Any

import orjson
import pyarrow as pa

from factory.errors import StoreError
from factory.store.cache_admin import ANSWERS
from factory.store.journal import COUNTERS, MONEY, journal_dir, latest_stats, scan_segments
from factory.store.tables import (
    StoreBase,
    arrow_table,
    merged_counters,
)

log = logging.getLogger(__name__)


class Reads(StoreBase):
    def runs(self) -> list[dict[str, Any]]:
        return self._dicts(
            "SELECT id, name, recipe, teacher, status, created_at, updated_at FROM runs ORDER BY updated_at DESC"
        )

    def resolve_run(self, run: str | None) -> str:
        """A run id from an exact id, an exact name (its latest run), a prefix of exactly one run's id or
        name, or None (the latest run); see :mod:`factory.store.runs`."""
        from factory.store.runs import resolve_run

        return resolve_run(self, run).id

    def run_summary(self, run_id: str) -> dict[str, Any]:
        found = self._dicts(
            "SELECT id, name, recipe, teacher, status, config_hash, created_at, updated_at FROM runs WHERE id = ?",
            [run_id],
        )
        if not found:
            raise StoreError(f"no run {run_id!r} in {self.path}")
        out = found[0]
        counts, failures, examples = self._run_counters(run_id)
        out.update(counts)
        out["failures_by_kind"] = failures
        out["failure_reasons"] = self._failure_reasons(run_id, failures, examples)
        out["final_failures"] = int(self._scalar("SELECT count(*) FROM failures WHERE run_id = ?", [run_id]))
        out["records_total"] = int(self._scalar("SELECT count(*) FROM records WHERE run_id = ?", [run_id]))
        out["seeds_done"] = int(self._scalar("SELECT count(*) FROM seeds_done WHERE run_id = ?", [run_id]))
        by_stage = self._rows(
            "SELECT stage, count(*) FROM records WHERE run_id = ? GROUP BY stage ORDER BY stage", [run_id]
        )
        out["records_by_stage"] = {st: int(n) for st, n in by_stage}
        for k in ("created_at", "updated_at"):
            out[k] = out[k].isoformat() if out[k] is not None else None
        return out

    def _run_counters(self, run_id: str) -> tuple[dict[str, Any], dict[str, int], dict[str, str]]:
        """The run's counters summed over its invocations, each invocation's counters the larger of what
        was committed and what its journal holds (a run in progress, or one killed and not yet resumed)."""
        rows = self._dicts(
            "SELECT invocation, requests_sent, attempts, cache_hits, prompt_tokens, completion_tokens, cost_usd, "
            "saved_usd, unpriced, failures, failure_examples FROM run_stats WHERE run_id = ? ORDER BY invocation",
            [run_id],
        )
        journaled = latest_stats(scan_segments(journal_dir(self.path), None)[2]) if self.read_only else {}
        counts: dict[str, Any] = {
            "invocations": len(rows),
            **dict.fromkeys(COUNTERS, 0),
            **dict.fromkeys(MONEY, 0),
        }
        failures: dict[str, int] = {}
        examples: dict[str, str] = {}
        for r in rows:
            m = merged_counters(r, journaled.get((run_id, int(r["invocation"])), {}))
            for k in (*COUNTERS, *MONEY):
                counts[k] += m[k]
            counts["pacing"] = journaled.get((run_id, int(r["invocation"])), {}).get("pacing")
            for kind, n in m["failures"].items():
                failures[kind] = failures.get(kind, 0) + n
            examples.update(m["failure_examples"])
        return counts, failures, examples

    def _failure_reasons(
        self, run_id: str, failures: dict[str, int], examples: dict[str, str], top: int = 5
    ) -> list[dict[str, Any]]:
        """The top failure kinds, most failed attempts first: attempts, seeds that finally failed with it,
        and one example message (the latest attempt's, else a failed seed's)."""
        final = {
            str(k): (int(n), str(m or ""))
            for k, n, m in self._rows(
                "SELECT kind, count(*), arg_max(message, created_at) FROM failures WHERE run_id = ? GROUP BY kind",
                [run_id],
            )
        }
        kinds = {k: n for k, n in failures.items() if not k.startswith("final_") and n}
        for k in final:
            kinds.setdefault(k, 0)
        reasons: list[dict[str, Any]] = [
            {"kind": k, "attempts": n, "seeds": final.get(k, (0, ""))[0],
             "example": examples.get(k) or final.get(k, (0, ""))[1]}
            for k, n in kinds.items()
        ]  # fmt: skip
        reasons.sort(key=lambda r: (-int(r["attempts"]), -int(r["seeds"]), str(r["kind"])))
        return reasons[:top]

    def run_config(self, run_id: str) -> dict[str, Any]:
        blob = self._scalar("SELECT config FROM runs WHERE id = ?", [run_id])
        if blob is None:
            raise StoreError(f"no run {run_id!r} in {self.path}")
        config: dict[str, Any] = orjson.loads(blob)
        return config

    def factory_version(self, run_id: str) -> str | None:
        """The factory version that last started the run (stored with it)."""
        v = self._scalar("SELECT factory_version FROM runs WHERE id = ?", [run_id])
        return None if v is None else str(v)

    # Rejecting verdicts that count: the recipe's own (no pass) and those of the run's latest filter pass.

    def records_table(self, run_id: str) -> pa.Table:
        """The run's records joined with the answers that produced them, as Arrow, in a stable order."""
        cur = self.con.execute(
            "SELECT r.id, r.run_id, r.recipe, r.stage, r.seed_id, r.sample_index, r.text, r.payload, "
            "r.parent_ids, r.request_keys, r.teacher, r.template_version "
            "FROM records r WHERE r.run_id = ? ORDER BY r.seed_id, r.stage, r.sample_index, r.id",
            [run_id],
        )
        return arrow_table(cur)

    def logprobs_of(self, keys: list[str]) -> dict[str, bytes]:
        """The packed logprobs (factory.logprobs) of the answers among these keys that have them."""
        if not keys:
            return {}
        self.con.register("_lp_keys", pa.table({"key": pa.array(sorted(set(keys)), pa.string())}))
        try:
            rows = self._rows(
                "SELECT c.key, c.logprobs FROM cache c SEMI JOIN _lp_keys k ON c.key = k.key "
                "WHERE c.logprobs IS NOT NULL"
            )
        finally:
            self.con.unregister("_lp_keys")
        return {k: bytes(b) for k, b in rows}

    def answer_facts(self, run_id: str) -> dict[str, tuple[str | None, int]]:
        """(finish_reason, characters of reasoning) of each cached answer the run's records name, by
        request key; keys whose answer is no longer cached (forgotten) are absent."""
        rows = self._rows(
            "WITH k AS (SELECT DISTINCT unnest(request_keys) AS key FROM records WHERE run_id = ?) "
            "SELECT c.key, c.finish_reason, coalesce(strlen(c.reasoning), 0) FROM cache c SEMI JOIN k "
            "ON c.key = k.key WHERE c.status = 'ok'",
            [run_id],
        )
        return {str(k): (None if f is None else str(f), int(n)) for k, f, n in rows}

    def reasoning_of(self, keys: list[str]) -> dict[str, str]:
        """The reasoning stored with these answers, by request key (keys without any are absent)."""
        if not keys:
            return {}
        rows = self._rows(
            "SELECT key, reasoning FROM cache WHERE key IN (SELECT unnest(?::VARCHAR[])) AND reasoning IS NOT NULL",
            [list(keys)],
        )
        return {str(k): str(r) for k, r in rows}

    def focus_rounds(self, run_id: str) -> list[dict[str, Any]]:
        """A focused round's records, by round, eval file and seed outcome: seeds, records, and the eval's
        failed and solved counts (from the records' ``focus`` payload; [] for a run without focus)."""
        rows = self._rows(
            "WITH f AS (SELECT seed_id, json_extract(payload, '$.focus') AS j FROM records "
            "WHERE run_id = ? AND json_extract(payload, '$.focus') IS NOT NULL) "
            "SELECT CAST(j->>'round' AS INTEGER), j->>'eval', j->>'eval_digest', j->>'outcome', "
            "max(CAST(j->>'eval_failed' AS INTEGER)), max(CAST(j->>'eval_solved' AS INTEGER)), "
            "count(DISTINCT seed_id), count(*) FROM f GROUP BY ALL ORDER BY 1, 2, 4",
            [run_id],
        )
        keys = ("round", "eval", "eval_digest", "outcome", "eval_failed", "eval_solved", "seeds", "records")
        return [dict(zip(keys, r, strict=True)) for r in rows]

    def template_versions(self, run_id: str) -> list[tuple[str, str | None, int]]:
        """(stage, template version, records) of the run's records, by stage then version."""
        rows = self._rows(
            "SELECT stage, template_version, count(*) FROM records WHERE run_id = ? "
            "GROUP BY ALL ORDER BY 1, 2 NULLS FIRST",
            [run_id],
        )
        return [(str(st), None if v is None else str(v), int(n)) for st, v, n in rows]

    def request_sampling(self, run_id: str) -> list[dict[str, Any]]:
        """The answers behind the run, by teacher and the sampling they were asked with: the requests its
        records name plus those first stored for it (a judge's), each counted once, whether paid for in
        this run or served from the cache. Per group: requests, seeded requests, tokens."""
        return self._dicts(
            "WITH k AS (SELECT DISTINCT unnest(request_keys) AS key FROM records WHERE run_id = ? "
            f"           UNION SELECT key FROM {ANSWERS} a WHERE run_id = ?), "
            "c AS (SELECT c.teacher, c.request::JSON->'sampling' AS s, c.prompt_tokens, c.completion_tokens "
            f"      FROM {ANSWERS} c SEMI JOIN k ON c.key = k.key) "
            "SELECT teacher, s->>'temperature' AS temperature, s->>'top_p' AS top_p, "
            "s->>'max_tokens' AS max_tokens, count(*) AS requests, "
            "count(*) FILTER (WHERE s->>'seed' IS NOT NULL) AS seeded, "
            "coalesce(sum(prompt_tokens), 0) AS prompt_tokens, "
            "coalesce(sum(completion_tokens), 0) AS completion_tokens "
            "FROM c GROUP BY ALL ORDER BY teacher, requests DESC, temperature, top_p, max_tokens",
            [run_id, run_id],
        )

    # -- report reads ------------------------------------------------------------------------------
    # Records rejected now (by their recipe's check or the latest pass), once each.

    def label_counts(self, run_id: str, field: str) -> list[tuple[str, int, int]]:
        """(value, records, curated records) of one payload field, over the run's records that have it;
        most records first."""
        rows = self._rows(
            f"WITH d AS ({self._DROPPED}) "
            "SELECT r.v, count(*), count(*) FILTER (WHERE d.record_id IS NULL) FROM "
            "(SELECT id, json_extract_string(payload, ?) AS v FROM records WHERE run_id = ?) r "
            "LEFT JOIN d ON d.record_id = r.id WHERE r.v IS NOT NULL GROUP BY r.v ORDER BY 2 DESC, 1",
            [run_id, f'$."{field}"', run_id],
        )
        return [(str(v), int(n), int(k)) for v, n, k in rows]

    def text_lengths(self, run_id: str) -> pa.Table:
        """Per record: ``chars`` (length of its text) and ``curated``."""
        cur = self.con.execute(
            f"WITH d AS ({self._DROPPED}) SELECT coalesce(length(r.text), 0) AS chars, "
            "d.record_id IS NULL AS curated FROM records r LEFT JOIN d ON d.record_id = r.id WHERE r.run_id = ?",
            [run_id, run_id],
        )
        return arrow_table(cur)

    def answer_tokens(self, run_id: str) -> pa.Table:
        """Per record whose (last) answer is in the cache with a token count: ``tokens`` (its output tokens),
        ``cut`` (the answer stopped at max_tokens) and ``curated``."""
        cur = self.con.execute(
            f"WITH d AS ({self._DROPPED}) SELECT c.completion_tokens AS tokens, "
            "coalesce(c.finish_reason = 'length', false) AS cut, d.record_id IS NULL AS curated "
            "FROM records r JOIN cache c ON c.key = list_extract(r.request_keys, -1) "
            "LEFT JOIN d ON d.record_id = r.id WHERE r.run_id = ? AND c.completion_tokens IS NOT NULL",
            [run_id, run_id],
        )
        return arrow_table(cur)

    def pass_scores(self, run_id: str, filter_slug: str) -> pa.Table:
        """``score`` and ``keep`` of one filter's verdicts in the run's latest pass."""
        cur = self.con.execute(
            "SELECT score, keep FROM verdicts WHERE run_id = ? AND filter = ? "
            "AND pass_id = (SELECT max(pass_id) FROM filter_passes WHERE run_id = ?)",
            [run_id, filter_slug, run_id],
        )
        return arrow_table(cur)

    def output_tokens_median(self, recipe: str, stage: str) -> tuple[float | None, int]:
        """The median output tokens of the answers behind earlier records of a recipe's stage, and how many
        answers that is (0: none stored)."""
        med, n = self._rows(
            "WITH k AS (SELECT DISTINCT unnest(request_keys) AS key FROM records WHERE recipe = ? AND stage = ?) "
            f"SELECT median(completion_tokens), count(*) FROM {ANSWERS} c SEMI JOIN k ON c.key = k.key "
            "WHERE status = 'ok' AND completion_tokens IS NOT NULL",
            [recipe, stage],
        )[0]
        return (None if med is None else float(med)), int(n)

    def run_spending(self, run_id: str) -> dict[str, Any]:
        """What the answers a run paid for cost (``paid_usd``; ``unpriced``: those of no known cost), and
        what the answers behind its records that other runs paid for cost (``saved_usd``)."""
        paid, unpriced = self._rows(
            f"SELECT coalesce(sum(cost_usd), 0), count(*) FILTER (WHERE status = 'ok' AND cost_usd IS NULL) "
            f"FROM {ANSWERS} a WHERE run_id = ?",
            [run_id],
        )[0]
        saved = self._scalar(
            "WITH k AS (SELECT DISTINCT unnest(request_keys) AS key FROM records WHERE run_id = ?) "
            f"SELECT coalesce(sum(c.cost_usd), 0) FROM {ANSWERS} c SEMI JOIN k ON c.key = k.key "
            "WHERE c.run_id IS DISTINCT FROM ?",
            [run_id, run_id],
        )
        return {"paid_usd": float(paid), "unpriced": int(unpriced), "saved_usd": float(saved or 0)}

    def teacher_usage(self, run_id: str) -> list[dict[str, Any]]:
        """Per teacher name, over the answers behind the run (as in ``request_sampling``): requests, ok and
        rejected answers, tokens, and latency percentiles (ms) of the answers that recorded one."""
        return self._dicts(
            "WITH k AS (SELECT DISTINCT unnest(request_keys) AS key FROM records WHERE run_id = ? "
            f"           UNION SELECT key FROM {ANSWERS} a WHERE run_id = ?), "
            f"c AS (SELECT c.* FROM {ANSWERS} c SEMI JOIN k ON c.key = k.key) "
            "SELECT teacher, count(*) AS requests, count(*) FILTER (WHERE status = 'ok') AS ok, "
            "count(*) FILTER (WHERE status <> 'ok') AS rejected, "
            "coalesce(sum(prompt_tokens), 0) AS prompt_tokens, "
            "coalesce(sum(completion_tokens), 0) AS completion_tokens, "
            "sum(cost_usd) AS cost_usd, count(*) FILTER (WHERE status = 'ok' AND cost_usd IS NULL) AS unpriced, "
            "count(latency_ms) FILTER (WHERE latency_ms > 0) AS timed, "
            "quantile_cont(latency_ms, 0.5) FILTER (WHERE latency_ms > 0) AS p50_ms, "
            "quantile_cont(latency_ms, 0.9) FILTER (WHERE latency_ms > 0) AS p90_ms, "
            "quantile_cont(latency_ms, 0.99) FILTER (WHERE latency_ms > 0) AS p99_ms, "
            "max(latency_ms) AS max_ms FROM c GROUP BY teacher ORDER BY teacher",
            [run_id, run_id],
        )

    def rejections(self, run_id: str, limit: int = 10) -> list[tuple[str, str, int]]:
        """(teacher, error, answers) of the deterministic rejections behind the run, most first."""
        rows = self._rows(
            "WITH k AS (SELECT DISTINCT unnest(request_keys) AS key FROM records WHERE run_id = ? "
            f"           UNION SELECT key FROM {ANSWERS} a WHERE run_id = ?) "
            f"SELECT teacher, coalesce(error, ''), count(*) FROM {ANSWERS} c SEMI JOIN k ON c.key = k.key "
            "WHERE status <> 'ok' GROUP BY ALL ORDER BY 3 DESC, 1, 2 LIMIT ?",
            [run_id, run_id, limit],
        )
        return [(str(t), str(e), int(n)) for t, e, n in rows]

    def failure_kinds(self, run_id: str) -> list[tuple[str, int]]:
        """(kind, seeds) of the run's final failures (after retries), most first."""
        rows = self._rows(
            "SELECT kind, count(*) FROM failures WHERE run_id = ? GROUP BY kind ORDER BY 2 DESC, 1", [run_id]
        )
        return [(str(k), int(n)) for k, n in rows]

    def record_sample(self, run_id: str, n: int, *, curated: bool | None = None) -> list[dict[str, Any]]:
        """Up to ``n`` records in a fixed pseudo-random order (by a hash of the id), curated or rejected or
        either, with ``dropped_by`` (the live rejecting verdicts, NULL when curated)."""
        where = {None: "", True: "AND v.reasons IS NULL", False: "AND v.reasons IS NOT NULL"}[curated]
        return self._dicts(
            "WITH v AS (SELECT record_id, string_agg(filter || ': ' || coalesce(reason, ''), '; ' "
            f"          ORDER BY pass_id NULLS FIRST, filter) AS reasons FROM verdicts WHERE {self._LIVE} "
            "           GROUP BY record_id) "
            "SELECT r.id, r.stage, r.seed_id, r.sample_index, r.text, r.payload, v.reasons AS dropped_by "
            f"FROM records r LEFT JOIN v ON v.record_id = r.id WHERE r.run_id = ? {where} "
            "ORDER BY md5(r.id) LIMIT ?",
            [run_id, run_id, n],
        )

    def repeated_texts(self, run_id: str, limit: int = 10) -> tuple[list[tuple[str, int]], int]:
        """The texts the run's records hold more than once (most repeated first), and how many distinct
        texts there are."""
        rows = self._rows(
            "SELECT text, count(*) FROM records WHERE run_id = ? AND text IS NOT NULL GROUP BY text "
            "HAVING count(*) > 1 ORDER BY 2 DESC, 1 LIMIT ?",
            [run_id, limit],
        )
        distinct = self._scalar("SELECT count(DISTINCT text) FROM records WHERE run_id = ?", [run_id])
        return [(str(t), int(n)) for t, n in rows], int(distinct or 0)
