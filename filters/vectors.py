"""Sentence embeddings for the set filters (`embed_dedup`, `diversity`) and the cells they search in.

``embed`` encodes each distinct text once with the shared model (``factory.embeddings``), keeps the vectors
in ``ctx.work`` for the other filters of the pass and, when the context has a ``cache_dir``, on disk, so
later passes and runs do not encode them again. Cache layout::

    <cache_dir>/embeddings/<model key>/<stem>.npy        float32 unit vectors, one row per text
    <cache_dir>/embeddings/<model key>/<stem>.keys.npy   the texts' blake2b-128 hex digests ('S32')

A shard counts once its keys file exists (written last, by rename); more than ``MAX_SHARDS`` shards are
merged into one. The model key is the model's name (a custom folder adds a digest of its path).

``partition`` splits unit vectors into cells by spherical k-means, and lists for each vector the cells
nearest to it (an inverted-file index, as in faiss' IVF): near neighbours share a cell or sit in the next
ones, so a search looks at a few cells instead of every vector.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from factory.keys import digest

if TYPE_CHECKING:
    import numpy as np

    from filters.base import Context, Row

log = logging.getLogger(__name__)

MAX_SHARDS = 32
T = TypeVar("T")
R = TypeVar("R")


def text_key(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest().encode()


def model_key(model: str | None) -> str:
    """The folder name for a model's vectors: the default model's name, or a custom folder's name plus a
    digest of its resolved path (two folders with the same name do not share vectors)."""
    from factory import embeddings

    if model is None:
        return embeddings.DEFAULT_MODEL
    path = Path(model).expanduser().resolve()
    return f"{path.name}-{digest('emb1', str(path), length=8)}"


class EmbeddingCache:
    """The vectors of one model: in memory, and in ``folder`` when given. ``encoded`` / ``encode_seconds``
    add up what this object had to encode (for the log line and the benchmark)."""

    def __init__(self, folder: Path | None, model: str | None, *, compact: bool = True) -> None:
        """``compact=False`` reads the shards as they are (a reader that must not write)."""
        import numpy as np

        self.folder, self.model = folder, model
        self.encoded, self.encode_seconds = 0, 0.0
        self._index: dict[bytes, int] = {}
        self._matrix = np.zeros((0, 0), dtype=np.float32)
        if folder is not None and folder.is_dir():
            self._load(compact)

    def _shards(self) -> list[tuple[Path, Path]]:
        assert self.folder is not None
        keys = sorted(self.folder.glob("*.keys.npy"))
        return [(k.with_name(k.name.removesuffix(".keys.npy") + ".npy"), k) for k in keys]

    def _load(self, compact: bool = True) -> None:
        import numpy as np

        parts, names = [], []
        for vec_path, key_path in self._shards():
            try:
                vecs, keys = np.load(vec_path), np.load(key_path)
            except (OSError, ValueError) as exc:  # a torn or foreign file: skip it, it is re-encoded
                log.warning("embedding cache: skipping %s (%s)", vec_path, exc)
                continue
            if vecs.ndim != 2 or len(vecs) != len(keys):
                log.warning("embedding cache: skipping %s (rows and keys differ)", vec_path)
                continue
            parts.append(vecs.astype(np.float32, copy=False))
            names.append(keys)
        if parts and len({p.shape[1] for p in parts}) == 1:
            self._matrix = np.concatenate(parts)
            self._index = {k: i for i, k in enumerate(np.concatenate(names).tolist())}
            if compact and len(parts) > MAX_SHARDS:
                self._compact(np.array(list(self._index), dtype="S32"))

    def _write(self, vecs: np.ndarray, keys: np.ndarray) -> None:
        import numpy as np

        assert self.folder is not None
        self.folder.mkdir(parents=True, exist_ok=True)
        stem = f"{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"
        for name, arr in ((f"{stem}.npy", vecs), (f"{stem}.keys.npy", keys)):  # keys last: the commit
            tmp = self.folder / f".{name}.tmp"
            with tmp.open("wb") as fh:
                np.save(fh, arr)
            os.replace(tmp, self.folder / name)

    def _compact(self, keys: np.ndarray) -> None:
        old = self._shards()
        rows = [self._index[k] for k in keys.tolist()]
        self._write(self._matrix[rows], keys)
        for vec_path, key_path in old:
            key_path.unlink(missing_ok=True)
            vec_path.unlink(missing_ok=True)

    def get(self, texts: Sequence[str]) -> np.ndarray:
        """Unit float32 vectors for ``texts`` in order; texts not seen before are encoded (each distinct
        text once) and stored."""
        import numpy as np

        from factory import embeddings

        keys = [text_key(t) for t in texts]
        todo: dict[bytes, str] = {}
        for k, t in zip(keys, texts, strict=True):
            if k not in self._index and k not in todo:
                todo[k] = t
        if todo:
            start = time.perf_counter()
            vecs = embeddings.encode(list(todo.values()), model=self.model)
            took = time.perf_counter() - start
            self.encoded += len(todo)
            self.encode_seconds += took
            log.info("encoded %d texts in %.1f s (%.0f sentences/s)", len(todo), took, len(todo) / took)
            new_keys = np.array(list(todo), dtype="S32")
            if self.folder is not None:
                self._write(vecs, new_keys)
            base = len(self._index)
            self._matrix = vecs if base == 0 else np.concatenate([self._matrix, vecs])
            self._index.update((k, base + i) for i, k in enumerate(todo))
        if not texts:
            return np.zeros((0, self._matrix.shape[1]), dtype=np.float32)
        return self._matrix[[self._index[k] for k in keys]]

    def stored(self, texts: Sequence[str]) -> np.ndarray | None:
        """The vectors of ``texts`` in order when every one is already stored; None otherwise. Never encodes."""
        keys = [text_key(t) for t in texts]
        if not keys or any(k not in self._index for k in keys):
            return None
        return self._matrix[[self._index[k] for k in keys]]


def embed(texts: Sequence[str], model: str | None, ctx: Context) -> np.ndarray:
    """Unit vectors for ``texts`` from the model (default all-MiniLM-L6-v2), shared by the filters of a pass
    through ``ctx.work`` and kept in ``ctx.cache_dir`` when set."""
    key = model_key(model)
    cache = ctx.work.get(f"embeddings:{key}")
    if not isinstance(cache, EmbeddingCache):
        folder = ctx.cache_dir / "embeddings" / key if ctx.cache_dir is not None else None
        cache = ctx.work[f"embeddings:{key}"] = EmbeddingCache(folder, model)
    return cache.get(texts)


def precompute(rows: list[Row], params: Any, folder: Path) -> None:
    """The sentence vectors of the records' texts under ``params.model``, into ``folder``'s embedding cache:
    the executor's hook of the filters that embed (``embed_dedup``, ``diversity``)."""
    model = params.model
    EmbeddingCache(folder / "embeddings" / model_key(model), model).get([r.text for r in rows])


# ---- compute helpers ------------------------------------------------------------------------------


def workers() -> int:
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, 8))


@contextlib.contextmanager
def blas_single_thread() -> Iterator[None]:
    """Small matrix products run faster on one BLAS thread each, with our threads side by side: OpenBLAS
    with 2 threads on 900×110 blocks was 5× slower than with 1 on the 2-core box, and the cell search of
    100,000 vectors took 5 s with this limit, 11 s without."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # threadpoolctl comes with scikit-learn (a sentence-transformers dependency)
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield


def parallel(fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
    """``fn`` over ``items`` on a few threads (numpy and BLAS release the GIL), results in order."""
    n = workers()
    if n == 1 or len(items) < 2:
        return [fn(i) for i in items]
    with blas_single_thread(), ThreadPoolExecutor(n) as pool:
        return list(pool.map(fn, items))


# ---- cells ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Cells:
    """``centroids`` (k, d) unit rows; ``probes`` (n, p): for each vector its p nearest cells, nearest
    first (its own cell is the first); ``order`` the vector indices sorted by own cell, and ``bounds`` the
    slices of ``order`` per cell (cell c holds ``order[bounds[c]:bounds[c + 1]]``)."""

    centroids: np.ndarray
    probes: np.ndarray
    order: np.ndarray
    bounds: np.ndarray

    def members(self, cell: int) -> np.ndarray:
        return self.order[self.bounds[cell] : self.bounds[cell + 1]]


def nearest_cells(x: np.ndarray, centroids: np.ndarray, p: int, block: int = 4096) -> np.ndarray:
    import numpy as np

    k = len(centroids)
    p = min(p, k)

    def one(s: int) -> np.ndarray:
        sims = x[s : s + block] @ centroids.T
        top = np.argpartition(sims, k - p, axis=1)[:, k - p :]
        order = np.argsort(-np.take_along_axis(sims, top, 1), axis=1, kind="stable")
        return np.take_along_axis(top, order, 1).astype(np.int32)

    parts = parallel(one, range(0, len(x), block))
    return np.concatenate(parts) if parts else np.zeros((0, p), dtype=np.int32)


def partition(x: np.ndarray, k: int, p: int, *, iters: int = 2, seed: int = 0) -> Cells:
    """Spherical k-means (``iters`` Lloyd steps on a sample of 32 vectors per cell, seeded from the data:
    deterministic) and each vector's ``p`` nearest cells."""
    import numpy as np

    n = len(x)
    k = max(1, min(k, n))
    rng = np.random.default_rng(seed)
    train = x[np.sort(rng.choice(n, 32 * k, replace=False))] if n > 32 * k else x
    centroids = train[np.sort(rng.choice(len(train), k, replace=False))].copy()
    for _ in range(iters):
        own = nearest_cells(train, centroids, 1)[:, 0]
        by_cell = np.argsort(own, kind="stable")
        used, starts = np.unique(own[by_cell], return_index=True)
        sums = np.add.reduceat(train[by_cell], starts, axis=0)
        centroids[used] = as_unit(sums)
    probes = nearest_cells(x, centroids, p)
    order = np.argsort(probes[:, 0], kind="stable")
    bounds = np.searchsorted(probes[order, 0], np.arange(k + 1))
    return Cells(centroids, probes, order, bounds)


def as_unit(x: Any) -> np.ndarray:
    """Float32, C-contiguous rows of length 1 (zero rows stay zero)."""
    import numpy as np

    arr = np.ascontiguousarray(x, dtype=np.float32)
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    return np.divide(arr, norms, out=np.zeros_like(arr), where=norms > 0)
