"""The sandbox against hostile programs: each is contained, reported with the right status and reason, and
the machine is left as it was. Where a test turns one layer off, it checks that the next layer holds alone.
Every hostile program is bounded by more than one layer (wall clock, CPU, rlimits), so a failing defence
fails the test instead of harming the machine."""

from __future__ import annotations

import asyncio
import itertools
import os
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from factory import sandbox
from factory.sandbox import PRELOAD, Limits, run_program, run_program_sync

ROOT = Path(__file__).resolve().parents[1]
SECRET = "factory-test-secret-6b1f0c"
# Where 'nobody' cannot read the standard library (here: it lives under /root), modules must be preloaded
# for a hostile program to reach the layer under test instead of failing at import.
HOSTILE = (*PRELOAD, "socket", "multiprocessing", "multiprocessing.popen_fork", "subprocess")


def _sandbox_processes() -> list[str]:
    """Processes of the sandbox uid or running the sandbox child, with their state."""
    out = subprocess.run(["ps", "-eo", "pid,uid,stat,args"], capture_output=True, text=True).stdout
    rows = out.splitlines()[1:]
    return [r for r in rows if r.split()[1] == str(sandbox.NOBODY) or "sandbox_child.py" in r]


def _mem_available_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) // 1024
    return 0


def _sandbox_dirs() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob("factory-sandbox-*")}


@pytest.fixture
def unharmed():
    """Afterwards: no process of the sandbox left, no file new in the project, temp dirs gone, memory fine."""
    project, dirs, mem = set(os.listdir(ROOT)), _sandbox_dirs(), _mem_available_mb()
    yield
    assert _sandbox_processes() == []
    assert set(os.listdir(ROOT)) - project == set()
    assert _sandbox_dirs() - dirs == set()
    assert _mem_available_mb() > mem - 2000  # others share this machine: only a gross leak fails


def both_layers(**kw):
    """The full sandbox, and the same without the audit hook (the kernel-level layers alone)."""
    return pytest.mark.parametrize(
        "limits", [Limits(**kw), Limits(audit=False, **kw)], ids=["all-layers", "without-audit-hook"]
    )


def test_well_behaved_program_returns_its_answer(unharmed):
    r = run_program_sync(
        "import math\nprint('working')\ndef solution():\n    return math.ceil(5 * 8 - 12.5)\n"
    )
    assert (r.status, r.answer, r.stdout, r.reason) == ("ok", "28", "working\n", "")
    assert "audit" in r.isolation and "rlimits" in r.isolation


def test_answer_conventions():
    assert run_program_sync("def solution():\n    return 0.1 + 0.2\n").answer == "0.30000000000000004"
    assert run_program_sync("def solution():\n    pass\n").answer is None
    r = run_program_sync("answer = 3\n")
    assert (r.status, r.reason) == ("error", "the program defines no solution() function")
    r = run_program_sync("def solution():\n    x = 1\n    return x / 0\n")
    assert r.status == "error" and r.reason == "ZeroDivisionError: division by zero (line 3)"
    assert "return x / 0" in r.stderr and "sandbox_child" not in r.stderr
    r = run_program_sync("def solution(:\n")
    assert r.status == "error" and r.reason.startswith("SyntaxError")


@both_layers()
def test_infinite_loop_hits_the_cpu_limit(unharmed, limits):
    r = run_program_sync("def solution():\n    while True:\n        pass\n", limits)
    assert r.status == "timeout" and "CPU time" in r.reason


def test_sleeping_program_hits_the_wall_clock(unharmed):
    t0 = time.monotonic()
    r = run_program_sync("import time\ndef solution():\n    time.sleep(60)\n", Limits(timeout_s=1))
    assert r.status == "timeout" and r.reason == "wall-clock limit (1 s) exceeded"
    assert time.monotonic() - t0 < 10


@both_layers(preload=HOSTILE)
def test_fork_bomb_is_contained(unharmed, limits):
    r = run_program_sync("import os\ndef solution():\n    while True:\n        os.fork()\n", limits)
    if limits.audit:
        assert (r.status, r.reason) == ("forbidden", "os.fork is not allowed")
    else:  # RLIMIT_NPROC = 0 for the unprivileged uid: not even one fork
        assert r.status == "error" and "Resource temporarily unavailable" in r.reason


def test_multiprocessing_is_refused(unharmed):
    src = "import multiprocessing as mp\ndef solution():\n    p = mp.Process(target=print)\n    p.start()\n"
    r = run_program_sync(src, Limits(preload=HOSTILE))
    assert r.status == "forbidden" and "fork" in r.reason


@both_layers(preload=HOSTILE)
def test_subprocess_is_refused(unharmed, limits):
    r = run_program_sync("import subprocess\ndef solution():\n    subprocess.run(['true'])\n", limits)
    if limits.audit:
        assert r.status == "forbidden"
    else:
        assert r.status == "error" and ("Resource temporarily unavailable" in r.reason or "Errno" in r.reason)


@both_layers()
def test_ten_gigabyte_allocation_hits_the_memory_limit(unharmed, limits):
    r = run_program_sync("def solution():\n    return len(bytearray(10 * 1024**3))\n", limits)
    assert (r.status, r.reason) == ("memory", "out of memory (address space limit 256 MB)")


def test_growing_allocation_hits_the_memory_limit(unharmed):
    r = run_program_sync(
        "def solution():\n    xs = []\n    while True:\n        xs.append(bytearray(1 << 20))\n"
    )
    assert r.status == "memory"


@both_layers(preload=HOSTILE)
def test_socket_connect_to_a_listening_port_gets_nowhere(unharmed, limits):
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(8)
        srv.setblocking(False)
        port = srv.getsockname()[1]
        src = (
            "import socket\ndef solution():\n    s = socket.socket()\n    s.settimeout(2)\n"
            f"    s.connect(('127.0.0.1', {port}))\n    return 1\n"
        )
        r = run_program_sync(src, limits)
        if limits.audit:
            assert r.status == "forbidden" and r.reason == "socket.__new__ is not allowed"
        else:  # a fresh network namespace: its loopback is down
            assert r.status == "error" and "Network is unreachable" in r.reason
        with pytest.raises(BlockingIOError):
            srv.accept()


def test_audit_hook_alone_refuses_sockets_without_a_namespace(unharmed):
    r = run_program_sync(
        "import socket\ndef solution():\n    socket.socket()\n", Limits(preload=HOSTILE, namespaces=False)
    )
    assert r.status == "forbidden" and r.isolation.startswith("no namespaces")


@both_layers()
def test_write_into_the_project_directory_fails(unharmed, limits):
    target = ROOT / "sandbox_was_here.txt"
    r = run_program_sync(f"def solution():\n    open({str(target)!r}, 'w').write('x')\n", limits)
    if limits.audit:
        assert r.status == "forbidden" and r.reason == f"writing {target} outside the sandbox directory"
    else:  # uid 'nobody' has no write permission there
        assert r.status == "error" and "Permission denied" in r.reason
    assert not target.exists()


def test_write_through_a_symlink_or_str_subclass_is_refused(unharmed):
    src = "import os\ndef solution():\n    os.symlink('/work', 'ln')\n    open('ln/x', 'w')\n"
    assert run_program_sync(src).status == "forbidden"
    src = f"class S(str):\n    def startswith(self, *a):\n        return True\ndef solution():\n    open(S({str(ROOT / 'x')!r}), 'w')\n"
    r = run_program_sync(src)
    assert r.status == "forbidden" and str(ROOT) in r.reason


def test_files_in_its_own_directory_are_allowed_and_capped(unharmed):
    r = run_program_sync(
        "def solution():\n    open('a.txt', 'w').write('41')\n    return int(open('a.txt').read()) + 1\n"
    )
    assert (r.status, r.answer) == ("ok", "42")
    big = "def solution():\n    open('big', 'wb').write(b'x' * (2 << 20))\n"  # RLIMIT_FSIZE is 1 MB
    r = run_program_sync(big)
    assert r.status == "error" and "File too large" in r.reason
    r = run_program_sync("import os\ndef solution():\n    for i in range(10**6):\n        os.mkdir(str(i))\n")
    assert (r.status, r.reason) == ("forbidden", "more than 64 files created or opened for writing")


def test_tracing_the_hook_is_refused(unharmed):
    r = run_program_sync("import sys\ndef solution():\n    sys.settrace(lambda *a: None)\n")
    assert (r.status, r.reason) == ("forbidden", "sys.settrace is not allowed")


@both_layers()
def test_secret_from_the_environment_does_not_leak(unharmed, limits, monkeypatch):
    monkeypatch.setenv("FACTORY_TEST_SECRET", SECRET)
    src = (
        "import os\ndef solution():\n    print(dict(os.environ))\n"
        f"    print(open('/proc/{os.getpid()}/environ', 'rb').read())\n"
    )
    r = run_program_sync(src, limits)
    assert SECRET not in r.stdout + r.stderr + r.reason + str(r.answer)
    assert "FACTORY_TEST_SECRET" not in r.stdout
    if limits.audit:
        assert r.status == "forbidden" and "/environ outside the standard library" in r.reason
    else:  # another uid's environ is unreadable
        assert r.status == "error" and "Permission denied" in r.reason


@both_layers()
def test_huge_output_is_cut_off(unharmed, limits):
    r = run_program_sync("def solution():\n    while True:\n        print('x' * 1000)\n", limits)
    assert r.status == "output_limit" and len(r.stdout) == limits.output_bytes
    r = run_program_sync(
        "import sys\ndef solution():\n    while True:\n        sys.stderr.write('y' * 1000)\n", limits
    )
    assert r.status == "output_limit"


def test_too_many_open_files(unharmed):
    r = run_program_sync("def solution():\n    fs = [open('/dev/null') for _ in range(100)]\n")
    assert r.status == "error" and "Too many open files" in r.reason


def test_reading_outside_the_standard_library_is_refused(unharmed):
    r = run_program_sync("def solution():\n    return open('/etc/hostname').read()\n")
    assert r.status == "forbidden" and r.reason == "reading /etc/hostname outside the standard library"


def test_concurrency_is_bounded(unharmed, monkeypatch):
    monkeypatch.setattr(sandbox, "MAX_CONCURRENT", 1)
    src = "import time\ndef solution():\n    t = time.time()\n    time.sleep(0.3)\n    return f'{t} {time.time()}'\n"

    async def go():
        return await asyncio.gather(*(run_program(src) for _ in range(3)))

    spans = sorted(tuple(map(float, r.answer.split())) for r in asyncio.run(go()))
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans))  # never two at once


def test_runs_under_uvloop(unharmed):
    uvloop = pytest.importorskip("uvloop")
    r = uvloop.run(run_program("def solution():\n    return 6 * 7\n"))
    assert (r.status, r.answer) == ("ok", "42")
