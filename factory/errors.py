"""The exception tree, classified by who is to blame and whether a retry can help.

FactoryError
├── ConfigError         your input (config, seeds, flags); fix it and run again. CLI exit code 2.
├── StoreError          the DuckDB store cannot be opened or written (in use, disk full, corrupt).
│   └── StoreInUse      another process holds the store.
├── BudgetExhausted     a hard cap from the config was reached; re-run with a higher cap to go on.
└── TeacherError        a teacher call failed.
    ├── TeacherUnavailable  transient: timeouts, resets, 429, 5xx, an empty answer. Retried, never cached.
    ├── TeacherRejected     refused for this request: not retried in this run. Cached only when
    │                       ``cacheable`` (the exact keyed request always gets it: a schema the local
    │                       engine refuses, a prompt over the keyed max_model_len); an API's 4xx is not.
    ├── TeacherMisconfigured  the account or the endpoint is wrong (401, 403, 404): no request of the
    │                       run can succeed, so the run stops at once. Never cached; fix and re-run.
    └── MalformedOutput     the reply does not parse; a recipe may re-ask.
"""

from __future__ import annotations


class FactoryError(Exception):
    """Base of every error the factory raises on purpose. ``exit_code`` is what the CLI returns."""

    exit_code = 1


class ConfigError(FactoryError):
    """Bad user input. The message names the file, field or flag and how to fix it."""

    exit_code = 2


class StoreError(FactoryError):
    exit_code = 3


class StoreInUse(StoreError):
    pass


class BudgetExhausted(FactoryError):
    exit_code = 4


class TeacherError(FactoryError):
    """A failed teacher call. ``kind`` is a short stable slug used in stats (``timeout``, ``http_429`` ...)."""

    exit_code = 5

    def __init__(self, message: str, *, kind: str = "error", retry_after: float | None = None):
        super().__init__(message)
        self.kind = kind
        self.retry_after = retry_after


class TeacherUnavailable(TeacherError):
    pass


class TeacherRejected(TeacherError):
    """``cacheable``: the exact keyed request will always get this answer, so it may be cached."""

    def __init__(
        self,
        message: str,
        *,
        kind: str = "rejected",
        retry_after: float | None = None,
        cacheable: bool = False,
    ):
        super().__init__(message, kind=kind, retry_after=retry_after)
        self.cacheable = cacheable


class TeacherMisconfigured(TeacherError):
    """Wrong key, no permission, wrong model or URL: stops the run; the message names the fix."""


class MalformedOutput(TeacherError):
    pass
