"""Seeds from the Hugging Face ecosystem, in a config's ``seeds`` or in ``factory.run(seeds=...)``.

Besides a seed file (factory.seeds), ``seeds`` may name:
  * a folder: a dataset saved with ``save_to_disk``, or a folder of Parquet shards (as a dataset repository
    holds them, e.g. ``data/train-00000-of-00002.parquet``; all of them, in path order);
  * ``hf:ID`` or ``hf:ID:SPLIT`` (default split ``train``): a dataset already in the local Hugging Face cache:
    prepared by ``datasets`` (``HF_DATASETS_CACHE``), or only its repository's files in the hub cache
    (``HF_HUB_CACHE``, e.g. from ``huggingface-cli download --repo-type dataset ID``), read as ``datasets``
    reads a repository. Nothing is downloaded: one that is not there is an error that says how to get it there.
In memory (``factory.run``): a ``datasets.Dataset``, a polars or pandas frame, an Arrow table, a list of dicts.

Each is written once as a Parquet file named by its rows' content, in a folder beside the store
(``STORE.seeds/``), and the run reads that file like any seed file: the same rows are the same run, however
they were given.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from factory.errors import ConfigError

if TYPE_CHECKING:
    import pyarrow as pa

HF = "hf:"


def seed_path(value: str, resolve: Callable[[str], Path], store_path: Path) -> Path:
    """The seed file a config's ``seeds`` names: the file itself, or the rows of a folder or a cached
    dataset written out beside the store."""
    if value.startswith(HF):
        return materialize(_cached(value), store_path)
    path = resolve(value)
    return materialize(path, store_path) if path.is_dir() else path


def _cached(value: str) -> pa.Table:
    name, _, split = value[len(HF) :].partition(":")
    split = split or "train"
    if not name:
        raise ConfigError(f"seeds {value!r}: write hf:DATASET_ID or hf:DATASET_ID:SPLIT")
    os.environ["HF_DATASETS_OFFLINE"] = "1"  # never a download at run time
    os.environ["HF_HUB_OFFLINE"] = "1"
    import datasets

    datasets.config.HF_DATASETS_OFFLINE = True
    datasets.config.HF_HUB_OFFLINE = True
    try:
        ds = datasets.load_dataset(name, split=split)
    except Exception as exc:
        ds = _from_hub_cache(value, name, split)
        if ds is not None:
            return _arrow(ds)
        why = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise ConfigError(
            f"seeds {value!r}: the dataset {name!r} (split {split!r}) is not in the local Hugging Face cache "
            f"({datasets.config.HF_DATASETS_CACHE}): {why}. Nothing is downloaded at run time: load it once "
            f"on a machine with internet (datasets.load_dataset({name!r}), or `hf download --repo-type dataset "
            f"{name}`) and copy the cache here, or save it "
            "with save_to_disk and point seeds at that folder"
        ) from None
    return _arrow(ds)


def _from_hub_cache(value: str, name: str, split: str) -> Any:
    """The split of a dataset repository whose files are in the hub cache (``HF_HUB_CACHE``, as
    ``huggingface_hub`` lays them out: ``datasets--OWNER--NAME/snapshots/REV/...``, the revision that
    ``refs/main`` names) but that ``datasets`` never prepared; None when the repository is not there."""
    import datasets
    from huggingface_hub import snapshot_download

    try:
        folder = snapshot_download(name, repo_type="dataset", local_files_only=True)
    except Exception:  # not in the cache (or no such id): the caller says how to get it there
        return None
    try:
        return datasets.load_dataset(folder, split=split)
    except Exception as exc:
        why = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise ConfigError(
            f"seeds {value!r}: the dataset {name!r} is in the local Hugging Face cache ({folder}) but its split "
            f"{split!r} does not load: {why}; name another split as hf:{name}:SPLIT"
        ) from None


def materialize(seeds: Any, store_path: Path) -> Path:
    """Seeds as a Parquet file named by their content, beside the store; a seed file as it is."""
    if isinstance(seeds, (str, os.PathLike)):
        path = Path(seeds)
        if not path.is_dir():
            return path  # a seed file: read as a config's would be (errors name it)
        table = _folder(path)
    elif _kind(seeds) == "pyarrow.Table":
        table = seeds
    else:
        table = _arrow(seeds)
    if table.num_rows == 0:
        raise ConfigError("seeds: no rows in them; give at least one")
    import pyarrow.parquet as pq

    folder = store_path.with_name(store_path.name + ".seeds")
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".seeds-", suffix=".parquet")
    os.close(fd)
    try:
        pq.write_table(table, tmp)
        final = folder / f"{_content_name(table, tmp)}.parquet"
        if final.exists():
            os.unlink(tmp)
        else:
            os.replace(tmp, final)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return final


def _content_name(table: pa.Table, written: str) -> str:
    """A name for the rows' content: the same rows from a frame, a Dataset or a list of dicts get one
    file. Rows that JSON cannot hold (bytes) are named by the file's bytes instead."""
    from factory.keys import digest

    try:
        return digest("seedrows1", table.to_pylist(), length=20)
    except TypeError:
        with open(written, "rb") as f:
            return hashlib.file_digest(f, "blake2b").hexdigest()[:20]


def _folder(path: Path) -> pa.Table:
    """A save_to_disk folder, or a folder of Parquet shards."""
    if (path / "state.json").is_file() or (path / "dataset_info.json").is_file():
        return _saved_dataset(path)
    shards = sorted(p for p in path.rglob("*.parquet") if p.is_file())
    if shards:
        import pyarrow.parquet as pq

        try:
            return pq.ParquetDataset(shards).read()
        except Exception as exc:
            raise ConfigError(
                f"seeds {str(path)!r}: its Parquet shards do not read as one table: {exc}"
            ) from None
    raise ConfigError(
        f"seeds {str(path)!r} is a folder but neither a dataset saved with save_to_disk (no state.json) nor a "
        "folder of .parquet shards; point seeds at a seed file, or at such a folder"
    )


def _saved_dataset(path: Path) -> pa.Table:
    if not (path / "dataset_info.json").is_file() and not (path / "state.json").is_file():
        raise ConfigError(
            f"seeds {str(path)!r} is a folder but not a dataset saved with save_to_disk (no state.json); "
            "pass a seed file, or the folder of one Dataset"
        )
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as exc:
        raise ConfigError(f"seeds {str(path)!r}: datasets could not load it: {exc}") from None
    if isinstance(ds, datasets.DatasetDict):
        raise ConfigError(
            f"seeds {str(path)!r} holds several splits ({', '.join(ds)}); pass the folder of one split "
            f"(e.g. {str(path / next(iter(ds)))!r})"
        )
    return _arrow(ds)


def _arrow(seeds: Any) -> pa.Table:
    """A table of the seed rows, from a Dataset, a polars or pandas frame, or a list of dicts."""
    import pyarrow as pa

    kind = _kind(seeds)
    if kind == "datasets.Dataset":
        return seeds.with_format("arrow")[:]
    if kind == "datasets.DatasetDict":
        raise ConfigError(
            f"seeds= is a DatasetDict ({', '.join(seeds)}); pass one split, e.g. seeds=ds['train']"
        )
    if kind == "polars.DataFrame":
        return seeds.to_arrow()
    if kind == "pandas.DataFrame":
        return pa.Table.from_pandas(seeds, preserve_index=False)
    if isinstance(seeds, pa.Table):
        return seeds
    if isinstance(seeds, (list, tuple)) and all(isinstance(r, dict) for r in seeds):
        try:
            return pa.Table.from_pylist(list(seeds))
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise ConfigError(
                f"seeds=: the rows do not make one table ({exc}); give every row the same fields and types"
            ) from None
    raise ConfigError(
        f"seeds= is a {kind}; pass a datasets.Dataset, a polars or pandas DataFrame, a list of dicts, a seed "
        "file or a save_to_disk folder"
    )


def _kind(obj: Any) -> str:
    return f"{type(obj).__module__.split('.')[0]}.{type(obj).__name__}"
