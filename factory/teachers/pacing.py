"""Request pacing for API teachers: a told requests-per-minute limit, and one learnt from 429s.

One :class:`Pacer` per teacher; every attempt waits on it for its start time before it is sent.

- Told (``max_requests_per_minute``): starts are spaced evenly at that rate (GCRA, the cell-rate
  algorithm: a virtual "next start" time advanced by 1/rate per request), so a provider's bucket never
  empties and nothing is spent on 429s.
- Not told: nothing is paced until the first 429. Then the rate starts at half of what was being sent
  and adapts: cut by ``DECREASE`` on a 429 from a request sent at the current rate, raised by
  ``INCREASE`` after each second without one. A told limit is the ceiling of the learnt one.
- Every 429's ``Retry-After`` pauses all starts of the teacher, not only the request that got it.

A rate or pause change moves every waiting request to a new start time, so a burst granted at the old
rate is not sent after the server said stop.

Tokens (``max_tokens_per_minute``): the same cell-rate spacing, weighted. Each start reserves its estimate
(the request body's bytes / 4 for the prompt, plus its ``max_tokens``) and moves a second virtual "next
start" time by estimate / (limit / 60) seconds; a start waits for both clocks. The answer's real usage
corrects the reservation (:meth:`Pacer.used`): the clock moves back by what was not spent (never before
now) or on by what was spent beyond it. A request estimated above the whole minute's limit reserves exactly
the limit: it holds the token clock for one minute, then goes, rather than never.

Provider headers (OpenAI's ``x-ratelimit-*``, :meth:`Pacer.observe`): a ``remaining-requests`` or
``remaining-tokens`` of 0 holds every start until its ``reset-*``; ``limit-requests`` / ``limit-tokens``
set the limits when none was told. Durations are Go-style (``1s``, ``6m0s``, ``20ms``, ``1h2m3.5s``);
a value that doesn't parse is ignored (logged at debug).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Mapping

log = logging.getLogger(__name__)

DECREASE = 0.85
ADMITTED = 0.95  # a cut keeps at least this share of the answers per second of the last 1-2 s
INCREASE = 1.1
PROBE_EVERY_S = 1.0
MIN_RATE = 1.0 / 60.0  # one request a minute


HELD_BY = {
    "tokens": "tokens per minute",
    "requests": "requests per minute",
    "pause": "the provider's rate limit (429 Retry-After or x-ratelimit reset)",
}

_DURATION = re.compile(
    r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?(?:(\d+(?:\.\d+)?)ms)?"
)
_COUNT = re.compile(r"\d+")


def parse_duration(value: str) -> float | None:
    """Seconds in a Go-style duration (``1s``, ``6m0s``, ``20ms``, ``1h2m3.5s``); None if it isn't one."""
    m = _DURATION.fullmatch(value.strip())
    if m is None or not any(m.groups()):
        return None
    h, mi, sec, ms = (float(g) if g else 0.0 for g in m.groups())
    return h * 3600.0 + mi * 60.0 + sec + ms / 1000.0


RATELIMIT_HEADERS = tuple(
    f"x-ratelimit-{what}-{kind}" for what in ("limit", "remaining") for kind in ("requests", "tokens")
)


def _header(headers: Mapping[str, str], name: str, parse: str) -> float | None:
    raw = headers.get(name)
    if raw is None:
        return None
    if parse == "duration":
        value = parse_duration(raw)
    else:
        value = float(raw.strip()) if _COUNT.fullmatch(raw.strip()) else None
    if value is None:
        log.debug("ignored header %s: %r is not a %s", name, raw, parse)
    return value


class _Meter:
    """Events per second over the last one to two whole seconds: two counters, no timestamps kept."""

    __slots__ = ("before", "now", "second")

    def __init__(self) -> None:
        self.second, self.now, self.before = 0, 0, 0

    def add(self, t: float, n: int = 1) -> None:
        second = int(t)
        if second != self.second:
            self.before = self.now if second == self.second + 1 else 0
            self.now, self.second = 0, second
        self.now += n

    def rate(self, t: float) -> float:
        second = int(t)
        if second == self.second:
            return (self.before + self.now) / (1.0 + t - second)
        if second == self.second + 1:
            return self.now / (1.0 + t - second)
        return 0.0


class Pacer:
    __slots__ = (
        "_answered",
        "_changed",
        "_held_by",
        "_held_until",
        "_learn",
        "_next",
        "_paused_until",
        "_plan",
        "_sent",
        "_through",
        "_tok_next",
        "ceiling",
        "epoch",
        "rate",
        "tokens_per_minute",
        "waiting_for",
    )  # fmt: skip

    def __init__(
        self,
        requests_per_minute: float | None = None,
        *,
        learn: bool = True,
        tokens_per_minute: float | None = None,
    ):
        self.tokens_per_minute = tokens_per_minute or None
        self._tok_next = 0.0  # the earliest start by the token limit (monotonic seconds)
        self.waiting_for = ""  # why the last start was held: "requests", "tokens", "pause" or ""
        self._held_until = 0.0  # the latest start booked later than asked for, and why (for holding())
        self._held_by = ""
        self.ceiling = requests_per_minute / 60.0 if requests_per_minute else None
        self.rate: float | None = self.ceiling  # starts per second; None: unpaced
        self.epoch = 0  # bumped on every cut: a 429 from an older epoch doesn't cut again
        self._plan = 0  # bumped on every cut and pause: waiting requests take new start times
        self._next = 0.0  # the earliest start of the next request (monotonic seconds)
        self._paused_until = 0.0
        self._changed = 0.0
        self._learn = learn
        self._through = False  # a request got through since the last cut
        self._sent = _Meter()
        self._answered = _Meter()

    @property
    def active(self) -> bool:
        """Whether starts are held back at all (a rate, a token limit, or a pause since the first 429)."""
        return self.rate is not None or self._paused_until != 0.0 or self.tokens_per_minute is not None

    def _token_s(self, tokens: float) -> float:
        """Seconds of the token limit that ``tokens`` take; a request never takes more than a minute."""
        tpm = self.tokens_per_minute
        return min(max(tokens, 0.0), tpm) * 60.0 / tpm if tpm else 0.0

    def take(self, now: float, tokens: int = 0) -> float:
        """The start time of the next request reserving ``tokens``, booked."""
        by_rate = max(now, self._next)
        start = max(by_rate, self._paused_until)
        held = self._paused_until >= by_rate and self._paused_until > now
        self.waiting_for = "pause" if held else "requests" if by_rate > now else ""
        if self.tokens_per_minute is not None:
            by_tokens = max(now, self._tok_next)
            self._tok_next = by_tokens + self._token_s(tokens)
            if by_tokens > start:
                start, self.waiting_for = by_tokens, "tokens"
        if self.rate is not None:
            self._next = start + 1.0 / self.rate
        if start > now and start >= self._held_until:
            self._held_until, self._held_by = start, self.waiting_for
        self._sent.add(now)
        return start

    def holding(self, now: float | None = None) -> str | None:
        """Why starts are held now, and for how long the last one booked waits: ``"waiting 12 s: tokens per
        minute"``; None when nothing waits a second or more."""
        now = time.monotonic() if now is None else now
        left = max(self._held_until, self._paused_until) - now
        if left < 1.0:
            return None
        by = "pause" if self._paused_until - now >= left else self._held_by
        return f"waiting {left:.0f} s: {HELD_BY.get(by, by or 'pacing')}"

    async def wait(self, tokens: int = 0) -> int:
        """Wait for the start of a request reserving ``tokens``; return the epoch it starts in (pass it to
        :meth:`limited`)."""
        if not self.active:
            self._sent.add(time.monotonic())
            return self.epoch
        while True:
            now = time.monotonic()
            plan = self._plan
            booked = self._token_s(tokens)  # 0 while no token limit is known
            start = self.take(now, tokens)
            if start > now:
                await asyncio.sleep(start - now)
                if self._plan != plan:
                    self._tok_next -= booked  # booked again below
                    continue
            self.waiting_for = ""
            return self.epoch

    def used(self, reserved: int, tokens: int) -> None:
        """A request that reserved ``reserved`` tokens used ``tokens``: give back (or take) the difference."""
        if self.tokens_per_minute is None or tokens <= 0:
            return
        unspent = self._token_s(reserved) - min(tokens, reserved) * 60.0 / self.tokens_per_minute
        over = self._token_s(tokens - reserved)
        self._tok_next = max(time.monotonic(), self._tok_next - unspent) + over

    def observe(self, headers: Mapping[str, str]) -> None:
        """Use a response's ``x-ratelimit-*`` headers: learn untold limits, hold starts on an empty one."""
        for name in RATELIMIT_HEADERS:  # a server that sends none costs a few look-ups per answer
            if name in headers:
                break
        else:
            return
        limit_tokens = _header(headers, "x-ratelimit-limit-tokens", "count")
        if limit_tokens and self.tokens_per_minute is None:
            self.tokens_per_minute = limit_tokens
        limit_requests = _header(headers, "x-ratelimit-limit-requests", "count")
        if limit_requests and self.ceiling is None:
            self.ceiling = limit_requests / 60.0
            self.rate = self.ceiling if self.rate is None else min(self.rate, self.ceiling)
        now = time.monotonic()
        until = self._paused_until
        for kind in ("requests", "tokens"):
            if _header(headers, f"x-ratelimit-remaining-{kind}", "count") == 0:
                reset = _header(headers, f"x-ratelimit-reset-{kind}", "duration")
                if reset:
                    until = max(until, now + reset)
        if until > self._paused_until:
            self._paused_until = until
            self._plan += 1

    def limited(self, epoch: int, retry_after: float | None) -> None:
        """A request started in ``epoch`` got a 429."""
        now = time.monotonic()
        replan = False
        if retry_after and now + retry_after > self._paused_until:
            self._paused_until = now + retry_after
            replan = True
        # a 429 from a request that started before the last cut says nothing about the current rate
        if self._learn and epoch == self.epoch and (self._through or self.rate is None):
            self._through = False
            if self.rate is None:
                rate = self._sent.rate(now) / 2.0
            else:  # not below what the server has been letting through
                rate = max(self.rate * DECREASE, ADMITTED * self._answered.rate(now))
            self._set_rate(max(MIN_RATE, rate))
            self.epoch += 1
            self._changed = now
            replan = True
        if replan:
            self._plan += 1
            self._next = max(now, self._paused_until)

    def answered(self, n: int = 1) -> None:
        """``n`` requests got through: after a quiet second, probe a little higher."""
        if self.rate is None or not self._learn:
            return
        now = time.monotonic()
        self._answered.add(now, n)
        self._through = True
        if now - self._changed >= PROBE_EVERY_S:
            self._set_rate(self.rate * INCREASE)
            self._changed = now

    def _set_rate(self, rate: float) -> None:
        self.rate = min(rate, self.ceiling) if self.ceiling else rate
