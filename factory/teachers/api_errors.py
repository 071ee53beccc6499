"""What an OpenAI-compatible server's refusals mean for a run, and how they are told to the user.

* 401 and 403 are about the account: no request of the run can succeed. The first one stops the run.
* 404 and 405 are about the endpoint (a model the server does not serve, a base URL that misses the
  API's root or names another route): the same for every request, so the first one stops the run too,
  as does a 400 that says the model does not exist (some servers answer that with 400). The message
  names what the server does serve when it can be asked (``GET /models``).
* A 429 whose code is ``insufficient_quota`` is about billing, not pace: waiting cannot help, so it stops
  the run as a 401 does. Any other 429 is paced and retried.
* Any other 4xx is a refusal of one request. It is not retried within the run, and it is never cached:
  the answer depends on the server and the account as much as on the request, and a re-run must be able
  to heal it. When every answer so far is the same 400 (``SAME_400_LIMIT`` in a row, no success in
  between), the cause is the set-up, not the requests, and the run stops.

Server text is stored and shown, so it is scrubbed first: the key itself, ``Bearer`` tokens,
``Authorization``/``api-key`` header values a server echoes back, and key-shaped strings.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import orjson

SAME_400_LIMIT = 10

_BEARER = re.compile(r"(?i)\b(bearer\s+)[^\s\"',;}]+")
_HEADER = re.compile(
    r"(?i)((?:authorization|x-api-key|api-key|api_key)[\"']?\s*[:=]\s*[\"']?(?:(?:bearer|basic|token)\s+)?)"
    r"[^\s\"',;}]+"
)
_KEY_SHAPED = re.compile(
    r"\b(?:(?:sk|pk|rk|gsk|xai|hf|key|gh[pousr]|github_pat)[-_][A-Za-z0-9_\-]{16,}|AIza[A-Za-z0-9_\-]{30,})"
)


def scrub(text: str, secret: str | None = None) -> str:
    """``text`` without the secret, bearer tokens, echoed auth header values and key-shaped strings."""
    if secret:
        text = text.replace(secret, "***")
    text = _BEARER.sub(r"\1***", text)
    text = _HEADER.sub(r"\1***", text)
    return _KEY_SHAPED.sub("***", text)


def server_message(body: bytes, limit: int = 300, secret: str | None = None) -> str:
    """The human part of an error body: ``error.message`` (OpenAI, vLLM), ``detail`` or ``message``;
    else the text itself (an HTML page by its title), whitespace collapsed, scrubbed (before it is cut,
    so that no prefix of a key survives the cut) and cut to ``limit``."""
    text = ""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        doc = None
    if isinstance(doc, dict):
        err = doc.get("error")
        if isinstance(err, dict):
            err = err.get("message")
        for found in (err, doc.get("detail"), doc.get("message")):
            if isinstance(found, str) and found.strip():
                text = found
                break
    if not text:
        text = body[: 16 * limit].decode("utf-8", "replace")
        if "<html" in text[:500].lower():
            title = scrub(" ".join(_html_title(text).split()), secret)
            return "an HTML page (" + title[:80] + ")"
    text = scrub(" ".join(text[: 16 * limit].split()), secret)
    return text[:limit] + ("…" if len(text) > limit else "")


def out_of_quota(body: bytes) -> bool:
    """A 429 that is about billing (OpenAI's ``insufficient_quota``), not about pace."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    err = doc.get("error") if isinstance(doc, dict) else None
    return isinstance(err, dict) and "insufficient_quota" in (err.get("code"), err.get("type"))


_MODEL_MISSING = re.compile(
    r"(?i)\bmodel\b.{0,80}?\b(?:does not exist|doesn't exist|not found|is not available|is unknown)"
    r"|\b(?:unknown|invalid|no such|not a valid) model\b"
)


def model_missing(body: bytes, message: str) -> bool:
    """A 400 that says the model is not served (LiteLLM, OpenRouter and others answer 400, not 404):
    the same for every request, so it is told like a 404."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        doc = None
    err = doc.get("error") if isinstance(doc, dict) else None
    if isinstance(err, dict) and err.get("code") in ("model_not_found", "invalid_model"):
        return True
    return bool(_MODEL_MISSING.search(message))


def _html_title(text: str) -> str:
    m = re.search(r"(?is)<title>(.*?)</title>", text)
    return m.group(1) if m else "no title"


def origin(base_url: str) -> str:
    u = urlsplit(base_url)
    return u.netloc.rpartition("@")[2] or base_url


def fix_for(
    status: int,
    *,
    base_url: str,
    model: str,
    api_key_env: str | None,
    has_key: bool,
    served: list[str] | None,
) -> str:
    """The advice that follows a 401/403/404/405's own message (a 400 naming a missing model is told as a
    404)."""
    env = f"${api_key_env}" if api_key_env else "$OPENAI_API_KEY"
    if status == 401:
        if not has_key:
            return (
                "the server wants an API key: export it and name its variable in teacher.api_key_env "
                "(e.g. api_key_env: OPENAI_API_KEY)"
            )
        return f"check the key in {env} (teacher.api_key_env) and that it belongs to {origin(base_url)}"
    if status == 429:
        return f"the account of the key in {env} has no quota left: check its plan and billing, then re-run"
    if status == 403:
        return (
            f"the key in {env} is not allowed to use model {model!r} here: check its project and permissions"
        )
    path = urlsplit(base_url).path.rstrip("/")
    if served is not None and model not in served:
        listed = ", ".join(served[:10]) + (" …" if len(served) > 10 else "") if served else "nothing"
        return f"the server serves: {listed}. Fix the model in teacher.spec (openai:MODEL@URL)"
    if path.endswith("/chat/completions") or path.endswith("/completions"):
        return "the base URL must stop before /chat/completions (e.g. http://HOST:PORT/v1): it is added to it"
    return (
        f"check the base URL {base_url} (OpenAI-compatible servers usually answer under /v1) "
        f"and the model name {model!r}"
    )


def served_models(body: bytes) -> list[str] | None:
    """Model ids from a ``GET /models`` answer, or None when it is not one."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    data = doc.get("data") if isinstance(doc, dict) else None
    if not isinstance(data, list):
        return None
    return [str(m["id"]) for m in data if isinstance(m, dict) and "id" in m]
