"""The fault server for the end-to-end benchmark, in its own process, answering with dedup-worthy text.

    python e2e_server.py --n 100000 --latency 0.2

The fault server's own replies share most of their words, so every pair of them is a MinHash candidate and
a plain LSH dedup turns quadratic on them. Here prompt i ("bench prompt number i: ...") is answered with
text i of `bench_dedup.corpus(n)`: ~218 characters of Zipf-distributed words, a fifth of them planted
near-duplicates of an earlier text. Prints `listening on URL` once bound, like the fault server's CLI.
"""

from __future__ import annotations

import argparse
import re
import signal
import sys
import threading
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE.parent.parent)]

from bench_dedup import corpus  # noqa: E402

from factory.testing.fault_server import LISTEN_PREFIX, FaultConfig, serve_in_thread  # noqa: E402

NUMBER = re.compile(r"number (\d+)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, required=True)
    ap.add_argument("--latency", type=float, default=0.2)
    a = ap.parse_args()
    texts, _ = corpus(a.n)

    def reply(messages: list, body: dict) -> str:
        last = messages[-1] if messages and isinstance(messages[-1], dict) else {}
        m = NUMBER.search(str(last.get("content", "")))
        return texts[int(m.group(1)) % len(texts)] if m else "no number in the prompt"

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with serve_in_thread(FaultConfig(latency=a.latency, reply=reply), uvloop=True) as srv:
        print(f"{LISTEN_PREFIX}{srv.base_url}", flush=True)
        stop.wait()


if __name__ == "__main__":
    main()
