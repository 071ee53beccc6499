"""What the in-process engines (vLLM, transformers) share: the model folder and its fingerprint, strict
options, and one worker thread on which the engine is built and every batch runs, so the event loop stays
free while a batch decodes and concurrent callers queue instead of interleaving batches."""

from __future__ import annotations

import abc
import asyncio
import hashlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar

from factory.errors import ConfigError, TeacherError
from factory.teachers.base import Teacher
from factory.types import Completion, Request


def model_folder(path: str, spec: str, *, need_config: bool = True) -> Path:
    """The local model folder a spec names, or a ConfigError that says how to get one."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise ConfigError(
            f"teacher spec {spec!r}: the model folder {str(folder)!r} does not exist. "
            "Point the spec at a local folder holding config.json and *.safetensors (for example one "
            "saved with `huggingface-cli download MODEL --local-dir DIR` on a machine with internet), "
            "or use the `embedded` teacher, which needs no download."
        )
    if need_config and not (folder / "config.json").is_file():
        raise ConfigError(
            f"teacher spec {spec!r}: {str(folder)!r} has no config.json, so it is not a model folder. "
            "Point the spec at the folder that holds config.json, the tokenizer files and *.safetensors."
        )
    return folder.resolve()


def fingerprint(folder: Path, extra_files: Sequence[Path] = ()) -> str:
    """A short hash of config.json and the weights' total size: stable when the folder moves, new when
    the weights change. ``extra_files`` (a GGUF file) add their name and size."""
    h = hashlib.sha256()
    config = folder / "config.json"
    h.update(config.read_bytes() if config.is_file() else b"")
    size = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
    h.update(f"\0safetensors={size}".encode())
    for p in extra_files:
        h.update(f"\0{p.name}={p.stat().st_size}".encode())
    return h.hexdigest()[:16]


def take_options(options: dict[str, Any], defaults: dict[str, Any], backend: str) -> dict[str, Any]:
    """``defaults`` overlaid with ``options``; an unknown key is a ConfigError naming it."""
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise ConfigError(
            f"unknown option(s) for the {backend} teacher: {', '.join(unknown)}. "
            f"Known options: {', '.join(sorted(defaults))}."
        )
    return {**defaults, **options}


def plain_messages(req: Request) -> list[dict[str, str]]:
    return [{"role": str(m["role"]), "content": str(m["content"])} for m in req.messages]


class LocalEngineTeacher(Teacher):
    """A model folder run in this process. Subclasses build their engine lazily in ``_run`` (on the worker
    thread) and free it in ``_drop``."""

    native_batch = True
    thread_name: ClassVar[str] = "factory-engine"

    def _init_local(self, folder: Path, *, fingerprint_now: bool) -> None:
        """``fingerprint_now`` False: a subclass builds the folder lazily (see :meth:`model_dir`)."""
        self._folder = folder
        self._fingerprint: str | None = self._fingerprint_of(folder) if fingerprint_now else None
        self._load_error: BaseException | None = None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=self.thread_name)

    def _fingerprint_of(self, folder: Path) -> str:
        return fingerprint(folder)

    def identity(self) -> dict[str, Any]:
        if self._fingerprint is None:
            self._fingerprint = self._fingerprint_of(self.model_dir())
        return {"backend": self.backend, "model": self.model, "fingerprint": self._fingerprint}

    def model_dir(self) -> Path:
        """The folder to load (called on the worker thread; subclasses may build it here)."""
        return self._folder

    @abc.abstractmethod
    def _run(self, requests: Sequence[Request]) -> list[Completion | TeacherError]: ...

    @abc.abstractmethod
    def _drop(self) -> None: ...

    async def complete(self, requests: Sequence[Request]) -> list[Completion | TeacherError]:
        if not requests:
            return []
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, self._run, list(requests))

    async def aclose(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._thread, self._drop)
        self._thread.shutdown(wait=False)
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=self.thread_name)
