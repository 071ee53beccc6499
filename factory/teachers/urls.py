"""The base URL of an OpenAI-compatible teacher, checked before anything is sent or stored.

Refused, each as one ConfigError naming teacher.spec / teacher.options.base_url: credentials in the URL
(the key belongs in the variable named by ``teacher.api_key_env``; messages mask them), white space and
control characters (a CR LF would reach the request line), a malformed host or port, port 0, a query or
fragment (they would be dropped), and a URL that already ends in ``/chat/completions``.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from factory.errors import ConfigError

DEFAULT_BASE_URL = "https://api.openai.com/v1"


def check_base_url(model: str, options: dict[str, Any]) -> None:
    """Refuse the base URL of ``openai:MODEL[@URL]`` (or ``options["base_url"]``) as the teacher would,
    without building it: for a driver that stores the config before its workers build teachers."""
    base_url(options.get("base_url") or model.partition("@")[2] or DEFAULT_BASE_URL)


def base_url(value: Any) -> str:
    """The base URL, checked: a plain http(s) URL without credentials, white space, control characters, a
    query or a fragment, and not the chat-completions path itself. Messages never echo credentials."""
    where = "fix the @URL in teacher.spec or teacher.options.base_url"
    if not isinstance(value, str):
        raise ConfigError(f"teacher base URL: a string, not {type(value).__name__}; {where}")
    url = value.strip().rstrip("/")
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in url):
        raise ConfigError(
            f"teacher base URL {_redacted(url)!r}: holds white space or a control character (a line break "
            f"would end up in the request line); {where}"
        )
    try:
        u = urlsplit(url)
        port = u.port
    except ValueError as exc:  # an unclosed [IPv6 bracket, a port that is not a number or out of range
        raise ConfigError(
            f"teacher base URL {_redacted(url)!r}: malformed ({exc}); expected http(s)://HOST[:PORT][/PATH] "
            f"with a port from 1 to 65535; {where}"
        ) from None
    if u.username is not None or u.password is not None:
        raise ConfigError(
            f"teacher base URL {_redacted(url)!r}: carries credentials; remove them from teacher.spec/base_url and "
            "put the key in an environment variable named by teacher.api_key_env (it is sent as a Bearer token "
            "and never stored)"
        )
    if u.scheme not in ("http", "https") or not u.hostname or port == 0 or u.query or u.fragment:
        raise ConfigError(
            f"teacher base URL {url!r}: expected http(s)://HOST[:PORT][/PATH] with a port from 1 to 65535, "
            f"no ?query or #fragment; {where}"
        )
    if u.path.rstrip("/").endswith("/chat/completions"):
        raise ConfigError(
            f"teacher base URL {url!r}: ends in /chat/completions; give the API's base "
            f"({url[: -len('/chat/completions')]}): /chat/completions is added to it"
        )
    return url


def _redacted(url: str) -> str:
    """``url`` with any ``user:password@`` replaced by ``***@``, found without parsing (it may not parse)."""
    scheme, sep, rest = url.partition("://")
    netloc, slash, path = rest.partition("/")
    if sep and "@" in netloc:
        return f"{scheme}://***@{netloc.rpartition('@')[2]}{slash}{path}"
    return url
