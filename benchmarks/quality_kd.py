"""The data of the quality benchmark's (f) kd variant: the curated prompt/completion export of (d) sft, with a
teacher's top-k log-probabilities at every answer token.

The PaLM rationales come without log-probabilities, and PaLM is not at hand. A local teacher of the
student's tokenizer (``--kd-teacher``, default ``embedded``: SmolLM2-135M-Instruct) therefore reads each
curated completion after its question, through its chat template, in one teacher-forced pass; at each answer
token its top-k ids and log-probabilities become ``teacher_top_ids`` and ``teacher_top_logprobs``, and the
completion's own tokens, then the end of turn, ``teacher_token_ids``: the columns an export of a run with the
recipe param ``logprobs: K`` holds. Teacher forcing instead of generation keeps (f) on the very rows and
targets of (d), so the two differ only in the KL term. With ``--student embedded`` and the default teacher the
student starts as its own teacher (the KL starts at zero and holds the student near the base model); a
larger teacher of the same family (a SmolLM2-360M or 1.7B folder) is what the full run should name.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any


def _rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


def add_top_k(
    src: Path, out: Path, teacher: str, k: int, device: str, batch_size: int = 8, limit: int | None = None
) -> Path:
    """Copy the jsonl export ``src`` to ``out`` with the teacher's tokens and top-k columns on every row, or
    on the first ``limit`` rows of each split (the rows a budget trains on; the others get empty lists, which
    the kd task skips), so that a quick run does not read thousands of rows it never trains on."""
    import torch

    from trainers import causal, student

    folder = student.resolve_student(teacher)
    with student.quiet():
        tok = student.load_tokenizer(folder, causal=True)
        model = student.load_causal(folder).to(device).eval()
    chat = causal.uses_chat(tok, "kd")
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for f in sorted(src.glob("*.jsonl")):
        rows = _rows(f)
        read = len(rows) if limit is None else min(limit, len(rows))
        for r in rows[read:]:
            r["teacher_token_ids"], r["teacher_top_ids"], r["teacher_top_logprobs"] = [], [], []
        for i in range(0, read, batch_size):
            chunk = rows[i : min(i + batch_size, read)]
            prompts = [causal.prompt_ids(tok, str(r["prompt"]), chat) for r in chunk]
            answers = [[*tok(str(r["completion"]), add_special_tokens=False)["input_ids"], tok.eos_token_id]
                       for r in chunk]  # fmt: skip
            seqs = [p + a for p, a in zip(prompts, answers, strict=True)]
            n = max(len(s) for s in seqs)
            ids = torch.tensor([s + [tok.pad_token_id] * (n - len(s)) for s in seqs], device=device)
            mask = torch.tensor([[1] * len(s) + [0] * (n - len(s)) for s in seqs], device=device)
            with torch.no_grad():
                logits = model(input_ids=ids, attention_mask=mask).logits
            for j, (r, p, a) in enumerate(zip(chunk, prompts, answers, strict=True)):
                # position t predicts token t + 1: the answer's tokens are predicted from len(p) − 1 on
                top = torch.log_softmax(logits[j, len(p) - 1 : len(p) - 1 + len(a)].float(), -1).topk(k)
                r["teacher_token_ids"] = a
                r["teacher_top_ids"] = top.indices.tolist()
                r["teacher_top_logprobs"] = [[round(x, 5) for x in v] for v in top.values.tolist()]
        (out / f.name).write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    if (src / "README.md").is_file():
        shutil.copy(src / "README.md", out / "README.md")
    return out
