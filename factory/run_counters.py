"""What a run counts, as the runner reports it: requests sent and attempts, failures by kind with an
example each, tokens, and the progress snapshot. Teachers count for their whole life; a run reports the
difference from when it started (``_base``)."""

from __future__ import annotations

import time
from collections import Counter
from typing import TYPE_CHECKING, Any

from factory.plan import Progress

if TYPE_CHECKING:
    from factory.plan import Plan
    from factory.teachers.base import Teacher


class RunCounters:
    """Mixed into the runner: reads its teachers and its own counters, writes nothing."""

    plan: Plan
    invocation: int
    _teachers: list[Teacher]
    _base: dict[int, tuple[int, int, dict[str, int]]]
    final_failures: Counter[str]
    dispatched: int
    cache_hits: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    saved_usd: float
    unpriced: int
    budget_note: str | None
    seeds_done: int
    seeds_failed: int
    records: int
    abandoned: int
    _seeds_total: int
    _resumed_done: int
    _draining: bool
    _t0: float
    _first_token_t: float | None  # the report before the one that first saw an output token
    _last_report_t: float
    _tasks: set[Any]  # the seeds in flight
    answered: int
    reserved_tokens: int

    def _distinct_teachers(self) -> list[Teacher]:
        return self._teachers

    @property
    def awaiting(self) -> int:
        """Requests sent and not yet answered: what a drain waits for (and what abandoning pays again).
        Backends that cannot tell count every request handed to them."""
        sent = sum(t.in_flight for t in self._distinct_teachers())
        return sent if sent else self.dispatched

    @property
    def attempts(self) -> int:
        return sum(t.attempts - self._base[id(t)][0] for t in self._distinct_teachers())

    @property
    def requests_sent(self) -> int:
        """Attempts a server received: refused connections, DNS failures and connect time-outs are not."""
        return sum(
            t.attempts - t.unsent - self._base[id(t)][0] + self._base[id(t)][1]
            for t in self._distinct_teachers()
        )

    def _errors(self) -> Counter[str]:
        out: Counter[str] = Counter()
        for t in self._distinct_teachers():
            before = self._base[id(t)][2]
            for kind, n in dict(t.errors).items():
                if n > before.get(kind, 0):
                    out[kind] += n - before.get(kind, 0)
        return out

    def _examples(self, kinds: Counter[str]) -> dict[str, str]:
        out: dict[str, str] = {}
        for t in self._distinct_teachers():
            out.update((k, v) for k, v in dict(t.examples).items() if k in kinds)
        return out

    def stats(self, status: str) -> dict[str, Any]:
        """This invocation's counters. Also written to the journal every 10 ms while answers arrive, so the
        common case (no failure yet) reads a few integers."""
        failed = any(t.errors for t in self._teachers) or self.final_failures
        failures = self._errors() if failed else Counter()
        examples = self._examples(failures) if failed else {}
        for kind, n in dict(self.final_failures).items():
            failures[f"final_{kind}"] += n
        return {
            "run_id": self.plan.run_id, "invocation": self.invocation, "requests_sent": self.requests_sent,
            "attempts": self.attempts, "cache_hits": self.cache_hits, "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens, "failures": dict(failures), "failure_examples": examples,
            "status": status, "cost_usd": self.cost_usd, "saved_usd": self.saved_usd, "unpriced": self.unpriced,
            "pacing": self.pacing(),
        }  # fmt: skip

    def snapshot(self) -> Progress:
        now = time.perf_counter()
        partial = sum(t.partial_tokens() for t in self._teachers if t.streams_tokens)
        if self._first_token_t is None and self.completion_tokens + partial > 0:
            self._first_token_t = self._last_report_t  # they came since the report before this one
        self._last_report_t = now
        return Progress(
            seeds_total=self._seeds_total, seeds_done=self.seeds_done, seeds_failed=self.seeds_failed,
            records=self.records, requests_sent=self.requests_sent, cache_hits=self.cache_hits,
            in_flight=self.dispatched, prompt_tokens=self.prompt_tokens, completion_tokens=self.completion_tokens,
            failures=dict(self._errors()), elapsed_s=now - self._t0,
            seeds_resumed=self._resumed_done, draining=self._draining and not self.abandoned, awaiting=self.awaiting,
            abandoned=self.abandoned, last_failure=self._last_failure(), waiting_on=self.waiting_on(),
            cost_usd=self.cost_usd, cost_known=self.unpriced == 0, saved_usd=self.saved_usd, pacing=self.pacing(),
            budget=self.budget_note, answered=self.answered,
            streaming=any(t.streams_tokens for t in self._teachers), partial_tokens=partial,
            tokens_left=self._tokens_left(partial),
            generating_s=now - self._first_token_t if self._first_token_t is not None else 0.0,
        )  # fmt: skip

    def pacing(self) -> str | None:
        """Why a teacher holds its starts back now ("waiting 12 s: tokens per minute"); None when none does."""
        for t in self._distinct_teachers():
            held = t.pacing()
            if held:
                return held
        return None

    def _tokens_left(self, partial: int) -> float | None:
        """Output tokens still expected: the requests in flight, and those of the seeds not started yet at
        the requests a started seed has made so far, each at the mean answer's length (before the first
        answer: at its ``max_tokens``, an upper bound), less the tokens already generated in flight.
        None before the first request. A recipe whose later stages have not started yet is undercounted."""
        asked = self.answered + self.dispatched
        started = self.seeds_done + self.seeds_failed - self._resumed_done + len(self._tasks)
        if not asked or started <= 0:
            return None
        if self.answered:
            per_request = self.completion_tokens / self.answered
        else:
            per_request = self.reserved_tokens / max(self.dispatched, 1)
        not_started = max(0, self._seeds_total - self.seeds_done - self.seeds_failed - len(self._tasks))
        return max(0.0, (not_started * asked / started + self.dispatched) * per_request - partial)

    def waiting_on(self) -> str | None:
        """What the run waits on besides requests in flight (a provider batch); None for most runs."""
        return None

    def _last_failure(self) -> str | None:
        if not self._errors():
            return None  # (a teacher's last failure from before this invocation is not news)
        for t in self._distinct_teachers():
            if t.last_failure is not None:
                return t.last_failure
        return None
