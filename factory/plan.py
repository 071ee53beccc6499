"""The values a run is made of and reports: its plan (what to run), its budget, its progress while it
runs, and its result."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from factory.pricing import Price
from factory.seeds import Seeds
from recipes.base import Recipe


@dataclass(slots=True)
class Budget:
    max_requests: int | None = None
    max_output_tokens: int | None = None
    max_usd: float | None = None


@dataclass(slots=True)
class Plan:
    run_id: str
    recipe: Recipe
    state: Any
    seeds: Seeds  # a checked seed file (streamed a window at a time) or a list
    budget: Budget = field(default_factory=Budget)
    commit_interval_s: float = 1.0
    max_seeds_in_flight: int | None = 64  # None: sized by the default teacher (Runner._window)
    template_version: str = ""
    retry_rejected: bool = False  # re-ask requests whose cached answer is a rejection (--retry-failed)
    drain_s: float = 30.0  # how long a drain waits for the requests in flight before abandoning them
    prices: dict[str, Price | None] = field(default_factory=dict)  # by teacher role; None: unknown


@dataclass(slots=True)
class Progress:
    seeds_total: int
    seeds_done: int
    seeds_failed: int
    records: int
    requests_sent: int
    cache_hits: int
    in_flight: int
    prompt_tokens: int
    completion_tokens: int
    failures: dict[str, int]
    elapsed_s: float
    seeds_resumed: int = 0  # done by an earlier invocation
    draining: bool = False  # stopping: no new request is sent, the ones sent (awaiting) are waited for
    awaiting: int = 0  # requests sent and not yet answered (in_flight also counts those queued to send)
    abandoned: int = 0  # requests in flight given up by the stop (sent again on resume)
    last_failure: str | None = None  # the latest failed attempt, one short line
    cost_usd: float = 0.0  # what this invocation's answers cost at the teachers' prices (an estimate)
    cost_known: bool = True  # False when a teacher that answered has no known price
    saved_usd: float = 0.0  # what the answers served from the cache cost when they were paid for
    pacing: str | None = None  # why starts are held now, e.g. "waiting 12 s: tokens per minute"
    budget: str | None = None  # the budget that stopped the run, and what was spent
    answered: int = 0  # requests the teachers answered (or finally failed) in this invocation
    # For a teacher that shows its tokens as they are generated (a local engine, ``streaming``): the output
    # tokens of the requests still in flight, the output tokens still expected (None: nothing to go by
    # yet), and the seconds since the first output token came.
    streaming: bool = False
    partial_tokens: int = 0
    tokens_left: float | None = None
    generating_s: float = 0.0

    @property
    def output_tokens(self) -> int:
        """Output tokens generated in this invocation: of the answers, and so far of those in flight."""
        return self.completion_tokens + self.partial_tokens

    waiting_on: str | None = None  # e.g. a provider batch and its state (teacher.mode: batch)

    @property
    def eta_s(self) -> float | None:
        """Seconds left: for a streaming teacher, the tokens still expected at the token rate so far
        (seeds of a local engine all finish together near the end, so their count says little until
        then); otherwise the seeds left at the rate seeds finished in this invocation."""
        if self.streaming:
            if self.tokens_left is None or self.generating_s <= 0 or self.output_tokens <= 0:
                return None
            return self.tokens_left * self.generating_s / self.output_tokens
        done_now = self.seeds_done - self.seeds_resumed
        if done_now <= 0 or self.elapsed_s <= 0:
            return None
        left = self.seeds_total - self.seeds_done - self.seeds_failed
        return left * self.elapsed_s / done_now


@dataclass(slots=True)
class Result:
    run_id: str
    status: str  # done | interrupted | budget | failed
    progress: Progress
    error: str | None = None
    exit_code: int | None = None  # of the error that stopped the run, for the CLI
    curation: Any = None  # the filter pass run after generation, when the config lists filters


__all__ = ["Budget", "Plan", "Progress", "Result"]
