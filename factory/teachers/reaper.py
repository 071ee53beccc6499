"""Engine processes that die with the run that started them.

vLLM runs its engine in processes of its own (``VLLM::EngineCore``, and a ``VLLM::Worker`` per GPU when
the model is split). A worker watches its engine core, but nothing watches the process that started the
engine: after a `factory run` is killed with SIGKILL (by hand, by the OOM killer, by a scheduler's time
limit) the engine core and its workers live on, holding the GPU's memory, until someone kills them. vLLM
runs no code of ours in those processes (its plugins are found through installed package metadata, and
its processes may be forked or spawned), so the watching is done from outside: a small process of this
module, started by the run's process once the engine is up and told the engine's processes. It checks
every ``POLL_S`` whether its parent is still there; when the parent is gone without having said goodbye,
it stops each engine process and its children: SIGTERM (vLLM's own clean shutdown), then SIGKILL to what
is left after ``GRACE_S``. A normal shutdown says goodbye first, and the watcher leaves. A Ctrl+C is the
run's to handle: the watcher ignores it.

Protocol on the watcher's stdin, one line each: ``watch PID START_TIME`` (the start time guards against a
reused pid) and ``bye``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import subprocess
import sys
from collections.abc import Iterable
from typing import Any

log = logging.getLogger(__name__)

POLL_S = 0.5  # how often the watcher looks for its parent
GRACE_S = 5.0  # between SIGTERM and SIGKILL


class EngineReaper:
    """The run's side: starts the watcher and tells it the processes to stop should this process die."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = subprocess.Popen(
            [sys.executable, "-m", "factory.teachers.reaper", str(os.getpid())],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip

    def watch(self, procs: Iterable[Any]) -> None:
        """Processes (psutil.Process) to stop, with their children, if this process dies."""
        lines = "".join(f"watch {p.pid} {p.create_time()!r}\n" for p in procs)
        self._send(lines)

    def close(self) -> None:
        """This process is shutting its engine down itself: the watcher leaves without stopping anything."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        with contextlib.suppress(OSError, ValueError):
            assert proc.stdin is not None
            proc.stdin.write(b"bye\n")
            proc.stdin.close()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def _send(self, text: str) -> None:
        if self._proc is None or not text:
            return
        try:
            assert self._proc.stdin is not None
            self._proc.stdin.write(text.encode())
            self._proc.stdin.flush()
        except (OSError, ValueError) as exc:  # the watcher is gone: the engine runs unwatched, as before
            log.warning(
                "the engine's watcher process is gone (%r): a hard kill may leave the engine running", exc
            )


def engine_processes(before: set[int]) -> list[Any]:
    """This process's descendants that were not there in ``before`` (pids): the engine just started, less
    multiprocessing's resource tracker (it leaves by itself, and cleans up what the engine shared)."""
    import psutil

    out = []
    for p in psutil.Process().children(recursive=True):
        if p.pid in before:
            continue
        with contextlib.suppress(psutil.Error):
            if any("resource_tracker" in part for part in p.cmdline()):
                continue
            out.append(p)
    return out


def descendants() -> set[int]:
    import psutil

    return {p.pid for p in psutil.Process().children(recursive=True)}


# -- the watcher ------------------------------------------------------------------------------------------
def _stop(watched: dict[int, float]) -> None:
    import psutil

    procs: dict[int, Any] = {}
    for pid, started in watched.items():
        try:
            p = psutil.Process(pid)
            if abs(p.create_time() - started) > 0.01:  # the pid now belongs to another process
                continue
            for q in [p, *p.children(recursive=True)]:
                procs[q.pid] = q
        except psutil.Error:
            continue
    for q in procs.values():
        with contextlib.suppress(psutil.Error):
            q.terminate()
    _, alive = psutil.wait_procs(list(procs.values()), timeout=GRACE_S)
    for q in alive:
        with contextlib.suppress(psutil.Error):
            q.kill()


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl+C in the terminal is the run's to handle
    parent = int(argv[0])
    watched: dict[int, float] = {}
    buf = b""
    fd = sys.stdin.fileno()
    open_ = True
    while True:
        if open_:
            ready, _, _ = select.select([fd], [], [], POLL_S)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    open_ = False  # closed without a goodbye: the parent may be dying; its pid says
                buf += chunk
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    parts = line.split()
                    if parts[:1] == [b"bye"]:
                        return 0
                    if parts[:1] == [b"watch"] and len(parts) == 3:
                        watched[int(parts[1])] = float(parts[2])
        else:
            select.select([], [], [], POLL_S)
        if os.getppid() != parent:  # the run's process is gone
            _stop(watched)
            return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
