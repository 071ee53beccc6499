"""The aiohttp app of `factory view`: static files and a JSON API over ``Browser`` reads.

DuckDB calls run on one worker thread (one connection, used by one thread at a time), so the event loop
stays free while a search scans a large run.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import signal
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson
from aiohttp import web

from factory.errors import ConfigError, FactoryError
from factory.store import Store
from factory.store.browse import Browser

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
STATIC = Path(__file__).parent / "static"
MAX_LIMIT = 200
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
STATIC_FILES = {"/": ("index.html", "text/html"), "/app.js": ("app.js", "text/javascript"),
                "/app.css": ("app.css", "text/css")}  # fmt: skip
KEY: web.AppKey[Viewer] = web.AppKey("viewer")


class Viewer:
    """The store, its Browser and the one thread that talks to DuckDB."""

    def __init__(self, store_path: Path):
        from factory.card import LABEL_FIELDS

        self.pool = ThreadPoolExecutor(1, thread_name_prefix="factory-view")
        self.store: Store = self.pool.submit(Store, store_path, read_only=True).result()
        self.browser = self.pool.submit(Browser, self.store, LABEL_FIELDS).result()
        self.allowed_hosts: set[str] = set()

    async def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.pool, lambda: fn(*args, **kwargs))

    def close(self) -> None:
        self.pool.submit(self.store.close).result()
        self.pool.shutdown()


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=orjson.dumps(data, default=str), status=status, content_type="application/json",
        headers={"Cache-Control": "no-store"},
    )  # fmt: skip


@web.middleware
async def guard(request: web.Request, handler: Any) -> web.StreamResponse:
    """Only requests addressed to this server by its loopback name (no DNS rebinding); security headers."""
    viewer = request.app[KEY]
    if request.host not in viewer.allowed_hosts:
        return web.Response(status=421, text="this server answers only at its 127.0.0.1 address\n")
    try:
        resp = await handler(request)
    except FactoryError as exc:
        resp = _json({"error": str(exc)}, status=400 if isinstance(exc, ConfigError) else 500)
    except web.HTTPException as exc:
        resp = _json({"error": exc.reason}, status=exc.status)
    resp.headers["Content-Security-Policy"] = CSP
    resp.headers["X-Content-Type-Options"] = "nosniff"
    resp.headers["Referrer-Policy"] = "no-referrer"
    resp.headers["X-Frame-Options"] = "DENY"
    return resp


def _int(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, not {raw!r}") from None
    return max(lo, min(hi, value))


def _opt(request: web.Request, name: str) -> str | None:
    v = request.query.get(name)
    return v if v not in (None, "") else None


async def static(request: web.Request) -> web.Response:
    name, ctype = STATIC_FILES[request.path]
    return web.Response(body=(STATIC / name).read_bytes(), content_type=ctype, charset="utf-8")


async def runs(request: web.Request) -> web.Response:
    v = request.app[KEY]
    found = await v.call(v.browser.runs)
    return _json({"store": v.store.path.name, "runs": found})


def _run(request: web.Request) -> str:
    run = _opt(request, "run")
    if run is None:
        raise ConfigError("run is required")
    return run


async def facets(request: web.Request) -> web.Response:
    v = request.app[KEY]
    return _json(await v.call(v.browser.facets, _run(request)))


async def records(request: web.Request) -> web.Response:
    v = request.app[KEY]
    page = await v.call(
        v.browser.page, _run(request), status=_opt(request, "status") or "all", filter=_opt(request, "filter"),
        reason=request.query.get("reason"), label=_opt(request, "label"), stage=_opt(request, "stage"),
        q=_opt(request, "q"), offset=_int(request, "offset", 0, 0, 10**12),
        limit=_int(request, "limit", 50, 1, MAX_LIMIT),
    )  # fmt: skip
    return _json(page)


async def record(request: web.Request) -> web.Response:
    v = request.app[KEY]
    rid = _opt(request, "id")
    if rid is None:
        raise ConfigError("id is required")
    return _json(await v.call(v.browser.record, _run(request), rid))


def build_app(viewer: Viewer) -> web.Application:
    app = web.Application(middlewares=[guard])
    app[KEY] = viewer
    for path in STATIC_FILES:
        app.router.add_get(path, static)
    app.router.add_get("/api/runs", runs)
    app.router.add_get("/api/facets", facets)
    app.router.add_get("/api/records", records)
    app.router.add_get("/api/record", record)
    return app


async def serve(
    store_path: Path,
    *,
    port: int = 8765,
    run: str | None = None,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Serve until Ctrl+C or SIGTERM. ``run`` (or the latest run) is indexed before the URL is announced,
    so the first page load does not wait for it."""
    stop = _stop_on_signals()
    viewer = Viewer(store_path)
    runner = web.AppRunner(build_app(viewer), access_log=None)
    try:
        st = viewer.store
        first = await viewer.call(lambda: st.resolve_run(run) if run or st.runs() else None)
        if first is not None:
            await viewer.call(viewer.browser.facets, first)
        await runner.setup()
        site = web.TCPSite(runner, host=HOST, port=port)
        try:
            await site.start()
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError(
                    f"--port {port}: the port is in use; pick another (--port 0: any free port)"
                ) from None
            raise
        bound = runner.addresses[0][1]
        viewer.allowed_hosts = {f"{HOST}:{bound}", f"localhost:{bound}"}
        url = f"http://{HOST}:{bound}/" + (f"#run={quote(first, safe='')}" if first else "")
        if on_ready is not None:
            on_ready(url)
        await stop.wait()
    finally:
        await runner.cleanup()
        viewer.close()


def _stop_on_signals() -> asyncio.Event:
    """An event that SIGINT (Ctrl+C) or SIGTERM sets. Installed before anything is announced, and also
    when the process was started with SIGINT ignored (a background job of a shell script)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        # Where the loop cannot take signals (Windows), Ctrl+C still raises KeyboardInterrupt.
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    return stop
