"""Read an export folder: its shape (from the columns), the task it fits, and the train / held-out splits.

An export holds the splits its run config asked for. Evaluation takes ``test``, else ``validation``; an export
with only ``train`` gets a held-out share, chosen by a hash of each row's input so that every sample of one
question lands on the same side and the same rows are held out in training and in ``factory eval``.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from factory.errors import ConfigError

log = logging.getLogger(__name__)

# The teacher's answer tokens and its top-k log-probabilities at each (the recipe param `logprobs: K`), on
# plain and conversation rows; the kd task trains on them, the others ignore them.
KD_COLUMNS = ("teacher_token_ids", "teacher_top_ids", "teacher_top_logprobs")
# Every shape but preference may carry them (and, from a provider that names no token ids, the token strings).
SOFT = (*KD_COLUMNS, "teacher_tokens", "teacher_top_tokens")
# The columns of each shape `factory export --as` writes (required, optional); lineage columns may follow.
SHAPE_COLUMNS = {
    "messages": (("messages",), SOFT),
    "step_by_step": (("input", "label", "rationale"), ("gold", *SOFT)),
    "prompt_completion": (("prompt", "completion"), ("gold", *SOFT)),
    "text_label": (("text", "label"), SOFT),
    "triples": (("head", "relation", "tail"), SOFT),
    "preference": (("prompt", "chosen", "rejected"), ("gold", "chosen_record_id", "rejected_record_id")),
}
LINEAGE = ("record_id", "seed_id", "stage", "sample_index", "teacher", "template_version", "request_keys",
           "dropped_by", "focus_round", "focus_eval")  # fmt: skip
TASK_SHAPES = {
    "sft": ("messages", "prompt_completion"),
    "step_by_step": ("step_by_step",),
    "classifier": ("text_label",),
    "triples": ("triples", "prompt_completion"),
    "dpo": ("preference",),
    "kd": ("messages", "prompt_completion"),
}
EXPORT_HINT = {
    "sft": "factory export RUN --as messages --out DIR",
    "step_by_step": "factory export RUN --as step_by_step --out DIR (rationales recipe)",
    "classifier": "factory export RUN --as text_label --out DIR (boundary or relabel recipe)",
    "triples": "factory export RUN --as triples --out DIR (commonsense recipe)",
    "dpo": "factory export RUN --as preference --out DIR (rationales recipe)",
    "kd": "factory export RUN --as prompt_completion --out DIR (a run with the recipe param `logprobs: K`)",
}
EVAL_SPLITS = ("test", "validation")


@dataclass(slots=True)
class Export:
    path: Path
    shape: str
    splits: Any  # datasets.DatasetDict
    label_names: list[str] | None
    fingerprint: str  # names and sizes of the data files: a re-export with other rows changes it


@dataclass(slots=True)
class Split:
    train: Any  # datasets.Dataset
    eval: Any  # datasets.Dataset
    name: str  # the held-out split's name, or "train (held out …)"
    note: str | None  # said when the held-out rows come from train


def detect_shape(columns: list[str]) -> str | None:
    """The shape whose columns these are exactly (a records export of a recipe has others, and is None)."""
    rest = set(columns) - set(LINEAGE)
    for shape, (required, optional) in SHAPE_COLUMNS.items():
        if set(required) <= rest <= {*required, *optional}:
            return shape
    return None


def load_export(path: str | Path, *, cache_dir: str | None = None) -> Export:
    """The export at ``path``, loaded with ``datasets`` (parquet shards, or jsonl / parquet files)."""
    p = Path(path).expanduser()
    if not p.is_dir():
        raise ConfigError(
            f"EXPORT_DIR {p}: no such folder; make one with `factory export RUN --as SHAPE --out {p}`"
        )
    import datasets

    files = sorted(
        [*p.glob("data/*.parquet"), *p.glob("*.parquet"), *p.glob("*.jsonl")], key=lambda f: f.name
    )
    if not files:
        raise ConfigError(f"EXPORT_DIR {p}: no parquet or jsonl files; is it a `factory export` folder?")
    from trainers.student import quiet

    with quiet():
        try:
            ds = datasets.load_dataset(str(p), cache_dir=cache_dir)
        except Exception as exc:
            raise ConfigError(f"EXPORT_DIR {p}: cannot be read as a dataset: {exc}") from None
    first = ds[next(iter(ds))]
    shape = detect_shape(first.column_names)
    if shape is None:
        raise ConfigError(
            f"EXPORT_DIR {p}: its columns ({', '.join(first.column_names)}) are not a training shape (a records "
            "export?); export with --as messages | prompt_completion | step_by_step | text_label | triples | preference"
        )
    label_names = None
    if shape == "text_label":
        feat = first.features["label"]
        label_names = list(getattr(feat, "names", None) or sorted(set(first["label"])))
    h = hashlib.blake2b(digest_size=8)
    for f in files:
        h.update(f"{f.relative_to(p)}:{f.stat().st_size};".encode())
    return Export(p.resolve(), shape, ds, label_names, h.hexdigest())


def check_task(export: Export, task: str) -> None:
    """A ConfigError when the export's shape cannot train ``task``."""
    fits = TASK_SHAPES[task]
    if export.shape not in fits:
        raise ConfigError(
            f"--task {task} needs an export in the shape {' or '.join(fits)}, but {export.path} holds "
            f"{export.shape}; export it with `{EXPORT_HINT[task]}`"
        )
    if task == "triples" and export.shape == "prompt_completion":
        prompts = export.splits[next(iter(export.splits))]["prompt"][:20]
        if not all(str(x).rstrip().endswith("[GEN]") for x in prompts):
            raise ConfigError(
                f"--task triples needs commonsense triples; {export.path} holds prompt/completion pairs that "
                "are not `head relation [GEN]` prompts (use --task sft for them)"
            )


def input_text(row: dict[str, Any], shape: str) -> str:
    """What a row asks: the key that groups every sample of one input."""
    if shape == "messages":
        users = [m["content"] for m in row["messages"] if m["role"] != "assistant"]
        return "\n".join(users)
    if shape == "triples":
        return f"{row['head']} {row['relation']}"
    key = {
        "step_by_step": "input",
        "prompt_completion": "prompt",
        "text_label": "text",
    }.get(shape)
    if key is None:  # preference
        return turn_text(row["prompt"], answer=False)
    return str(row[key])


def turn_text(value: Any, *, answer: bool) -> str:
    """A preference column as text: plain text as is; TRL's conversational form (a list of turns) as the
    content of its assistant turns (``answer``) or of its other turns (a prompt)."""
    if isinstance(value, list):
        return "\n".join(
            str(t["content"])
            for t in value
            if isinstance(t, dict) and (t.get("role") == "assistant") == answer
        )
    return str(value)


def _rank(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8, person=b"holdout1").digest(), "big")


def pick_splits(export: Export, eval_split: str | None, holdout: float) -> Split:
    """Train on ``train``; hold out ``eval_split`` (or test, else validation, else a share of train's inputs)."""
    ds = export.splits
    if "train" not in ds:
        raise ConfigError(f"EXPORT_DIR {export.path}: no train split (it has {', '.join(ds)})")
    if eval_split is not None:
        if eval_split not in ds:
            raise ConfigError(f"--eval-split {eval_split!r}: {export.path} has the splits {', '.join(ds)}")
        if eval_split == "train":
            raise ConfigError(
                "--eval-split train: evaluate on rows the student did not see (test, validation)"
            )
        return Split(ds["train"], ds[eval_split], eval_split, None)
    for name in EVAL_SPLITS:
        if name in ds:
            return Split(ds["train"], ds[name], name, None)
    train = ds["train"]
    keys = [input_text(r, export.shape) for r in train]
    groups = sorted(set(keys), key=_rank)
    if len(groups) < 2:
        raise ConfigError(
            f"EXPORT_DIR {export.path}: only a train split, with {len(groups)} distinct input; nothing can be "
            "held out for evaluation; export with splits (export.splits in the run config)"
        )
    chosen = set(groups[: min(len(groups) - 1, max(1, round(holdout * len(groups))))])
    held = [i for i, k in enumerate(keys) if k in chosen]
    kept = [i for i, k in enumerate(keys) if k not in chosen]
    note = (
        f"the export has only a train split: {len(held)} of its {len(train)} rows ({len(chosen)} of "
        f"{len(groups)} distinct inputs, picked by a hash of each) are held out for evaluation, not trained on"
    )
    log.info(note)
    return Split(train.select(kept), train.select(held), f"train (held out {holdout:.0%})", note)


def take(ds: Any, n: int | None) -> Any:
    return ds if n is None or len(ds) <= n else ds.select(range(n))
