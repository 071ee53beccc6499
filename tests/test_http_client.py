"""The lean HTTP/1.1 client against real sockets on 127.0.0.1: TLS, chunked bodies, keep-alive,
servers that close, and time-outs."""

from __future__ import annotations

import asyncio
import socket
import ssl
import subprocess
import threading
import time

import pytest

from factory.errors import ConfigError
from factory.teachers.http import ConnectionFailed, Pool, TimedOut

DOC = b'{"ok": true}'


class Server:
    """A socket server answering each request with ``reply(n)`` (n counts requests); counts connections."""

    def __init__(self, reply, tls: ssl.SSLContext | None = None):
        self.reply = reply
        self.tls = tls
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.requests = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        try:
            if self.tls is not None:
                conn = self.tls.wrap_socket(conn, server_side=True)
            buf = b""
            while True:
                while b"\r\n\r\n" not in buf:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    buf += chunk
                head, _, buf = buf.partition(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                while len(buf) < length:
                    buf += conn.recv(65536)
                buf = buf[length:]
                self.requests += 1
                out = self.reply(self.requests)
                if out is None:  # never answer
                    continue
                conn.sendall(out)
                if b"Connection: close" in out:
                    conn.close()
                    return
        except (OSError, ssl.SSLError):
            return
        finally:
            conn.close()

    def close(self):
        self.sock.close()


def plain(_n):
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
        len(DOC),
        DOC,
    )


def post(pool, n=1):
    async def go():
        try:
            return [await pool.post("/chat/completions", b'{"a": 1}') for _ in range(n)]
        finally:
            pool.close()

    return asyncio.run(go())


def test_keep_alive_reuses_one_connection():
    srv = Server(plain)
    out = post(Pool(f"http://127.0.0.1:{srv.port}/v1", headers={}, timeout_s=5), n=5)
    assert [r.status for r in out] == [200] * 5 and out[0].body == DOC
    assert srv.connections == 1 and srv.requests == 5
    srv.close()


def test_chunked_body_and_headers():
    def chunked(_n):
        return (b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"5\r\n{\"ok\"\r\n7\r\n: true}\r\n0\r\n\r\n")  # fmt: skip

    srv = Server(chunked)
    (r,) = post(Pool(f"http://127.0.0.1:{srv.port}", headers={}, timeout_s=5))
    assert r.status == 429 and r.body == DOC and r.headers["retry-after"] == "3"
    srv.close()


def test_server_that_closes_gets_a_new_connection():
    def closing(_n):
        return plain(_n).replace(b"Content-Type", b"Connection: close\r\nContent-Type")

    srv = Server(closing)
    out = post(Pool(f"http://127.0.0.1:{srv.port}", headers={}, timeout_s=5), n=3)
    assert [r.body for r in out] == [DOC] * 3 and srv.connections == 3
    srv.close()


def test_each_request_on_a_kept_connection_has_its_own_time_out():
    """The connection keeps one timer across requests: a shorter time-out after a longer one still runs
    out on time, and a longer one after a shorter one is not cut at the earlier request's time."""

    def reply(n):
        if n == 2:
            return None  # never answered: must time out after its own 0.3 s, not the first request's 60 s
        if n == 4:
            time.sleep(0.6)  # answered after the third request's 0.3 s would have run out
        return plain(n)

    srv = Server(reply)
    pool = Pool(f"http://127.0.0.1:{srv.port}", headers={}, timeout_s=5)

    async def go():
        try:
            first = await pool.post("/chat/completions", b"{}", timeout_s=60)
            with pytest.raises(TimedOut, match=r"within 0\.3s"):
                await asyncio.wait_for(pool.post("/chat/completions", b"{}", timeout_s=0.3), 10)
            third = await pool.post("/chat/completions", b"{}", timeout_s=0.3)
            fourth = await pool.post("/chat/completions", b"{}", timeout_s=5)
            return first, third, fourth
        finally:
            pool.close()

    out = asyncio.run(go())
    assert [r.body for r in out] == [DOC] * 3
    assert srv.requests == 4 and srv.connections == 2  # the timed-out connection was dropped
    srv.close()


def test_time_out_and_refused_connection():
    srv = Server(lambda n: None)
    with pytest.raises(TimedOut, match=r"within 0\.3s"):
        post(Pool(f"http://127.0.0.1:{srv.port}", headers={}, timeout_s=0.3))
    srv.close()
    free = socket.create_server(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()
    with pytest.raises(ConnectionFailed, match="cannot connect"):
        post(Pool(f"http://127.0.0.1:{port}", headers={}, timeout_s=2))


def test_bad_base_url_is_a_config_error():
    with pytest.raises(ConfigError, match="base_url"):
        Pool("ftp://example.org/v1", headers={}, timeout_s=1)


def test_https_verifies_the_server_certificate(tmp_path, monkeypatch):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    srv = Server(plain, tls=tls)
    url = f"https://127.0.0.1:{srv.port}/v1"
    with pytest.raises(ConnectionFailed, match=r"CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
        post(Pool(url, headers={}, timeout_s=5))
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # a private CA, as a company proxy would need
    (r,) = post(Pool(url, headers={}, timeout_s=5))
    assert r.status == 200 and r.body == DOC
    srv.close()
