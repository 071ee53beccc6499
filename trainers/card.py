"""The student's model card (README.md in its folder): the export it was trained on and that export's card
facts, how it was trained, and the evaluation table. Everything comes from the export's card, the training
config and metrics.json; what none of them holds is left out."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from factory import __version__
from factory import markdown as md

PIPELINE = {"sft": "text-generation", "step_by_step": "text-generation", "triples": "text-generation",
            "classifier": "text-classification", "dpo": "text-generation", "kd": "text-generation"}  # fmt: skip
# What the card reads from metrics.json (a test holds every training's metrics to it).
METRIC_KEYS = {
    "train": ("global_step", "examples", "first_loss", "final_loss", "examples_per_s", "train_s", "device",
              "loss_curve"),
    "eval": ("split", "rows", "models", "samples", "notes"),
}  # fmt: skip
SUMMARY_KEYS = (
    "run",
    "recipe",
    "records generated",
    "records curated",
    "rows exported",
    "splits",
    "config hash",
)


def _table_after(lines: list[str], start: int) -> list[list[str]]:
    """The rows (cells stripped) of the first Markdown table at or after line ``start``."""
    rows: list[list[str]] = []
    for line in lines[start:]:
        if line.startswith("|"):
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
            if not all(set(c) <= {"-", ":"} for c in cells):
                rows.append(cells)
        elif rows:
            break
    return rows


def dataset_facts(export_dir: Path) -> dict[str, Any]:
    """What the export's card says: license, name, run, recipe, curated counts, splits and teachers."""
    readme = Path(export_dir) / "README.md"
    if not readme.is_file():
        return {}
    from huggingface_hub import DatasetCard

    card = DatasetCard.load(str(readme))
    meta = card.data.to_dict()
    facts: dict[str, Any] = {k: meta[k] for k in ("license", "pretty_name") if meta.get(k)}
    lines = card.text.splitlines()
    summary = {r[0]: r[1].strip("`") for r in _table_after(lines, 0) if len(r) == 2}
    facts.update({k: summary[k] for k in SUMMARY_KEYS if k in summary})
    head = next((i for i, x in enumerate(lines) if x.strip() == "## Teachers"), None)
    if head is not None:
        rows = _table_after(lines, head)
        if rows and "spec" in rows[0]:
            col = rows[0].index("spec")
            facts["teachers"] = [r[col] for r in rows[1:] if len(r) > col]
    return facts


def _metric(v: Any) -> str:
    return "" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)


def eval_rows(report: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    """The student-vs-teacher table of an evaluation report (also what `factory eval` prints)."""
    keys = [k for k in ("exact_match", "exact_match_per_sample", "accuracy", "macro_f1", "precision", "recall", "f1",
                      "eval_loss", "kd_kl", "n")
            if any(k in m["metrics"] for m in report["models"])]  # fmt: skip
    rows = [[m["name"], *(_metric(m["metrics"].get(k)) for k in keys)] for m in report["models"]]
    return ["model", *keys], rows


def render_model_card(cfg: dict[str, Any], meta: dict[str, Any], metrics: dict[str, Any]) -> str:
    facts = metrics.get("dataset", {})
    train = metrics["train"]
    header = {"library_name": "transformers", "pipeline_tag": PIPELINE[meta["task"]],
              "tags": ["distill-factory", "distillation", meta["task"], *(["lora"] if cfg.get("lora") else [])]}  # fmt: skip
    title = f"{Path(meta['out']).name}: a {meta['task']} student"
    out = ["---", yaml.safe_dump(header, sort_keys=False).rstrip(), "---", "", f"# {title}", ""]
    out += [f"Fine-tuned from `{meta['student_base']}` (`--student {meta['student']}`) on the export "
            f"`{meta['export']}`{' with LoRA adapters (merged)' if cfg.get('lora') else ''} by distill-factory "
            f"{__version__}. Every figure below comes from that export's card, the training config and "
            "`metrics.json`.", ""]  # fmt: skip
    out += ["## Training data", ""]
    rows = [["export folder", f"`{meta['export']}`"], ["shape", meta["shape"]]]
    names = {"pretty_name": "dataset name", "run": "run id"}
    rows += [[names.get(k, k), v] for k, v in facts.items() if k != "teachers"]
    if facts.get("teachers"):
        rows.append(["teachers", ", ".join(facts["teachers"])])
    rows += [["trained on", f"{train['examples']} rows of train ({train.get('examples_seen')} seen)"],
             ["evaluated on", f"{metrics['eval'].get('rows', 0)} rows of {metrics['eval'].get('split')}"]]  # fmt: skip
    out += md.table(["", ""], rows)
    if not facts.get("license"):
        out += [
            "The export's card names no license: check the data's terms before publishing this model.",
            "",
        ]
    out += ["## Training", ""]
    keep = ("task", "epochs", "max_steps", "batch_size", "grad_accum", "learning_rate", "max_length", "lora",
            "lora_r", "lora_alpha", "alpha", "label_only", "label_prefix", "rationale_prefix", "beta", "sft_weight", "kd_weight", "kd_temperature", "seed", "precision")  # fmt: skip
    shown = {k: cfg.get(k) for k in keep if k in cfg}
    if meta["task"] != "step_by_step":
        shown = {
            k: v
            for k, v in shown.items()
            if k not in ("alpha", "label_only", "label_prefix", "rationale_prefix")
        }
    if meta["task"] != "dpo":
        shown = {k: v for k, v in shown.items() if k not in ("beta", "sft_weight")}
    if meta["task"] != "kd":
        shown = {k: v for k, v in shown.items() if k not in ("kd_weight", "kd_temperature")}
    if not cfg.get("lora"):
        shown = {k: v for k, v in shown.items() if not k.startswith("lora_")}
    shown["learning_rate"] = meta.get("learning_rate")
    out += md.table(
        ["setting", "value"], [[k, v if isinstance(v, str) else md.compact_json(v)] for k, v in shown.items()]
    )
    curve = train.get("loss_curve") or []
    facts_rows = [["optimizer steps", train["global_step"]], ["first / last logged loss",
                  f"{_metric(train.get('first_loss'))} / {_metric(train.get('final_loss'))}"],
                  ["examples/s", _metric(train.get("examples_per_s"))], ["train time (s)", train.get("train_s")],
                  ["device", train.get("device")]]  # fmt: skip
    out += md.table(["", ""], facts_rows)
    if meta["task"] == "step_by_step":
        what = (
            "the label task only (baseline)"
            if cfg.get("label_only")
            else (f"loss = {cfg.get('alpha')}·CE(label) + {1 - float(cfg.get('alpha', 0.5)):g}·CE(rationale)")
        )
        out += [f"Distilling Step-by-Step: {what}. At inference only the label task runs: prompt "
                f"`{meta['label_prefix']} QUESTION`.", ""]  # fmt: skip
    if meta["task"] == "dpo":
        sft = f" + {cfg.get('sft_weight')}·CE(chosen)" if cfg.get("sft_weight") else ""
        out += [f"DPO (Rafailov et al. 2023) on (prompt, chosen, rejected) pairs: loss = −log σ(β·Δ), β = "
                f"{cfg.get('beta')}, Δ the chosen-minus-rejected log-ratio of the student to the starting student "
                f"(frozen reference){sft}. At inference the prompt is given as is.", ""]  # fmt: skip
    if meta["task"] == "kd":
        w, t = float(cfg.get("kd_weight", 0.5)), float(cfg.get("kd_temperature", 1.0))
        out += ["Knowledge distillation (Hinton et al. 2015) from the teacher's top-k distribution: the student "
                "reads the prompt through its chat template, then the teacher's own answer tokens "
                "(`teacher_token_ids`), and at each answer position t learns",
                "", f"    loss = {1 - w:g}·CE + {w:g}·{t:g}²·KL,  KL = mean_t Σ_j q_t(j)·(log q_t(j) − log p_t(j))", "",
                f"with q_t the teacher's top-k log-probabilities (`teacher_top_logprobs`) divided by T = {t:g} and "
                "renormalized over the k ids (`teacher_top_ids`), log p_t the student's log-softmax of its logits "
                "divided by T, taken at those ids, and CE the cross-entropy of the teacher's tokens (T = 1): CE the "
                "mean over the answer tokens, KL over those that have a top-k (an appended end of sequence has "
                f"none); kd_weight = {w:g}, kd_temperature = {t:g}. At inference the prompt is given as is.",
                ""]  # fmt: skip
    if curve:
        pts = curve if len(curve) <= 12 else [*curve[:: max(1, len(curve) // 12)], curve[-1]]
        out += ["Loss curve (logged steps; all of them are in metrics.json):", "",
                *md.table(["step", "loss"], [[p["step"], _metric(p["loss"])] for p in pts])]  # fmt: skip
    out += _eval_section(metrics["eval"])
    out += ["## Use", "", *md.fence(_usage(meta), "python")]
    return "\n".join(out).rstrip() + "\n"


def _eval_section(report: dict[str, Any]) -> list[str]:
    out = ["## Evaluation", ""]
    if not report.get("models"):
        return [*out, "Not evaluated.", ""]
    out += [f"On the `{report['split']}` split ({report['rows']} rows, {report.get('inputs', report['rows'])} "
            f"distinct inputs); reference: {report.get('reference', 'the exported answers')}.", ""]  # fmt: skip
    head, rows = eval_rows(report)
    out += md.table(head, rows)
    out += [f"- {n}" for n in report.get("notes", [])] + ([""] if report.get("notes") else [])
    for name, samples in report.get("samples", {}).items():
        if samples:
            out += [
                f"Samples from {name}:",
                "",
                *md.fence(md.indented_json(md.shorten(samples, 300)), "json"),
            ]
    return out


def _usage(meta: dict[str, Any]) -> str:
    if meta["task"] == "classifier":
        return ("from transformers import pipeline\n\nclf = pipeline('text-classification', model='MODEL_DIR')\n"
                "print(clf('some text'))")  # fmt: skip
    prefix = f"{meta['label_prefix']} " if meta["task"] == "step_by_step" else ""
    if meta["chat"]:
        prompt = (f"tok.apply_chat_template([{{'role': 'user', 'content': '{prefix}' + question}}], "
                  "add_generation_prompt=True, return_tensors='pt', return_dict=True)")  # fmt: skip
    else:
        prompt = "tok(question, return_tensors='pt')  # COMET style: 'head relation [GEN]'"
    return ("from transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
            "tok = AutoTokenizer.from_pretrained('MODEL_DIR')\nmodel = AutoModelForCausalLM.from_pretrained('MODEL_DIR')\n"
            f"inputs = {prompt}\n"
            f"out = model.generate(**inputs, max_new_tokens={meta['max_new_tokens']}, do_sample=False)\n"
            "print(tok.decode(out[0][inputs['input_ids'].shape[1]:], skip_special_tokens=True))")  # fmt: skip
