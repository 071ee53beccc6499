"""What the in-process engines (vLLM, transformers) share: the model folder and its identity, strict
options, and one worker thread on which a batch engine is built and every batch runs, so the event loop
stays free while a batch decodes and concurrent callers queue instead of interleaving batches (vLLM's
async engine runs on a loop thread of its own instead, see factory.teachers.vllm).

Identity (hashed into every request key): the backend, the content digest of the model's files
(:mod:`factory.teachers.weights`: weights, config, tokenizer and chat template, generation defaults) and
the options that can change an answer (``output_options``). The rule for options: an option is keyed
unless it is known to change only speed, memory or placement; so an engine argument this module does
not know is keyed (computing an answer twice is cheaper than serving one from another setting).
Keyed: dtype, quantization, ``max_model_len`` (a prompt over it is rejected, and raising it must give a
new key), the engine seed, and every other engine argument. Not keyed: GPU memory share, eager mode,
parallelism, batch sizes, swap and offload, prefix caching, chunked prefill, the device. Not the folder's
path or name: a moved or renamed copy of the same files keeps its cached answers.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar

from factory.errors import ConfigError, TeacherError
from factory.teachers.base import Teacher
from factory.teachers.weights import folder_digest
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

    def _init_local(self, folder: Path) -> None:
        self._folder = folder
        self._weights: str | None = None
        # now, not at the first request: an unreadable model is a config error before a run is started
        # (it is cached: a second construction only stats the files)
        self.weights_digest()
        self._load_error: BaseException | None = None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=self.thread_name)

    def weights_digest(self) -> str:
        """The content digest of the model's files (hashed once, then cached by path and stat)."""
        if self._weights is None:
            self._weights = self._digest_weights()
        return self._weights

    def _digest_weights(self) -> str:
        return folder_digest(self.model_dir())

    @abc.abstractmethod
    def output_options(self) -> dict[str, Any]:
        """The options that can change an answer (see the module docstring), with their values."""

    def identity(self) -> dict[str, Any]:
        return {"backend": self.backend, "weights": self.weights_digest(), "options": self.output_options()}

    def model_dir(self) -> Path:
        """The folder to load (called on the worker thread; subclasses may build it here)."""
        return self._folder

    def gpus_per_engine(self) -> int:
        """The GPUs one engine of this teacher spans when it runs on GPUs (a cluster worker reserves them)."""
        return 1

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
