"""Run untrusted Python (a teacher's program) in a sandboxed subprocess.

The program's answer is the return value of a function ``solution()`` it defines (the PaL convention);
what it prints is kept as output but is not the answer. Defences, outermost first:

- a fresh ``python -I -S -B`` with an empty environment (no secret from ``os.environ`` can leak), started
  in its own session, in a fresh temporary directory that is deleted afterwards;
- fresh network and PID namespaces (``unshare``) when the kernel allows them: no interface but a downed
  loopback, and everything the program spawns dies with it; probed once per process;
- as root: the child drops to ``nobody`` (uid/gid 65534) with no supplementary groups and sets
  no_new_privs before any program code runs;
- rlimits: CPU seconds, address space, file size, open files, no new processes or threads, no core file;
- an audit hook that ends the program at the first socket, subprocess, exec, fork, kill, ctypes or gc
  introspection call, or file write outside its directory or read outside the standard library;
- a wall-clock timeout and output caps enforced by the parent, which SIGKILLs the whole process group.

The audit hook is a tripwire that gives clear reasons (PEP 578 says it is no sandbox by itself); the
kernel-level layers are the boundary. Only the standard library is importable (``-S``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SANDBOX_VERSION = "1"  # bump when a change can alter what a program returns
STATUSES = ("ok", "timeout", "memory", "killed", "error", "output_limit", "forbidden")
NOBODY = 65534
MAX_CONCURRENT = os.cpu_count() or 1
MAX_SOURCE_BYTES = 256 * 1024
PRELOAD = (
    "math", "cmath", "fractions", "decimal", "statistics", "itertools", "functools", "collections",
    "datetime", "re", "string", "operator", "heapq", "bisect", "random", "numbers", "time",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Limits:
    timeout_s: float = 5.0
    cpu_s: int = 2
    memory_mb: int = 256
    output_bytes: int = 64 * 1024  # per stream; beyond it the program is killed (output_limit)
    file_mb: int = 1  # largest file the program may write in its directory
    open_files: int = 32
    files_written: int = 64  # files and directories it may create or open for writing (audit hook)
    preload: tuple[str, ...] = PRELOAD  # imported before the privilege drop
    # Each switch turns one layer off, for tests that check another layer alone. Leave them on.
    audit: bool = True
    namespaces: bool = True
    drop_privileges: bool = True


@dataclass(frozen=True, slots=True)
class SandboxResult:
    status: str  # one of STATUSES
    answer: str | None  # str() of solution()'s return value (repr() for a float); None if it returned None
    stdout: str  # at most Limits.output_bytes
    stderr: str  # the last 2000 characters
    wall_s: float
    reason: str  # for people: why the status is what it is
    isolation: str  # the layers that were in place, e.g. "netns+pidns, uid 65534, rlimits, audit"

    @property
    def ok(self) -> bool:
        return self.status == "ok"


CHILD = Path(__file__).with_name("sandbox_child.py")  # runs as the parent's user until it drops privileges


@functools.cache
def _namespaces() -> tuple[tuple[str, ...], str]:
    """The ``unshare`` prefix that works here (probed once), and its name for the report."""
    exe = shutil.which("unshare") or "/usr/bin/unshare"
    user = () if os.geteuid() == 0 else ("--user",)
    for flags, name in ((("--net", "--pid", "--fork", "--kill-child"), "netns+pidns"), (("--net",), "netns")):
        cmd = (exe, *user, *flags)
        try:
            if subprocess.run([*cmd, "true"], capture_output=True, timeout=10, env={}).returncode == 0:
                return cmd, name + ("+userns" if user else "")
        except (OSError, subprocess.SubprocessError):
            break
    log.warning("no network namespace available (unshare failed): sandboxed programs share the network")
    return (), "no namespaces"


_slots: dict[asyncio.AbstractEventLoop, asyncio.Semaphore] = {}


def _slot() -> asyncio.Semaphore:
    """At most MAX_CONCURRENT sandboxes at once (per event loop; a factory run has one)."""
    loop = asyncio.get_running_loop()
    for old in [lp for lp in _slots if lp.is_closed()]:
        del _slots[old]
    return _slots.setdefault(loop, asyncio.Semaphore(MAX_CONCURRENT))


async def run_program(source: str, limits: Limits | None = None) -> SandboxResult:
    """Run ``source`` in the sandbox and return what happened; never raises for anything the program does."""
    async with _slot():
        return await _run(source, limits or Limits())


def run_program_sync(source: str, limits: Limits | None = None) -> SandboxResult:
    return asyncio.run(run_program(source, limits))


async def _drain(stream: asyncio.StreamReader, cap: int, over: asyncio.Event) -> bytes:
    """The first ``cap`` bytes; past them ``over`` is set (the parent then kills the child) and the rest
    is read and dropped until EOF, so that the pipe's transport closes."""
    buf = bytearray()
    while chunk := await stream.read(65536):
        if len(buf) + len(chunk) > cap:
            buf += chunk[: cap - len(buf)]
            over.set()
        else:
            buf += chunk
    return bytes(buf)


def _reports(fd: int) -> list[dict[str, object]]:
    os.set_blocking(fd, False)
    raw = b""
    with contextlib.suppress(BlockingIOError, OSError):
        while (chunk := os.read(fd, 65536)) and len(raw) < 1 << 20:
            raw += chunk
    out = []
    for line in raw.splitlines():
        with contextlib.suppress(ValueError):
            if isinstance(obj := json.loads(line), dict):
                out.append(obj)
    return out


async def _run(source: str, lim: Limits) -> SandboxResult:
    t0 = time.monotonic()
    raw = source.encode("utf-8", "replace")
    prefix, isolation = await asyncio.to_thread(_namespaces) if lim.namespaces else ((), "no namespaces")
    uid = NOBODY if lim.drop_privileges and os.geteuid() == 0 else None
    layers = f"{isolation}, uid {uid if uid is not None else os.geteuid()}, rlimits" + (
        ", audit" if lim.audit else ""
    )
    if len(raw) > MAX_SOURCE_BYTES:
        return SandboxResult(
            "error", None, "", "", 0.0, f"program longer than {MAX_SOURCE_BYTES} bytes", layers
        )
    mb = 1024 * 1024
    rlimits = {
        "RLIMIT_CPU": (lim.cpu_s, lim.cpu_s + 1), "RLIMIT_AS": (lim.memory_mb * mb,) * 2,
        "RLIMIT_FSIZE": (lim.file_mb * mb,) * 2, "RLIMIT_NOFILE": (lim.open_files,) * 2,
        "RLIMIT_NPROC": (0, 0), "RLIMIT_CORE": (0, 0),
    }  # fmt: skip
    tmp = tempfile.mkdtemp(prefix="factory-sandbox-")
    r, w = os.pipe()
    proc: asyncio.subprocess.Process | None = None
    tasks: list[asyncio.Task[Any]] = []
    over, outcome = asyncio.Event(), None
    try:
        if uid is not None:
            os.chown(tmp, uid, uid)
        cfg = {"fd": w, "uid": uid, "rlimits": rlimits, "audit": lim.audit, "writes": lim.files_written,
               "cpu": lim.cpu_s, "mem": lim.memory_mb, "preload": list(lim.preload)}  # fmt: skip
        proc = await asyncio.create_subprocess_exec(
            *prefix, sys.executable, "-I", "-S", "-B", "-X", "utf8", str(CHILD), json.dumps(cfg),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env={}, cwd=tmp, pass_fds=(w,), start_new_session=True,
        )  # fmt: skip
        os.close(w)
        w = -1
        assert proc.stdin and proc.stdout and proc.stderr
        stdin = proc.stdin

        async def feed() -> None:
            with contextlib.suppress(OSError):  # the child may be gone already
                stdin.write(raw)
                await stdin.drain()
                stdin.close()

        tasks = [asyncio.ensure_future(x) for x in (
            _drain(proc.stdout, lim.output_bytes, over), _drain(proc.stderr, lim.output_bytes, over),
            feed(), proc.wait(), over.wait(),
        )]  # fmt: skip
        done, _ = await asyncio.wait(tasks[3:], timeout=lim.timeout_s, return_when=asyncio.FIRST_COMPLETED)
        outcome = "output_limit" if over.is_set() else None if tasks[3] in done else "timeout"
    finally:
        try:
            if proc is not None:
                await _kill(proc)
            if tasks:  # readers end at EOF; one that a stray holder keeps open is cut off
                await asyncio.wait(tasks[:3], timeout=1.0)
        finally:  # also when cancelled while killing
            for t in tasks:
                t.cancel()
            reports = _reports(r)
            for fd in (r, w):
                if fd >= 0:
                    os.close(fd)
            await asyncio.to_thread(shutil.rmtree, tmp, True)
    wall = time.monotonic() - t0
    stdout, stderr = (_text(t) for t in tasks[:2]) if tasks else ("", "")
    final = next((x for x in reports if x.get("status") == "forbidden"), reports[-1] if reports else None)
    answer = None
    if final is not None and final.get("status") == "forbidden":
        status, reason = "forbidden", str(final.get("reason"))
    elif outcome == "output_limit":
        status, reason = "output_limit", f"output over {lim.output_bytes} bytes"
    elif final is not None and final.get("status") in STATUSES:  # it finished, even if our timer fired late
        status, reason = str(final["status"]), str(final.get("reason") or "")
        answer = None if final.get("answer") is None else str(final["answer"])
    elif outcome == "timeout":
        status, reason = "timeout", f"wall-clock limit ({lim.timeout_s:g} s) exceeded"
    else:
        status, reason = _no_report(proc.returncode if proc else None, stderr, wall, lim)
    log.debug("sandbox: %s in %.3f s (%s)", status, wall, reason)
    return SandboxResult(status, answer, stdout, stderr[-2000:], round(wall, 3), reason, layers)


async def _kill(proc: asyncio.subprocess.Process) -> None:
    """SIGKILL all the sandbox started. With a PID namespace its init goes first, so that unshare reaps it
    (killed together, the init would be left to the host's init as a zombie); then the whole group."""
    if proc.returncode is None:
        for pid in _children(proc.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(proc.wait(), 1.0)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # done or not: anything left in the group
    await proc.wait()
    await _gone(proc.pid)


def _children(pid: int) -> list[int]:
    try:
        return [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except (OSError, ValueError):  # a kernel without CONFIG_PROC_CHILDREN: scan /proc
        out = []
        for d in Path("/proc").iterdir():
            with contextlib.suppress(OSError, ValueError, IndexError):
                if d.name.isdigit() and int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(d.name))
        return out


async def _gone(pgid: int, wait_s: float = 2.0) -> None:
    """Wait until no process of the group is left (a killed namespace init is reaped by the host's init)."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return
        await asyncio.sleep(0.01)
    log.warning("sandbox process group %d still present %.0f s after SIGKILL", pgid, wait_s)


def _text(task: asyncio.Task[Any]) -> str:
    if task.done() and not task.cancelled() and task.exception() is None:
        data = task.result()
        return data.decode("utf-8", "replace") if isinstance(data, bytes) else ""
    return ""


def _no_report(rc: int | None, stderr: str, wall: float, lim: Limits) -> tuple[str, str]:
    """The child ended without reporting: a signal, or the bootstrap failed before the program ran."""
    # unshare --fork passes a child's signal on by raising it, except SIGKILL, which it cannot raise.
    sig = -rc if rc is not None and rc < 0 else None
    if sig is None and rc == 1 and "sigprocmask unblock failed" in stderr:
        sig = signal.SIGKILL
    if sig == signal.SIGKILL and wall >= lim.cpu_s:
        return "timeout", f"CPU time hard limit ({lim.cpu_s + 1} s) reached"
    if sig is not None:
        return "killed", f"killed by {signal.Signals(sig).name}"
    last = stderr.strip().splitlines()[-1:] or [""]
    return "error", f"the sandbox exited with code {rc} before the program finished: {last[0][:200]}"
