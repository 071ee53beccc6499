"""What the failure tests share: a run config against a teacher URL, the CLI in a subprocess, what a store
holds on disk, and a small http.server on 127.0.0.1 that gives every request the same answer."""

from __future__ import annotations

import asyncio
import http.server
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import orjson
from conftest import ROOT, cli_process, write_config, write_seeds

from factory.store import Store
from factory.teachers import build_teacher
from factory.types import Request, Sampling

GOOD_KEY = "sk-good-0123456789abcdefghijklmnop"
WRONG_KEY = "sk-wrong-0123456789abcdefghijklmnop"


def seeds_in(tmp: Path, n: int = 6) -> Path:
    return write_seeds(tmp / "seeds.jsonl", n)


def heal_config(tmp: Path, spec: str, extra_teacher: str = "", n_seeds: int = 6) -> Path:
    return write_config(
        tmp,
        f"name: heal\nrecipe: rationales\nseeds: {seeds_in(tmp, n_seeds)}\nstore: {tmp / 's.duckdb'}\n"
        f"teacher: {{spec: '{spec}', max_in_flight: 4, max_retries: 1, options: {{backoff_base_s: 0.01}}{extra_teacher}}}\n"
        "params: {k: 2, max_tokens: 32}\nrunner: {commit_interval_s: 0.05}\n",
    )


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return cli_process(*args, cwd=ROOT, env=env, timeout=180)


def store_bytes(store: Path) -> bytes:
    parts = [store, store.with_name(store.name + ".wal")]
    journal = store.with_name(store.name + ".journal")
    parts += sorted(journal.glob("*")) if journal.is_dir() else []
    return b"".join(p.read_bytes() for p in parts if p.is_file())


def cache_rows(store: Path) -> list[tuple[str, str]]:
    with Store(store, read_only=True) as st:
        return st.con.execute("SELECT status, teacher FROM cache ORDER BY key").fetchall()


@contextmanager
def answering(
    status: int, body: bytes, content_type: str = "application/json", models: list[str] | None = None
) -> Iterator[str]:
    """An http.server on 127.0.0.1 that gives every request the same answer (``GET /models`` lists
    ``models`` when given); yields its base URL."""
    hits = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            hits.append(1)
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            if models is None:
                return self.do_POST()
            listing = orjson.dumps({"object": "list", "data": [{"id": m, "object": "model"} for m in models]})
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(listing)))
            self.end_headers()
            self.wfile.write(listing)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


def ask(url: str, **options):
    async def go():
        t = build_teacher(f"openai:m@{url}", {"max_retries": 2, "backoff_base_s": 0.001, **options})
        try:
            req = Request(messages=({"role": "user", "content": "hi"},), sampling=Sampling(max_tokens=8))
            return (await t.complete([req]))[0], t
        finally:
            await t.aclose()

    return asyncio.run(go())


def completion(content, finish_reason="stop") -> bytes:
    choice = {
        "index": 0,
        "message": {"role": "assistant", "content": content},
        "finish_reason": finish_reason,
    }
    return orjson.dumps({"choices": [choice], "usage": {"prompt_tokens": 3, "completion_tokens": 8}})
