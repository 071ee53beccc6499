"""GPU check: the factory's GPU paths against the bare library call doing the same work, in one run.

    python benchmarks/gpu_check.py            # on a GPU machine: under 8 minutes on one H100
    python benchmarks/gpu_check.py --tiny     # the same code paths on a CPU with tiny models, in seconds

Every model is built from a config with random weights, with a tokenizer made here (a word-level vocabulary
``w0 w1 …``), so the check needs no internet and no model files. It imports only torch, transformers,
accelerate, sentence-transformers and the factory modules on these paths (``factory.teachers.hf``,
``factory.batching``, ``factory.embeddings``, ``trainers.harness/student/causal/batching``), none of which
imports duckdb, datasets, polars, pydantic, orjson, vllm or trl: a GPU image without them runs it.

(a) generation: the transformers teacher (``transformers:FOLDER``, dtype bfloat16 on a GPU) fed the way the
    runner feeds a local engine (each request submitted to a ``MicroBatcher`` over ``teacher.complete``),
    against bare ``model.generate`` on the same prompts in the same sub-batches (sorted by length, left
    padded, greedy); the texts must match. Figure: generated tokens per second.
(b) embeddings: ``factory.embeddings.encode`` against a bare ``SentenceTransformer(folder).encode`` on the
    same texts (a MiniLM-shaped BERT saved as a sentence-transformers folder). The factory loads its
    embedding models on the CPU; the bare call takes sentence-transformers' default device; both devices
    are recorded. Figure: texts per second.
(c) training: steps of a Llama-shaped model (1.1B parameters, TinyLlama's shape) in bf16 through the
    factory's causal Trainer (``harness.training_args``, the answer-only loss, bf16 weights, length-grouped
    batches, losses read back only at log steps) against a bare torch loop (the model's own loss, backward,
    gradient clipping, fused AdamW) on the same batches from the same weights. Figure: training tokens per
    second over the timed steps (after warm-up ones).

Figures are medians of ``--reps`` repetitions; the ratio is the factory's figure over the bare one (1.0:
no overhead). Writes ``benchmarks/results/gpu_check.json`` (``--tiny``: ``gpu_check_tiny.json``), or the
file ``--out`` names.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(HERE)]

from _results import context, save  # noqa: E402

DISTS = ["torch", "transformers", "accelerate", "peft", "sentence-transformers", "tokenizers"]
SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]  # ids 0-3
CHAT = (
    "{% for m in messages %}<s> {{ m['role'] }} {{ m['content'] }} </s> {% endfor %}"
    "{% if add_generation_prompt %}<s> assistant {% endif %}"
)


@dataclass(frozen=True)
class Size:
    reps: int
    # (a) generation
    gen_layers: int
    gen_hidden: int
    gen_vocab: int
    prompts: int
    new_tokens: int
    gen_batch: int
    # (b) embeddings
    bert_layers: int
    bert_hidden: int
    texts: int
    # (c) training
    train_layers: int
    train_hidden: int
    train_inter: int
    train_heads: int
    train_kv: int
    train_vocab: int
    seq: int
    batch: int
    warmup_steps: int
    timed_steps: int


FULL = Size(reps=3, gen_layers=24, gen_hidden=1024, gen_vocab=32000, prompts=256, new_tokens=64, gen_batch=32,
            bert_layers=6, bert_hidden=384, texts=20000,
            train_layers=22, train_hidden=2048, train_inter=5632, train_heads=32, train_kv=4, train_vocab=32000,
            seq=1024, batch=8, warmup_steps=3, timed_steps=10)  # fmt: skip
TINY = Size(reps=2, gen_layers=2, gen_hidden=64, gen_vocab=600, prompts=12, new_tokens=6, gen_batch=4,
            bert_layers=2, bert_hidden=64, texts=48,
            train_layers=2, train_hidden=64, train_inter=128, train_heads=4, train_kv=2, train_vocab=600,
            seq=48, batch=4, warmup_steps=1, timed_steps=2)  # fmt: skip


def device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def words(rng: Any, n_words: int, n: int) -> str:
    return " ".join(f"w{rng.randrange(n_words)}" for _ in range(n))


# -- (a) generation ------------------------------------------------------------------------------------
def causal_folder(folder: Path, s: Size, dtype: Any) -> Path:
    """A random Llama with a word-level tokenizer and a chat template, saved like a downloaded model."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIALS)}
    vocab.update({f"w{i}": i + len(SPECIALS) for i in range(s.gen_vocab - len(SPECIALS))})
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                  unk_token="<unk>")  # fmt: skip
    tok.chat_template = CHAT
    cfg = LlamaConfig(vocab_size=s.gen_vocab, hidden_size=s.gen_hidden, intermediate_size=s.gen_hidden * 3,
                      num_hidden_layers=s.gen_layers, num_attention_heads=max(4, s.gen_hidden // 64),
                      num_key_value_heads=max(2, s.gen_hidden // 256), max_position_embeddings=2048,
                      pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=True)  # fmt: skip
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).to(dtype)
    model.save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    return folder


def check_generation(tmp: Path, s: Size) -> dict[str, Any]:
    import random

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from factory.batching import MicroBatcher
    from factory.teachers.hf import TransformersTeacher
    from factory.types import Request, Sampling

    dev = device()
    dtype = "bfloat16" if dev == "cuda" else "float32"
    folder = causal_folder(tmp / "teacher", s, getattr(torch, dtype))
    rng = random.Random(0)
    sampling = Sampling(temperature=0.0, max_tokens=s.new_tokens)
    requests = [
        Request.chat(
            words(rng, s.gen_vocab - 4, rng.randint(16, 256 if dev == "cuda" else 24)), sampling=sampling
        )
        for _ in range(s.prompts)
    ]
    teacher = TransformersTeacher(f"transformers:{folder}", str(folder), {"dtype": dtype, "device": dev,
                                                                          "batch_size": s.gen_batch})  # fmt: skip

    async def through_runner() -> list[Any]:
        batcher = MicroBatcher(teacher.complete, max_batch=4096)  # as the runner wraps a native-batch engine
        return list(await asyncio.gather(*(batcher.submit(r) for r in requests)))

    # the bare call: the same prompts, tokenized by the chat template, sorted, in the same sub-batches
    tok = AutoTokenizer.from_pretrained(str(folder))
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=getattr(torch, dtype)).to(dev).eval()
    ids = [
        tok(tok.apply_chat_template(list(r.messages), add_generation_prompt=True, tokenize=False),
            add_special_tokens=False)["input_ids"]
        for r in requests
    ]  # fmt: skip
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))

    def bare() -> list[str]:
        texts = [""] * len(ids)
        for start in range(0, len(order), s.gen_batch):
            chunk = order[start : start + s.gen_batch]
            batch = tok.pad({"input_ids": [ids[i] for i in chunk]}, return_tensors="pt").to(dev)
            with torch.inference_mode():
                out = model.generate(**batch, max_new_tokens=s.new_tokens, do_sample=False, pad_token_id=0,
                                     eos_token_id=2)  # fmt: skip
            width = batch["input_ids"].shape[1]
            for i, row in zip(chunk, out, strict=True):
                new = row[width:].tolist()
                end = next((k for k, t in enumerate(new) if t in (0, 2)), len(new))  # EOS or padding
                new = new[:end]
                texts[i] = tok.decode(new, skip_special_tokens=True)
        return texts

    ours_s, bare_s, tokens = [], [], 0
    ours_texts: list[str] = []
    bare_texts: list[str] = []
    asyncio.run(through_runner())  # warm-up: loads the teacher's model
    bare()
    for _ in range(s.reps):
        sync()
        t0 = time.perf_counter()
        done = asyncio.run(through_runner())
        sync()
        ours_s.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        bare_texts = bare()
        sync()
        bare_s.append(time.perf_counter() - t0)
        ours_texts = [c.text for c in done]
        tokens = sum(c.completion_tokens for c in done)
    asyncio.run(teacher.aclose())  # frees the teacher's model before the next check
    same = sum(a.strip() == b.strip() for a, b in zip(ours_texts, bare_texts, strict=True)) / len(requests)
    return _pair("generated tokens/s", tokens, ours_s, bare_s, dev, dev, same_output=round(same, 4),
                 prompts=len(requests), new_tokens=s.new_tokens, batch_size=s.gen_batch, dtype=dtype,
                 params=sum(p.numel() for p in model.parameters()))  # fmt: skip


# -- (b) embeddings ------------------------------------------------------------------------------------
def sentence_folder(folder: Path, s: Size) -> tuple[Path, int]:
    """A random MiniLM-shaped BERT in the layout of a sentence-transformers folder (the shipped model's)."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizer

    folder.mkdir(parents=True)
    n_words = 30522 - 5 if s.bert_hidden >= 384 else 1000
    (folder / "vocab.txt").write_text(
        "\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *(f"w{i}" for i in range(n_words))]) + "\n"
    )
    tok = BertTokenizer(vocab_file=str(folder / "vocab.txt"))
    cfg = BertConfig(vocab_size=n_words + 5, hidden_size=s.bert_hidden, num_hidden_layers=s.bert_layers,
                     num_attention_heads=max(2, s.bert_hidden // 32), intermediate_size=4 * s.bert_hidden,
                     max_position_embeddings=512)  # fmt: skip
    torch.manual_seed(0)
    BertModel(cfg).save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    modules = [("0", "", "Transformer"), ("1", "1_Pooling", "Pooling"), ("2", "2_Normalize", "Normalize")]
    (folder / "modules.json").write_text(json.dumps([
        {"idx": i, "name": n, "path": p, "type": f"sentence_transformers.models.{t}"}
        for i, (n, p, t) in enumerate(modules)
    ]))  # fmt: skip
    (folder / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": 128, "do_lower_case": False})
    )
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(
        json.dumps({"word_embedding_dimension": s.bert_hidden, "pooling_mode_mean_tokens": True})
    )
    (folder / "2_Normalize").mkdir()
    return folder, n_words


def check_embeddings(tmp: Path, s: Size) -> dict[str, Any]:
    import random

    import numpy as np
    from sentence_transformers import SentenceTransformer

    from factory import embeddings

    folder, n_words = sentence_folder(tmp / "minilm", s)
    rng = random.Random(1)
    texts = [words(rng, n_words, rng.randint(5, 60)) for _ in range(s.texts)]
    bare_model = SentenceTransformer(str(folder), local_files_only=True)  # its default device

    def bare() -> Any:
        return bare_model.encode(texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True,
                                 show_progress_bar=False)  # fmt: skip

    ours_s, bare_s = [], []
    embeddings.encode(texts[:8], model=folder)  # warm-up: loads the model
    bare()
    a = b = None
    for _ in range(s.reps):
        t0 = time.perf_counter()
        a = embeddings.encode(texts, model=folder, batch_size=64)
        ours_s.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        b = bare()
        sync()
        bare_s.append(time.perf_counter() - t0)
    cosine = float(np.min(np.sum(np.asarray(a, dtype=np.float64) * np.asarray(b, dtype=np.float64), axis=1)))
    ours_dev = str(embeddings.load(folder).device)
    return _pair("texts/s", len(texts), ours_s, bare_s, ours_dev, str(bare_model.device),
                 min_cosine_ours_vs_bare=round(cosine, 4), texts=len(texts), dim=s.bert_hidden)  # fmt: skip


# -- (c) training --------------------------------------------------------------------------------------
def llama(s: Size, dtype: Any, dev: str) -> Any:
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    cfg = LlamaConfig(vocab_size=s.train_vocab, hidden_size=s.train_hidden, intermediate_size=s.train_inter,
                      num_hidden_layers=s.train_layers, num_attention_heads=s.train_heads,
                      num_key_value_heads=s.train_kv, max_position_embeddings=max(2048, s.seq),
                      pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)  # fmt: skip
    torch.manual_seed(0)
    with torch.device(dev):
        return AutoModelForCausalLM.from_config(cfg, dtype=dtype)


def train_examples(s: Size) -> list[dict[str, list[int]]]:
    import random

    rng = random.Random(2)
    steps = s.warmup_steps + s.timed_steps
    out = []
    for _ in range(steps * s.batch):
        ids = [rng.randrange(3, s.train_vocab) for _ in range(s.seq)]
        prompt = s.seq // 4
        out.append({"input_ids": ids, "labels": [-100] * prompt + ids[prompt:]})
    return out


def check_training(tmp: Path, s: Size) -> dict[str, Any]:
    import torch
    from transformers import TrainerCallback

    from trainers import causal, harness, student

    dev = student.resolve_device("auto")
    precision = student.resolve_precision("auto" if dev == "cuda" else "fp32", causal=True, device=dev)
    dtype = getattr(torch, student.weights_dtype(precision, dev))
    examples = train_examples(s)
    tokens_per_step = s.batch * s.seq
    steps = s.warmup_steps + s.timed_steps
    collate = causal.PadCollator(pad_id=0)

    class Clock(TrainerCallback):
        """The wall time from the end of the warm-up steps to the end of the last one."""

        t_start = t_end = 0.0

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if state.global_step in (s.warmup_steps, steps):
                sync()
                setattr(self, "t_end" if state.global_step == steps else "t_start", time.perf_counter())

    def ours() -> tuple[float, float]:
        cfg = SimpleNamespace(epochs=1.0, max_steps=steps, batch_size=s.batch, grad_accum=1, lr=5e-5,
                              warmup_ratio=0.0, weight_decay=0.0, logging_steps=steps, save_steps=None, seed=0,
                              precision=precision, task="sft", device=dev, gradient_checkpointing=False)  # fmt: skip
        model = llama(s, dtype, dev)
        trainer = causal.trainer_class()(model=model, args=harness.training_args(cfg, tmp / "ours"),
                                         train_dataset=examples, data_collator=collate)  # fmt: skip
        trainer.bf16_autocast = precision == "bf16" and dtype == torch.float32
        clock = Clock()
        trainer.add_callback(clock)
        trainer.train()
        first = next(h["loss"] for h in trainer.state.log_history if "loss" in h)
        del trainer, model
        free()
        return clock.t_end - clock.t_start, float(first)

    def bare() -> tuple[float, float]:
        model = llama(s, dtype, dev)
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=5e-5, weight_decay=0.0, fused=True)
        first: Any = None
        t0 = 0.0
        for step in range(steps):
            if step == s.warmup_steps:
                sync()
                t0 = time.perf_counter()
            rows = examples[step * s.batch : (step + 1) * s.batch]
            batch = collate(rows)
            loss = model(**{k: batch[k].to(dev) for k in ("input_ids", "attention_mask", "labels")}).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            if first is None:
                first = loss.detach()
        sync()
        wall = time.perf_counter() - t0
        del model, opt
        free()
        return wall, float(first)

    ours_s, bare_s, losses = [], [], {}
    for _ in range(s.reps):
        wall, losses["ours_first_loss"] = ours()
        ours_s.append(wall)
        wall, losses["bare_first_loss"] = bare()
        bare_s.append(wall)
    n_params = sum(p.numel() for p in llama(s, torch.float32, "meta").parameters())
    return _pair("training tokens/s", tokens_per_step * s.timed_steps, ours_s, bare_s, dev, dev,
                 params=n_params, precision=precision, weights_dtype=str(dtype).removeprefix("torch."),
                 seq=s.seq, batch=s.batch, timed_steps=s.timed_steps, warmup_steps=s.warmup_steps,
                 **{k: round(v, 4) for k, v in losses.items()})  # fmt: skip


def free() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# -- the run -------------------------------------------------------------------------------------------
def _pair(unit: str, work: int, ours_s: list[float], bare_s: list[float], ours_dev: str, bare_dev: str,
          **facts: Any) -> dict[str, Any]:  # fmt: skip
    ours, bare = work / statistics.median(ours_s), work / statistics.median(bare_s)
    return {"unit": unit, "ours": round(ours, 2), "bare": round(bare, 2), "ratio": round(ours / bare, 3),
            "ours_device": ours_dev, "bare_device": bare_dev, "reps": len(ours_s),
            "ours_s": [round(x, 4) for x in ours_s], "bare_s": [round(x, 4) for x in bare_s], **facts}  # fmt: skip


CHECKS = {"generation": check_generation, "embeddings": check_embeddings, "training": check_training}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--tiny", action="store_true", help="tiny models on the CPU: the same code paths, in seconds"
    )
    ap.add_argument("--only", choices=sorted(CHECKS), action="append", help="run only these checks")
    ap.add_argument("--out", type=Path, help="results file (default: benchmarks/results/gpu_check.json)")
    args = ap.parse_args(argv)
    if args.tiny:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # the CPU, also on a GPU machine
    import torch

    size = TINY if args.tiny else FULL
    if args.tiny:
        torch.set_num_threads(min(2, torch.get_num_threads()))
    ctx = context(DISTS)
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    figures: dict[str, Any] = {"mode": "tiny" if args.tiny else "full", "gpu": gpu}
    t_all = time.perf_counter()
    failed = []
    for name in args.only or list(CHECKS):
        t0 = time.perf_counter()
        try:
            with tempfile.TemporaryDirectory(prefix=f"gpu-check-{name}-") as tmp:
                figures[name] = CHECKS[name](Path(tmp), size)
        except Exception as exc:  # one check that cannot run (a package missing there) spares the others
            failed.append(name)
            figures[name] = {"error": f"{type(exc).__name__}: {exc}"}
            print(f"{name:<11} failed: {figures[name]['error']}", file=sys.stderr, flush=True)
            continue
        finally:
            free()
        figures[name]["check_s"] = round(time.perf_counter() - t0, 1)
        f = figures[name]
        print(f"{name:<11} {f['unit']:<19} ours {f['ours']:>12,.1f} ({f['ours_device']})  bare {f['bare']:>12,.1f} "
              f"({f['bare_device']})  ratio {f['ratio']:.3f}  [{f['check_s']} s]", flush=True)  # fmt: skip
    figures["wall_s"] = round(time.perf_counter() - t_all, 1)
    name = "gpu_check_tiny" if args.tiny else "gpu_check"
    if args.out is not None:
        path = save(args.out.stem, ctx, figures, folder=args.out.parent)
    else:
        path = save(name, ctx, figures)
    print(f"wrote {path} ({figures['wall_s']} s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
