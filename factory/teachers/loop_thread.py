"""An asyncio loop on a thread of its own, for an async engine that must outlive its callers' loops.

An async engine (vLLM's ``AsyncLLM``) binds its sockets and background tasks to the loop it starts on.
The factory's callers bring their own loops (each ``asyncio.run`` of the API, a notebook's loop, a cluster
worker's shards), so the engine lives on this thread's loop instead, and callers hand it coroutines with
:meth:`LoopThread.call`. Cancelling the awaiting caller cancels the coroutine on this loop too.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class LoopThread:
    def __init__(self, name: str):
        self._name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def _started(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=loop.run_forever, name=self._name, daemon=True)
                thread.start()
                self._loop, self._thread = loop, thread
            return self._loop

    async def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on this thread's loop and await its result from the caller's loop."""
        fut = asyncio.run_coroutine_threadsafe(coro, self._started())
        return await asyncio.wrap_future(fut)

    @property
    def running(self) -> bool:
        return self._loop is not None

    def stop(self) -> None:
        """Stop the loop and join the thread (blocking: call it off any loop). Tasks left on the loop are
        cancelled first. A later :meth:`call` starts a fresh loop."""
        with self._lock:
            loop, thread, self._loop, self._thread = self._loop, self._thread, None, None
        if loop is None or thread is None:
            return

        async def _cancel_rest() -> None:
            rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in rest:
                t.cancel()
            await asyncio.gather(*rest, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(_cancel_rest(), loop).result(timeout=30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=30)
        if not thread.is_alive():
            loop.close()
