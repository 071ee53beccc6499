"""A lean HTTP/1.1 client for JSON APIs: keep-alive connections on asyncio protocols, responses parsed
by httptools (the llhttp parser).

Why not aiohttp: on a 2-core box against a 200 ms server with 1,024 requests in flight, a bare aiohttp
loop spends about 300 µs of client CPU per request; this client about 50 µs, and it reaches twice the
rate (see benchmarks/README.md). It does only what an OpenAI-compatible API needs: POST with a JSON
body, http and https, Content-Length or chunked responses, keep-alive, one time-out per attempt.
There is no redirect, proxy or compression support.

Streamed responses (server-sent events): ``post(..., sink=S, idle_s=T)`` feeds the body of a 200 to
``S.feed(bytes)`` as it arrives instead of keeping it, and the time-out is then ``T`` seconds of silence
(before the first byte and between any two), not a total: a long answer that keeps coming never times
out, a stalled one does. The response that completes carries the sink in ``Response.stream``. A stream cut
before its last byte is a ``ConnectionFailed`` like any other response cut short.

The caller bounds concurrency (the teacher's semaphore), so the pool never holds more connections
than requests in flight.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httptools

from factory.errors import ConfigError


class HTTPFailure(Exception):
    """An attempt that got no usable response. ``kind`` names it for failure counts; ``sent`` tells
    whether the request was written to a connection (a server may have received it) or never left."""

    kind = "connection"

    def __init__(self, message: str, *, sent: bool = True):
        super().__init__(message)
        self.sent = sent


class ConnectionFailed(HTTPFailure):
    pass


class TimedOut(HTTPFailure):
    kind = "timeout"


class BadResponse(HTTPFailure):
    kind = "bad_body"


@dataclass(slots=True)
class Response:
    status: int
    headers: dict[str, str]  # names lower-cased
    body: bytes
    stream: Any = None  # the sink a streamed 200 was fed to (``post(sink=...)``)


class _Connection(asyncio.Protocol):
    """One keep-alive connection; one request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[Any] | None = None
        self.parse: Callable[[Any, Response], Any] | None = None  # applied as the response completes
        self.parse_arg: Any = None  # what ``parse`` gets before the response
        self.timer: asyncio.TimerHandle | None = None
        self.alive = True
        self.answered = False  # a byte of the current response arrived
        self.headers: dict[str, str] = {}
        self.body: list[bytes] = []
        self.sink: Any = None  # a streamed request's sink: fed the body of a 200
        self.feeding = False  # the current response is a 200 being fed to the sink
        self.idle_s: float | None = None  # the time-out counts silence, not the whole response
        self.last_data = 0.0
        self.timeout_s = 0.0  # the current plain request's time-out
        self.deadline = 0.0  # when it runs out (loop time)
        self.timer_at = 0.0  # when ``timer`` fires
        self._on_timer = self._check_time  # bound once: the timer of every request calls it

    # -- asyncio protocol --
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.answered = True
        if self.idle_s is not None:
            self.last_data = asyncio.get_running_loop().time()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(BadResponse(f"malformed HTTP response: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.alive = False
        what = "the server closed the connection" if exc is None else f"connection lost: {exc!r}"
        self._fail(ConnectionFailed(what + (" mid-response" if self.answered else " before answering")))

    # -- httptools callbacks --
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self.feeding = self.sink is not None and self.parser.get_status_code() == 200

    def on_body(self, body: bytes) -> None:
        if self.feeding:
            try:
                self.sink.feed(body)
            except Exception as exc:  # the sink's error (a malformed event): this response is unusable
                self.feeding = False
                self._fail(BadResponse(f"malformed stream: {exc}"))
            return
        self.body.append(body)

    def on_message_complete(self) -> None:
        resp = Response(
            self.parser.get_status_code(),
            self.headers,
            b"".join(self.body),
            self.sink if self.feeding else None,
        )
        self.headers, self.body, self.feeding = {}, [], False
        if not self.parser.should_keep_alive():
            self._close()
        self._settle(resp)

    # -- use --
    async def send(
        self,
        data: bytes,
        timeout_s: float,
        parse: Callable[[Any, Response], Any] | None = None,
        parse_arg: Any = None,
        sink: Any = None,
        idle_s: float | None = None,
    ) -> Any:
        loop = asyncio.get_running_loop()
        self.waiter = fut = loop.create_future()
        self.parse, self.parse_arg = parse, parse_arg
        self.answered = False
        self.sink, self.feeding, self.idle_s = sink, False, idle_s
        now = loop.time()
        if idle_s is not None:
            self.last_data = now
            deadline = now + idle_s
        else:
            self.timeout_s = timeout_s
            deadline = self.deadline = now + timeout_s
        # The connection keeps one timer across its requests (a timer made and cancelled per request
        # costs more than the request's other bookkeeping): it is moved only when it would fire late.
        if self.timer is None or self.timer_at > deadline:
            if self.timer is not None:
                self.timer.cancel()
            self.timer_at = deadline
            self.timer = loop.call_at(deadline, self._on_timer)
        assert self.transport is not None
        self.transport.write(data)
        try:
            return await fut
        except asyncio.CancelledError:  # the response may still come: this connection is unusable
            self._close()
            raise

    def _check_time(self) -> None:
        """The connection's timer: the request in flight fails once its time is out; else the timer is
        set again for when it would be (a streamed request's time counts from its last byte). With no
        request in flight it stops."""
        self.timer = None
        if self.waiter is None:
            return
        loop = asyncio.get_running_loop()
        idle_s = self.idle_s
        deadline = self.deadline if idle_s is None else self.last_data + idle_s
        if deadline > loop.time():
            self.timer_at = deadline
            self.timer = loop.call_at(deadline, self._on_timer)
            return
        self._close()
        if idle_s is None:
            self._fail(TimedOut(f"no answer within {self.timeout_s:g}s"))
        else:
            where = "mid-stream" if self.answered else "before the stream started"
            self._fail(TimedOut(f"no data for {idle_s:g}s {where}"))

    def _settle(self, resp: Response | None = None, exc: Exception | None = None) -> None:
        fut, self.waiter = self.waiter, None
        parse, self.parse = self.parse, None
        arg, self.parse_arg = self.parse_arg, None
        self.sink, self.idle_s = None, None
        if fut is not None and not fut.done():
            if exc is not None:
                fut.set_exception(exc)
            elif parse is not None:
                # Parsed here, as the last byte arrives, not when the awaiting task next runs: the caller
                # can keep the answer (journal it) even while the event loop has a long queue.
                try:
                    fut.set_result(parse(arg, resp))  # type: ignore[arg-type]
                except Exception as err:  # the caller's parser: its error is the caller's
                    fut.set_exception(err)
            else:
                fut.set_result(resp)

    def _fail(self, exc: Exception) -> None:
        self._close()
        self._settle(exc=exc)

    def _close(self) -> None:
        self.alive = False
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.transport is not None:
            self.transport.close()


class Pool:
    """Keep-alive connections to one origin. ``post`` sends one request and returns its response (or what
    ``parse(parse_arg, response)`` makes of it, called as the response completes), or raises an
    :class:`HTTPFailure`. (A bound method and its argument, not a closure made per request: this is the
    path of every answer.)"""

    def __init__(self, base_url: str, *, headers: dict[str, str], timeout_s: float):
        u = urlsplit(base_url)
        try:
            port = u.port
        except ValueError:  # out of range or not a number
            port = -1
        if u.scheme not in ("http", "https") or not u.hostname or port in (-1, 0):
            raise ConfigError(
                f"teacher base URL {base_url!r}: expected http(s)://HOST[:PORT][/PATH] with a port "
                "from 1 to 65535; fix the @URL in teacher.spec or teacher.options.base_url"
            )
        for name, value in headers.items():
            if any(ord(c) < 32 or ord(c) == 127 for c in value) or not _latin1(value):
                raise ConfigError(
                    f"the {name} header of the teacher holds a line break or a control character; "
                    "remove it from the variable it comes from"
                )
        self.host = u.hostname
        self.port = port or (443 if u.scheme == "https" else 80)
        self.ssl: ssl.SSLContext | None = ssl.create_default_context() if u.scheme == "https" else None
        self.prefix = u.path.rstrip("/")
        self.timeout_s = timeout_s
        host = f"[{self.host}]" if ":" in self.host else self.host  # an IPv6 literal keeps its brackets
        host = host if u.port is None else f"{host}:{u.port}"
        lines = [f"Host: {host}", "Content-Type: application/json", "Accept: application/json"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        self._fixed = ("\r\n".join(lines) + "\r\n").encode("latin-1")
        self._idle: list[_Connection] = []
        self._all: set[_Connection] = set()

    async def post(
        self,
        path: str,
        body: bytes | None,
        parse: Callable[[Any, Response], Any] | None = None,
        parse_arg: Any = None,
        *,
        method: bytes = b"POST ",
        timeout_s: float | None = None,
        sink: Any = None,
        idle_s: float | None = None,
    ) -> Any:
        """One request (a POST; ``get`` passes its method): take a connection, send, give it back. The
        hot path of every teacher call, so it is one coroutine, with no helper frame below it.
        ``timeout_s`` overrides the pool's for this request; ``sink`` and ``idle_s`` stream it (see the
        module's notes)."""
        head = (method, (self.prefix + path).encode(), b" HTTP/1.1\r\n", self._fixed)
        if body is None:
            data = b"".join((*head, b"\r\n"))
        else:
            data = b"".join((*head, b"Content-Length: ", str(len(body)).encode(), b"\r\n\r\n", body))
        conn = await self._take()
        try:
            resp = await conn.send(data, timeout_s or self.timeout_s, parse, parse_arg, sink, idle_s)
        finally:
            if not conn.alive:
                self._all.discard(conn)
        if conn.alive:
            self._idle.append(conn)
        return resp

    async def get(self, path: str) -> Response:
        """One GET (``/models`` when explaining a 404); same connections and time-out as ``post``."""
        return await self.post(path, None, method=b"GET ")

    async def _take(self) -> _Connection:
        # A connection the server closed while idle has seen its connection_lost by now and is skipped.
        # One that fails after the request was written is an error for the caller's retries: the server
        # may have read the request.
        while self._idle:
            conn = self._idle.pop()
            if conn.alive:
                return conn
            self._all.discard(conn)
        loop = asyncio.get_running_loop()
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(
                    _Connection, self.host, self.port, ssl=self.ssl,
                    server_hostname=self.host if self.ssl else None,
                ),
                self.timeout_s,
            )  # fmt: skip
        except asyncio.TimeoutError:
            raise TimedOut(
                f"could not connect to {self.host}:{self.port} within {self.timeout_s:g}s", sent=False
            ) from None
        except OSError as exc:
            raise ConnectionFailed(
                f"cannot connect to {self.host}:{self.port}: {exc.strerror or exc}", sent=False
            ) from None
        self._all.add(conn)
        return conn

    def close(self) -> None:
        for conn in list(self._all):
            conn._close()
        self._all.clear()
        self._idle.clear()


def _latin1(value: str) -> bool:
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return True
