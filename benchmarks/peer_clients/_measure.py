"""How every client run of `benchmarks/peers.py` is measured: the same code inside each client's process.

Standard library only: it is imported by scripts that run in the peers' own virtual environments.

A `Monitor` thread polls the fault server's `/admin/stats` every 25 ms and counts the 200 answers sent
since the driver reset the server, so ours and the peers are counted the same way, whatever their own
progress reporting. CPU is the client's process tree: `getrusage` of this process (every thread but the
monitor's own, which is subtracted) and of its reaped children, plus `/proc/<pid>/stat` of live
descendants (distilabel runs each step in a worker process). The steady window runs from the sample where
a tenth of the requests had been answered to the one where nine tenths had: imports, start-up, the drain
and what a client does after its last answer (writing a dataset, closing a store) are outside it; the
whole-run figures include everything after the imports.
"""

from __future__ import annotations

import json
import os
import resource
import threading
import time
import urllib.request
from typing import Any

PROMPT = "bench prompt number {i}: say something"
MAX_TOKENS = 32
TEMPERATURE = 0.7
POLL_S = 0.025
SCAN_S = 0.5  # how often live descendants are looked for
_TICK = os.sysconf("SC_CLK_TCK")
_PAGE_MB = os.sysconf("SC_PAGE_SIZE") / 2**20


def prompts(n: int, start: int = 0) -> list[str]:
    """The prompts every client sends (ours renders the same text from seeds)."""
    return [PROMPT.format(i=i) for i in range(start, start + n)]


def _rusage_cpu(who: int) -> float:
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


def _stat(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read().decode()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2 :].split()  # fields from `state` on (the name may hold spaces)


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = _stat(int(name))
            if st is not None:
                children.setdefault(int(st[1]), []).append(int(name))
    out, todo = [], [root]
    while todo:
        for kid in children.get(todo.pop(), []):
            out.append(kid)
            todo.append(kid)
    return out


class Monitor(threading.Thread):
    """Counts answers at the server and samples the client's CPU and memory until `finish`."""

    def __init__(self, base_url: str, n: int, *, children: bool = False):
        super().__init__(name="bench-monitor", daemon=True)
        self.stats_url = base_url.rstrip("/").removesuffix("/v1") + "/admin/stats"
        self.n = n
        self.children = children
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        self._halt = threading.Event()
        self._lock = threading.Lock()
        self._kids: list[int] = []
        self._own_cpu = 0.0  # this thread's CPU, subtracted from the process's
        self.first: dict[str, float] = {}  # the sample at a tenth of the answers
        self.last: dict[str, float] = {}  # ... and at nine tenths
        self.first_ok: dict[str, float] = {}  # the first sample with an answer
        self.last_ok: dict[str, float] = {}  # the sample where the count last grew
        self.peak_tree_mb = 0.0
        self.server: dict[str, Any] = {}

    # ---------------------------------------------------------------- sampling

    def _server(self) -> dict[str, Any]:
        with self._opener.open(self.stats_url, timeout=10) as r:
            return json.loads(r.read())

    def _cpu(self) -> float:
        """Process tree CPU seconds, less this thread's."""
        cpu = _rusage_cpu(resource.RUSAGE_SELF) + _rusage_cpu(resource.RUSAGE_CHILDREN) - self._own_cpu
        for pid in self._kids:
            st = _stat(pid)
            if st is not None:
                cpu += (int(st[11]) + int(st[12])) / _TICK
        return cpu

    def _tree_mb(self) -> float:
        mb = 0.0
        for pid in [os.getpid(), *self._kids]:
            st = _stat(pid)
            if st is not None:
                mb += int(st[21]) * _PAGE_MB
        return mb

    def sample(self) -> dict[str, float]:
        srv = self._server()
        ok = srv["responses"].get("200", 0)
        with self._lock:
            s = {"t": time.perf_counter(), "cpu": self._cpu(), "ok": ok, "sent": srv["requests"]}
        self.server = srv
        return s

    def run(self) -> None:
        next_scan = 0.0
        while not self._halt.is_set():
            t_cpu = _rusage_cpu(resource.RUSAGE_THREAD)
            if self.children and time.perf_counter() >= next_scan:
                kids = _descendants(os.getpid())
                with self._lock:
                    self._kids = kids
                next_scan = time.perf_counter() + SCAN_S
            if self.children:
                self.peak_tree_mb = max(self.peak_tree_mb, self._tree_mb())
            try:
                s = self.sample()
            except OSError:
                s = None
            if s is not None:
                self._track(s)
                if "ok" not in self.first and s["ok"] >= self.n // 10:
                    self.first = s
                elif self.first and not self.last and s["ok"] >= self.n * 9 // 10:
                    self.last = s
            with self._lock:
                self._own_cpu += _rusage_cpu(resource.RUSAGE_THREAD) - t_cpu
            self._halt.wait(POLL_S)

    def _track(self, s: dict[str, float]) -> None:
        if s["ok"] > 0 and not self.first_ok:
            self.first_ok = s
        if s["ok"] > self.last_ok.get("ok", 0):
            self.last_ok = s

    # ------------------------------------------------------------------ public

    def begin(self) -> Monitor:
        self.t0 = time.perf_counter()
        self.cpu0 = _rusage_cpu(resource.RUSAGE_SELF) + _rusage_cpu(resource.RUSAGE_CHILDREN)
        self.start()
        return self

    def finish(self, **fields: Any) -> dict[str, Any]:
        """Stop, and the run's figures as one dict (``fields`` added: client, c, ok, ...)."""
        wall = time.perf_counter() - self.t0
        self._halt.set()
        self.join()
        end = self.sample()
        self._track(end)
        cpu = end["cpu"] - self.cpu0
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        peak = max(peak, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, self.peak_tree_mb)
        out: dict[str, Any] = {
            "n": self.n, "wall_s": wall, "cpu_s": cpu, "peak_mb": peak,
            "server_ok": end["ok"], "server_requests": end["sent"],
            "server_429": self.server.get("responses", {}).get("429", 0),
            "server_max_in_flight": self.server.get("max_in_flight", 0),
        }  # fmt: skip
        first, last = self.first, self.last
        if first and last and last["ok"] > first["ok"]:
            done = last["ok"] - first["ok"]
            out["steady_rps"] = done / (last["t"] - first["t"])
            out["steady_cpu_us"] = (last["cpu"] - first["cpu"]) / done * 1e6
            out["steady_attempts"] = (last["sent"] - first["sent"]) / done
        a, b = self.first_ok, self.last_ok
        if a and b and b["t"] > a["t"]:  # the server's view: first answer to last, start-up left out
            out["span_rps"] = (b["ok"] - a["ok"]) / (b["t"] - a["t"])
            out["span_s"] = b["t"] - a["t"]
        out.update(fields)
        return out


class Stages:
    """Wall, process CPU and the peak RSS so far at the end of each stage of an end-to-end run."""

    def __init__(self) -> None:
        self.out: dict[str, float] = {}
        self._t, self._cpu = time.perf_counter(), _rusage_cpu(resource.RUSAGE_SELF)

    def done(self, name: str) -> None:
        t, cpu = time.perf_counter(), _rusage_cpu(resource.RUSAGE_SELF)
        self.out[f"{name}_s"] = t - self._t
        self.out[f"{name}_cpu_s"] = cpu - self._cpu
        self.out[f"{name}_peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        self._t, self._cpu = t, cpu


def emit(result: dict[str, Any]) -> None:
    """The one JSON line the driver reads (the last line of stdout)."""
    print("\n" + json.dumps(result), flush=True)
