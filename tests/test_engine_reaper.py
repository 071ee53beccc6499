"""A local engine's processes die with the run that started them (factory.teachers.reaper): a process that
starts "engine" processes (a child with a child of its own, as vLLM's engine core and its workers) is
killed with SIGKILL, and its watcher stops them; one that shuts down normally leaves nothing to stop."""

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

psutil = pytest.importorskip("psutil")

PARENT = textwrap.dedent(
    """
    import subprocess, sys, time
    from factory.teachers.reaper import EngineReaper, descendants, engine_processes
    before = descendants()
    # the engine: a process with a child of its own, which ignores SIGTERM (only SIGKILL stops it)
    subprocess.Popen([sys.executable, "-c", "import signal, subprocess, sys, time; "
        "signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); time.sleep(600)"])
    time.sleep(1.0)
    procs = engine_processes(before)
    reaper = EngineReaper()
    reaper.watch(procs)
    print(" ".join(str(p.pid) for p in procs), flush=True)
    if sys.argv[1] == "close":
        reaper.close()
        print("closed", flush=True)
    time.sleep(600)
    """
)


def _start(mode: str):
    proc = subprocess.Popen(
        [sys.executable, "-c", PARENT, mode], stdout=subprocess.PIPE, text=True, env={**os.environ}
    )
    pids = [int(x) for x in proc.stdout.readline().split()]
    assert len(pids) == 2, pids  # the engine and its child
    return proc, [psutil.Process(p) for p in pids]


def _gone(procs, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in procs):
            return True
        time.sleep(0.1)
    return False


@pytest.fixture
def cleanup():
    procs = []
    yield procs
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.kill()


def test_a_hard_kill_of_the_run_stops_its_engine_processes(cleanup):
    proc, engine = _start("kill")
    cleanup.extend(engine)
    assert all(p.is_running() for p in engine)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    # SIGTERM first (ignored here), then SIGKILL after the grace period
    assert _gone(engine, within=15), [p.pid for p in engine if p.is_running()]


def test_a_run_that_shuts_down_its_engine_itself_leaves_the_rest_alone(cleanup):
    proc, engine = _start("close")
    cleanup.extend(engine)
    assert proc.stdout.readline().strip() == "closed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(1.5)  # three of the watcher's polls: it left at the goodbye
    assert all(p.is_running() for p in engine)
