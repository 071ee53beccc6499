"""Final answers of reasoning traces, and whether two answers are the same mathematical object.

``final_answer`` takes the answer a trace ends with: the last ``\\boxed{...}`` (braces balanced, so
``\\boxed{\\frac{1}{2}}`` is whole), else the last "the answer is ..." / "answer: ..." statement. ``equivalent``
compares two answers: plain numbers first (``1,000`` = ``1e3`` = ``1000.0``), then as mathematics with
Math-Verify (LaTeX and plain expressions through SymPy: ``\\frac{1}{2}`` = ``0.5``, ``2\\sqrt{2}`` = ``\\sqrt{8}``,
``(x+1)^2`` = ``x^2+2x+1``, intervals, sets, ``x=5`` = ``5``). Rounded values are not equal to the exact ones
(``0.33`` is not ``\\frac{1}{3}``). A number with a unit word is its number (``10 cm`` = ``10``); an answer that
holds a word is compared as text (case and spaces aside), since SymPy would read ``bank`` as b*a*n*k. ``benchmarks/bench_math_answers.py`` measures both checks against the table
in ``tests/data/math_answer_pairs.jsonl``.

SymPy can take long on a hostile expression (``9^{9^{9}}``): answers longer than ``MAX_CHARS`` are compared as
normalised text only, and each comparison is cut off after ``TIMEOUT_S`` seconds and counted as different. In
the main thread Math-Verify's own alarm does that; its alarm works nowhere else, so from other threads the
comparison runs in a helper process (started on first use, one per process) that is killed and replaced when
a comparison overruns.
"""

from __future__ import annotations

import json
import math
import os
import re
import select
import subprocess
import sys
import threading
from typing import Any

from factory.errors import ConfigError

MAX_CHARS = 400
TIMEOUT_S = 5

_STATED = re.compile(
    r"(?:the\s+(?:final\s+)?answer\s+is|answer\s*:)\s*(.+?)\s*(?:\.\s*$|\.\s+|$)", re.I | re.S
)
_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)?(?:\.\d+)?(?:[eE][-+]?\d+)?")


def _boxed(text: str) -> str | None:
    """The contents of the last ``\\boxed{...}`` or ``\\fbox{...}``, braces balanced; None without one."""
    start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if start < 0:
        return None
    i = text.index("{", start) + 1
    depth = 1
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i:j].strip()
    return None  # an unclosed box: the trace was cut off


def final_answer(text: str | None) -> str | None:
    """The answer a trace ends with (see the module doc); None when it states none."""
    if not text:
        return None
    boxed = _boxed(text)
    if boxed is not None:
        return boxed or None
    stated = None
    for m in _STATED.finditer(text):
        stated = m.group(1)
    if stated is None:
        return None
    stated = stated.strip().strip("$").strip()
    return stated or None


_UNIT = re.compile(r"([-+]?[\d,]*\.?\d+(?:[eE][-+]?\d+)?)\s*(?:[A-Za-z]{2,}|°)[A-Za-z°²³/ .]*")


def _plain_number(s: str) -> float | None:
    """The value of a plain number (``1,000``, ``1e3``, ``$5``), also one followed by a unit word (``10 cm``)."""
    t = s.strip().rstrip(".").replace("\\$", "").replace("$", "").strip()
    unit = _UNIT.fullmatch(t)
    if unit and unit.group(1) != t:
        t = unit.group(1)
    m = _NUMBER.fullmatch(t)
    if not t or m is None or not any(c.isdigit() for c in t):
        return None
    try:
        return float(t.replace(",", ""))
    except ValueError:
        return None


def _normal(s: str) -> str:
    return re.sub(r"\s+", "", s).rstrip(".").lower()


def equivalent(a: str | None, b: str | None) -> bool:
    """Whether two final answers are the same number or mathematical object (see the module doc)."""
    if a is None or b is None:
        return False
    a, b = a.strip(), b.strip()
    if not a or not b:
        return False
    if _normal(a) == _normal(b):
        return True
    x, y = _plain_number(a), _plain_number(b)
    if x is not None and y is not None:
        return math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-12)
    if len(a) > MAX_CHARS or len(b) > MAX_CHARS:
        return False
    if _wordy(a) or _wordy(b):  # "bank" is no product of four symbols (nor equal to "knab")
        return _normal(_TEXT_CMD.sub(r"\1", a)) == _normal(_TEXT_CMD.sub(r"\1", b))
    return _verify(a, b)


_TEXT_CMD = re.compile(r"\\(?:text|mathrm|textbf|mbox|operatorname)\s*\{([^{}]*)\}")
_COMMAND = re.compile(r"\\[A-Za-z]+")
_FUNCTION = re.compile(
    r"\b(?:sin|cos|tan|cot|sec|csc|arcsin|arccos|arctan|sinh|cosh|tanh|log|ln|exp|sqrt|lim|"
    r"max|min|gcd|lcm|mod|det|pi|inf|infty|oo)\b"
)
_WORD = re.compile(r"[A-Za-z]{2,}")


def _wordy(s: str) -> bool:
    """Whether an answer holds a word (two letters or more outside LaTeX commands, text units and function
    names): words are compared as text, since SymPy would read ``bank`` as the product b*a*n*k."""
    outside = _FUNCTION.sub(" ", _COMMAND.sub(" ", _TEXT_CMD.sub(" ", s)))
    return _WORD.search(outside) is not None


def _verify(a: str, b: str) -> bool:
    if threading.current_thread() is threading.main_thread():
        return _math_verify(a, b, TIMEOUT_S)
    return _HELPER.compare(a, b)


def _math_verify(a: str, b: str, timeout: int | None) -> bool:
    try:
        from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify
    except ImportError:
        raise ConfigError(
            "comparing answers as mathematics needs Math-Verify: pip install 'distill-factory[reasoning]'"
        ) from None
    configs: list[Any] = [LatexExtractionConfig(), ExprExtractionConfig()]

    def parsed(s: str) -> list[Any]:
        # Math-Verify finds LaTeX between $ or inside \boxed; a bare answer is wrapped so that it is found
        wrapped = s if "\\boxed" in s or re.search(r"(?<!\\)\$", s) else f"${s}$"
        return parse(wrapped, extraction_config=configs, parsing_timeout=timeout)

    try:
        return bool(verify(parsed(a), parsed(b), timeout_seconds=timeout))
    except Exception:  # an answer SymPy cannot read, or the time-out: not shown to be equal
        return False


def _serve() -> None:
    """The helper process (``python -m recipes.math_answers``): a JSON pair ``[a, b]`` a line in, ``1`` or
    ``0`` a line out, compared in its main thread (where the alarm works)."""
    for line in sys.stdin:
        a, b = json.loads(line)
        sys.stdout.write("1\n" if _math_verify(a, b, TIMEOUT_S) else "0\n")
        sys.stdout.flush()


class _Helper:
    """The comparing process for threads other than the main one; a comparison past its time kills it. A
    plain child process on pipes (not multiprocessing: no resource tracker beside a local engine's)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[str] | None = None

    def compare(self, a: str, b: str) -> bool:
        with self._lock:
            first = self._proc is None or self._proc.poll() is not None
            if first:
                self._start()
            proc = self._proc
            assert proc is not None and proc.stdin is not None and proc.stdout is not None
            try:
                proc.stdin.write(json.dumps([a, b]) + "\n")
                proc.stdin.flush()
                # the first comparison also waits for the process to import SymPy
                ready, _, _ = select.select([proc.stdout], [], [], TIMEOUT_S * 2 + (60 if first else 0))
                if ready:
                    answer = proc.stdout.readline()
                    if answer:
                        return answer.strip() == "1"
            except (OSError, ValueError):
                pass
            self._stop()
            return False

    def _start(self) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "recipes.math_answers"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            text=True, bufsize=1, env={**os.environ, "PYTHONPATH": _ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")},
        )  # fmt: skip

    def _stop(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait(5)
        self._proc = None


_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_HELPER = _Helper()

if __name__ == "__main__":
    _serve()
