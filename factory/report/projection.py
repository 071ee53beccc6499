"""The 2-D map of a run's sentence embeddings: a fixed sample of records, their MiniLM vectors, projected on
the first two principal components (numpy).

Vectors come from the cache the embedding filters keep beside the store (``filters.vectors``); texts it lacks
are encoded on the CPU and added to it, so the next report (or a later embed_dedup or diversity pass) does
not encode them again. Nothing is downloaded: without the embedding model, the map uses the vectors already
stored, or is left out with a note that names the fix.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from factory.errors import ConfigError
from factory.store import Store

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Map:
    points: list[tuple[float, float]]
    kept: list[bool]
    labels: list[str | None]
    tips: list[str]
    model: str
    stored: int  # sample records whose vector was already stored beside the store
    encoded: int  # sample records encoded now (and stored)
    explained: tuple[float, float]  # share of variance on each axis


def embedding_map(
    store: Store, run_id: str, last_pass: dict[str, Any] | None, label_field: str | None, points: int
) -> tuple[Map | None, str | None]:
    """(the map, None), or (None, why there is no map)."""
    import numpy as np

    from factory import embeddings
    from factory.curation import filters_dir
    from filters.vectors import EmbeddingCache, model_key

    if points <= 0:
        return None, "The map was turned off (--map-points 0)."
    rows = store.record_sample(run_id, points)
    if len(rows) < 3:
        return None, "Too few records for a map."
    steps = (last_pass or {}).get("filters", [])
    models = [f["params"].get("model") for f in steps if f["filter"] in ("diversity", "embed_dedup")]
    model = models[0] if models else None
    texts = [r["text"] or "" for r in rows]
    folder = filters_dir(store) / "embeddings" / model_key(model)
    try:
        cache = EmbeddingCache(folder, model)
        stored = sum(cache.stored([t]) is not None for t in texts)
        try:
            x = cache.get(texts)  # encodes what is not stored yet, and stores it beside the store
        except OSError:  # the folder cannot be written: encode without keeping the vectors
            x = EmbeddingCache(None, model).get(texts)
        keep_idx = list(range(len(rows)))
    except ConfigError as exc:  # no embedding model here: the vectors already stored, if enough
        old = EmbeddingCache(folder, model, compact=False) if folder.is_dir() else None
        vecs = [old.stored([t]) if old is not None else None for t in texts]
        keep_idx = [i for i, v in enumerate(vecs) if v is not None]
        if len(keep_idx) < 3:
            return None, f"No map: {exc}"
        log.info(
            "map: %d of %d records have a stored vector; the rest cannot be encoded", len(keep_idx), len(rows)
        )
        x = np.concatenate([vecs[i] for i in keep_idx])
        stored = len(keep_idx)
    xy, explained = pca2(np.asarray(x, dtype=np.float64))
    payloads = [_payload(rows[i]["payload"]) for i in keep_idx]
    return (
        Map(
            points=[(float(a), float(b)) for a, b in xy],
            kept=[rows[i]["dropped_by"] is None for i in keep_idx],
            labels=[
                None if label_field is None or label_field not in p else str(p[label_field]) for p in payloads
            ],
            tips=[_tip(rows[i]) for i in keep_idx],
            model=embeddings.model_name(model),
            stored=stored,
            encoded=len(keep_idx) - stored,
            explained=explained,
        ),
        None,
    )


def pca2(x: Any) -> tuple[Any, tuple[float, float]]:
    """The rows of ``x`` on its first two principal components (signs fixed: each component's largest
    loading is positive), and the share of variance each explains."""
    import numpy as np

    centred = x - x.mean(axis=0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    comps = vt[:2]
    signs = np.sign(comps[np.arange(len(comps)), np.abs(comps).argmax(axis=1)])
    comps = comps * signs[:, None]
    xy = centred @ comps.T
    if xy.shape[1] < 2:
        xy = np.column_stack([xy, np.zeros(len(xy))])
    var = s**2
    total = float(var.sum()) or 1.0
    shares = [float(v) / total for v in var[:2]] + [0.0, 0.0]
    return xy, (round(shares[0], 4), round(shares[1], 4))


def _payload(blob: str) -> dict[str, Any]:
    import orjson

    try:
        value = orjson.loads(blob)
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def _tip(row: dict[str, Any]) -> str:
    text = " ".join((row["text"] or "").split())
    text = text if len(text) <= 100 else text[:99] + "…"
    state = "kept" if row["dropped_by"] is None else f"dropped ({row['dropped_by']})"
    return f"{row['id']} · {state}: {text}"
