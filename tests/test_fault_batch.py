"""The fault server's Batch API, against a server in a child process, over plain HTTP and the openai SDK."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import openai
import orjson
import pytest

from factory.testing.fault_server import (
    FaultConfig,
    SubprocessHandle,
    main,
    serve_in_thread,
    start_subprocess,
)

ENDPOINT = "/v1/chat/completions"
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@pytest.fixture(scope="module")
def srv() -> Iterator[SubprocessHandle]:
    # 20 batch requests a second and a 2 s window: 8 lines complete, 100 lines expire.
    with start_subprocess(
        reject_rate=0.3, batch_rate=20, batch_window_s=2.0, batch_max_lines=100, batch_max_bytes=20_000
    ) as handle:
        yield handle


@pytest.fixture(scope="module")
def client(srv: SubprocessHandle) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=srv.base_url, api_key="sk-test", max_retries=0, timeout=10) as c:
        yield c


def _body(i: int) -> dict[str, Any]:
    return {"model": "fault-server", "messages": [{"role": "user", "content": f"question {i}"}]}


def _jsonl(n: int, start: int = 0) -> bytes:
    lines = [
        {"custom_id": f"req-{i}", "method": "POST", "url": ENDPOINT, "body": _body(i)}
        for i in range(start, start + n)
    ]
    return b"".join(orjson.dumps(line) + b"\n" for line in lines)


def _http(srv: SubprocessHandle, method: str, path: str, data: bytes | None = None, ctype: str = "") -> Any:
    req = urllib.request.Request(srv.root_url + path, method=method, data=data)
    if ctype:
        req.add_header("Content-Type", ctype)
    try:
        with _OPENER.open(req, timeout=10) as resp:
            return resp.status, orjson.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, orjson.loads(exc.read())


def _multipart(purpose: str, data: bytes) -> tuple[bytes, str]:
    sep = "fault-batch-boundary"
    parts = (
        f'--{sep}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\n{purpose}\r\n'
        f'--{sep}\r\nContent-Disposition: form-data; name="file"; filename="in.jsonl"\r\n'
        "Content-Type: application/jsonl\r\n\r\n"
    ).encode()
    return parts + data + f"\r\n--{sep}--\r\n".encode(), f"multipart/form-data; boundary={sep}"


def _wait(client: openai.OpenAI, batch_id: str, until: tuple[str, ...], timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        batch = client.batches.retrieve(batch_id)
        if batch.status in until or time.monotonic() > deadline:
            return batch
        time.sleep(0.05)


def _lines(client: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    return [orjson.loads(line) for line in client.files.content(file_id).read().splitlines()]


def test_batch_runs_to_completed_with_online_answers_and_rejections(srv, client) -> None:
    before = srv.stats()["batch"]["requests"]
    file = client.files.create(file=("in.jsonl", _jsonl(8)), purpose="batch")
    assert (file.object, file.purpose, file.bytes) == ("file", "batch", len(_jsonl(8)))
    assert client.files.retrieve(file.id).id == file.id
    assert client.files.content(file.id).read() == _jsonl(8)

    batch = client.batches.create(input_file_id=file.id, endpoint=ENDPOINT, completion_window="24h")
    assert batch.status == "validating" and batch.expires_at is not None
    done = _wait(client, batch.id, ("completed", "failed", "expired"))
    assert done.status == "completed"
    assert done.in_progress_at and done.finalizing_at and done.completed_at
    assert done.request_counts is not None

    output = _lines(client, done.output_file_id)
    errors = _lines(client, done.error_file_id)
    # reject_rate 0.3 over 8 bodies, seed 0: some lines of each kind.
    assert output and errors
    assert done.request_counts.total == 8
    assert (done.request_counts.completed, done.request_counts.failed) == (len(output), len(errors))
    assert sorted(x["custom_id"] for x in output + errors) == sorted(f"req-{i}" for i in range(8))
    for line in errors:
        assert line["response"]["status_code"] == 400 and line["error"] is None
        assert line["response"]["body"]["error"]["code"] == "injected_rejection"
    for line in output:
        assert line["response"]["status_code"] == 200 and line["response"]["request_id"]
        i = int(line["custom_id"].split("-")[1])
        # The online endpoint answers the same body with the same text, and rejects the same bodies.
        status, online = _http(srv, "POST", ENDPOINT, orjson.dumps(_body(i)), "application/json")
        assert status == 200
        got = line["response"]["body"]["choices"][0]["message"]["content"]
        assert got == online["choices"][0]["message"]["content"]
    for line in errors:
        i = int(line["custom_id"].split("-")[1])
        assert _http(srv, "POST", ENDPOINT, orjson.dumps(_body(i)), "application/json")[0] == 400
    assert srv.stats()["batch"]["requests"] - before == 8


def test_plain_http_upload_and_listing(srv) -> None:
    data, ctype = _multipart("batch", _jsonl(2, start=100))
    status, file = _http(srv, "POST", "/v1/files", data, ctype)
    assert status == 200 and file["bytes"] == len(_jsonl(2, start=100))
    ids = []
    for _ in range(3):
        body = {"input_file_id": file["id"], "endpoint": ENDPOINT, "completion_window": "24h"}
        status, batch = _http(srv, "POST", "/v1/batches", orjson.dumps(body), "application/json")
        assert status == 200 and batch["object"] == "batch"
        ids.append(batch["id"])
    status, page = _http(srv, "GET", "/v1/batches?limit=2")
    assert status == 200 and page["object"] == "list" and page["has_more"] is True
    assert [b["id"] for b in page["data"]] == ids[::-1][:2]
    status, rest = _http(srv, "GET", f"/v1/batches?limit=2&after={page['last_id']}")
    assert rest["data"][0]["id"] == ids[0]
    assert _http(srv, "GET", "/v1/batches?limit=0")[0] == 400
    assert _http(srv, "GET", "/v1/batches/batch_nope")[0] == 404
    assert _http(srv, "DELETE", "/v1/batches")[0] == 405


def test_batch_past_its_window_expires(client) -> None:
    file = client.files.create(file=("in.jsonl", _jsonl(100, start=200)), purpose="batch")
    batch = client.batches.create(input_file_id=file.id, endpoint=ENDPOINT, completion_window="24h")
    done = _wait(client, batch.id, ("completed", "expired"))
    assert done.status == "expired" and done.expired_at
    output, errors = _lines(client, done.output_file_id), _lines(client, done.error_file_id)
    expired = [e for e in errors if e["error"] and e["error"]["code"] == "batch_expired"]
    assert output and 0 < len(expired) < 100
    assert all(e["response"] is None for e in expired)
    assert len(output) + len(errors) == 100
    assert done.request_counts is not None
    assert done.request_counts.completed + done.request_counts.failed == 100 - len(expired)


def test_cancelled_batch_keeps_what_ran(client) -> None:
    file = client.files.create(file=("in.jsonl", _jsonl(100, start=400)), purpose="batch")
    batch = client.batches.create(input_file_id=file.id, endpoint=ENDPOINT, completion_window="24h")
    _wait(client, batch.id, ("in_progress",))
    cancelling = client.batches.cancel(batch.id)
    assert cancelling.status == "cancelling" and cancelling.cancelling_at
    done = _wait(client, batch.id, ("cancelled",))
    assert done.status == "cancelled" and done.cancelled_at
    errors = _lines(client, done.error_file_id)
    skipped = [e for e in errors if e["error"] and e["error"]["code"] == "batch_cancelled"]
    assert len(skipped) > 50
    assert len(_lines(client, done.output_file_id)) + len(errors) == 100
    with pytest.raises(openai.ConflictError):
        client.batches.cancel(batch.id)


def test_invalid_file_fails_the_batch_with_line_errors(client) -> None:
    good = orjson.dumps({"custom_id": "a", "method": "POST", "url": ENDPOINT, "body": _body(1)})
    dup = good
    wrong_url = orjson.dumps({"custom_id": "b", "method": "POST", "url": "/v1/embeddings", "body": {}})
    data = b"\n".join([good, dup, b"{not json", wrong_url]) + b"\n"
    file = client.files.create(file=("bad.jsonl", data), purpose="batch")
    batch = client.batches.create(input_file_id=file.id, endpoint=ENDPOINT, completion_window="24h")
    done = _wait(client, batch.id, ("failed", "completed"))
    assert done.status == "failed" and done.failed_at and done.output_file_id is None
    assert done.errors is not None and done.errors.data is not None
    found = {(e.code, e.line) for e in done.errors.data}
    assert found == {("duplicate_custom_id", 2), ("invalid_json_line", 3), ("invalid_url", 4)}


def test_limits_and_bad_requests_are_refused(srv, client) -> None:
    with pytest.raises(openai.BadRequestError) as lines:
        client.files.create(file=("big.jsonl", _jsonl(101)), purpose="batch")
    assert lines.value.code == "too_many_requests"
    with pytest.raises(openai.BadRequestError) as size:
        client.files.create(file=("big.jsonl", b"x" * 20_001), purpose="batch")
    assert size.value.code == "file_too_large"
    with pytest.raises(openai.BadRequestError):
        client.files.create(file=("in.jsonl", _jsonl(1)), purpose="fine-tune")
    with pytest.raises(openai.NotFoundError):
        client.batches.create(input_file_id="file-missing", endpoint=ENDPOINT, completion_window="24h")
    file = client.files.create(file=("in.jsonl", _jsonl(1)), purpose="batch")
    with pytest.raises(openai.BadRequestError):
        client.batches.create(input_file_id=file.id, endpoint="/v1/embeddings", completion_window="24h")
    body = {"input_file_id": file.id, "endpoint": ENDPOINT, "completion_window": "1h"}
    status, err = _http(srv, "POST", "/v1/batches", orjson.dumps(body), "application/json")
    assert status == 400 and err["error"]["param"] == "completion_window"
    status, err = _http(srv, "POST", "/v1/files", b"{}", "application/json")
    assert status == 400 and err["error"]["param"] == "file"
    data, ctype = _multipart("batch", _jsonl(1))
    status, err = _http(srv, "POST", "/v1/files", data[: len(data) // 2], ctype)
    assert status == 400 and err["error"]["type"] == "invalid_request_error"


def test_faults_land_in_the_error_file_then_succeed_on_a_rerun() -> None:
    config = FaultConfig(fault_rate=1.0, fault_kinds=("429", "500"), fault_repeats=1)
    with serve_in_thread(config) as thread_srv:
        with openai.OpenAI(base_url=thread_srv.base_url, api_key="k", max_retries=0, timeout=10) as c:
            file = c.files.create(file=("in.jsonl", _jsonl(6)), purpose="batch")
            first = c.batches.create(input_file_id=file.id, endpoint=ENDPOINT, completion_window="24h")
            first = _wait(c, first.id, ("completed",))
            assert first.output_file_id is None and first.request_counts is not None
            assert first.request_counts.failed == 6
            codes = {line["response"]["status_code"] for line in _lines(c, first.error_file_id)}
            assert codes <= {429, 500} and codes
            again = c.batches.create(input_file_id=file.id, endpoint=ENDPOINT, completion_window="24h")
            again = _wait(c, again.id, ("completed",))
            assert again.error_file_id is None and len(_lines(c, again.output_file_id)) == 6
        stats = thread_srv.stats()
        assert stats["batch"]["requests"] == 12 and stats["batch"]["created"] == 2
        assert sum(stats["faults"].values()) == 6


def test_bad_batch_options_exit_with_a_message(capsys) -> None:
    assert main(["--batch-rate", "-1"]) == 2
    assert "batch_rate" in capsys.readouterr().err


def test_a_failing_reply_fails_its_line_and_the_batch_completes() -> None:
    def reply(messages: list, body: dict) -> str:
        if messages[0]["content"] == "question 1":
            raise RuntimeError("no answer")
        return "fine"

    with (
        serve_in_thread(FaultConfig(reply=reply)) as thread_srv,
        openai.OpenAI(base_url=thread_srv.base_url, api_key="k", max_retries=0, timeout=10) as c,
    ):
        file = c.files.create(file=("in.jsonl", _jsonl(3)), purpose="batch")
        batch = c.batches.create(input_file_id=file.id, endpoint=ENDPOINT, completion_window="24h")
        done = _wait(c, batch.id, ("completed",))
        assert done.status == "completed"
        [failed] = _lines(c, done.error_file_id)
        assert failed["custom_id"] == "req-1" and failed["response"]["status_code"] == 500
        output = _lines(c, done.output_file_id)
        assert [o["response"]["body"]["choices"][0]["message"]["content"] for o in output] == ["fine"] * 2
