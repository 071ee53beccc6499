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
"""

from __future__ import annotations

import asyncio
import time

DECREASE = 0.85
ADMITTED = 0.95  # a cut keeps at least this share of the answers per second of the last 1-2 s
INCREASE = 1.1
PROBE_EVERY_S = 1.0
MIN_RATE = 1.0 / 60.0  # one request a minute


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
        "_learn",
        "_next",
        "_paused_until",
        "_plan",
        "_sent",
        "_through",
        "ceiling",
        "epoch",
        "rate",
    )  # fmt: skip

    def __init__(self, requests_per_minute: float | None = None, *, learn: bool = True):
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
        """Whether starts are held back at all (a rate, or a pause since the first 429)."""
        return self.rate is not None or self._paused_until != 0.0

    def take(self, now: float) -> float:
        """The start time of the next request, booked."""
        start = max(now, self._paused_until, self._next)
        if self.rate is not None:
            self._next = start + 1.0 / self.rate
        self._sent.add(now)
        return start

    async def wait(self) -> int:
        """Wait for this request's start; return the epoch it starts in (pass it to :meth:`limited`)."""
        if not self.active:
            self._sent.add(time.monotonic())
            return self.epoch
        while True:
            now = time.monotonic()
            plan = self._plan
            start = self.take(now)
            if start > now:
                await asyncio.sleep(start - now)
                if self._plan != plan:
                    continue
            return self.epoch

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
