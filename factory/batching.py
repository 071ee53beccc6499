"""Micro-batching on the event loop: callers await one item each; whatever piled up while the previous
batch ran goes out together as the next batch. Used for cache look-ups and for local engines."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class MicroBatcher(Generic[T, R]):
    def __init__(self, fn: Callable[[Sequence[T]], Awaitable[Sequence[R]]], max_batch: int = 4096):
        self._fn = fn
        self._max = max_batch
        self._queue: list[tuple[T, asyncio.Future[R]]] = []
        self._worker: asyncio.Task[None] | None = None

    async def submit(self, item: T) -> R:
        fut: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._queue.append((item, fut))
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(self._drain())
        return await fut

    async def _drain(self) -> None:
        await asyncio.sleep(0)  # let every task that is ready this tick add its item first
        while self._queue:
            chunk, self._queue = self._queue[: self._max], self._queue[self._max :]
            live = [(item, fut) for item, fut in chunk if not fut.done()]
            if not live:
                continue
            try:
                results = await self._fn([item for item, _ in live])
            except BaseException as exc:  # one failure fails the batch; callers decide what to do
                for _, fut in live:
                    if not fut.done():
                        fut.set_exception(exc)
                if isinstance(exc, asyncio.CancelledError):
                    raise
                continue
            for (_, fut), res in zip(live, results, strict=True):
                if not fut.done():
                    fut.set_result(res)
