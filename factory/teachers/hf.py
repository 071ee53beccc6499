"""transformers ``generate`` on a local model folder: ``transformers:PATH``.

For machines without vLLM, and for small models where its start-up costs more than it saves. All the
requests of a call share batches, whatever their seed, temperature, top_p, max_tokens or stop strings:
they are sorted by prompt length (then max_tokens; less padding) and generated in sub-batches of at most
``batch_size`` rows and ``batch_tokens`` padded tokens (rows × (longest prompt + largest max_tokens)),
left-padded. Each row samples and ends on its own (:mod:`factory.teachers.hf_rows`): greedy when its
temperature is 0; otherwise drawn from a random stream of its own, seeded by its request's seed and
prompt, one number per token; it ends at an end-of-sequence token, its first stop string (the text is cut
there) or its own max_tokens, while the rest of its batch goes on.

What a seed promises: the random numbers a row uses depend on its request alone, never on its batch.
Its text is the same alone or in any batch as long as the model computes the same logits for it; the
logits of a row can differ in the last bits between batch compositions (another padding width, another
matrix shape, so float sums in another order), and such a difference changes a token only where two
candidates (for greedy) or a draw and a cumulative-probability boundary (for sampling) are that close.
For a given batch composition, device and dtype, answers are repeatable. So ``batch_size``,
``batch_tokens`` and ``device`` are not keyed (see :mod:`factory.teachers.local`); the draw's algorithm is
(``sampler`` in the keyed options: version 2 is the per-row draw, answers of version 1 are not served).

``PATH`` may also be a ``.gguf`` file, or a folder with option ``gguf_file``: transformers then loads
the GGUF (it needs the ``gguf`` and ``accelerate`` packages).

JSON schemas are not enforced here (``supports_json_schema = False``): such a request is generated as
plain text, and the recipe's parser decides. Nothing heavy is imported at module level.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from factory.errors import ConfigError, TeacherError, TeacherRejected, TeacherUnavailable
from factory.teachers import reasoning
from factory.teachers.base import Teacher
from factory.teachers.local import LocalEngineTeacher, model_folder, plain_messages, take_options
from factory.teachers.weights import folder_digest
from factory.types import Completion, Request, Sampling

log = logging.getLogger(__name__)

HF_DEFAULTS: dict[str, Any] = {
    "device": "auto",
    "dtype": "float32",
    "batch_size": 16,
    "batch_tokens": 32768,
    "gguf_file": None,
    "max_model_len": None,
    "think_tags": reasoning.DEFAULT_THINK_TAGS,
}
DTYPES = ("auto", "float32", "bfloat16", "float16")
# The keyed version of the draw (factory.teachers.hf_rows): 1 was transformers' sampler seeded once per
# batch of identical sampling, 2 the per-row draw. A change of the draw's answers is a new version.
SAMPLER = 2


@dataclass(frozen=True, slots=True)
class _Row:
    index: int  # in the call's request list
    ids: list[int]  # prompt tokens
    sampling: Sampling
    max_new: int  # max_tokens, cut to the room the prompt leaves under max_model_len


class TransformersTeacher(LocalEngineTeacher):
    backend = "transformers"
    thread_name = "factory-hf"
    supports_json_schema = False

    def __init__(self, spec: str, model: str, options: dict[str, Any], *, folder: Path | None = None):
        """``folder`` given: a subclass supplies it (and may build it lazily, see :meth:`model_dir`)."""
        opts = take_options(options, HF_DEFAULTS, self.backend)
        self.gguf_file: str | None = opts["gguf_file"]
        if folder is None:
            path = Path(model).expanduser()
            if path.suffix == ".gguf" and path.is_file():
                if self.gguf_file and self.gguf_file != path.name:
                    raise ConfigError(f"teacher spec {spec!r} names a GGUF file and option gguf_file another")
                self.gguf_file, model = path.name, str(path.parent)
            folder = model_folder(model, spec, need_config=self.gguf_file is None)
            if self.gguf_file is not None and not (folder / self.gguf_file).is_file():
                raise ConfigError(
                    f"teacher spec {spec!r}: option gguf_file={self.gguf_file!r} is not a file in {str(folder)!r}"
                )
            label = folder.name if self.gguf_file is None else f"{folder.name}/{self.gguf_file}"
            super().__init__(spec, label)
        else:
            super().__init__(spec, folder.name)
        self._init_local(folder)
        self.device: str = str(opts["device"])
        self.dtype: str = str(opts["dtype"])
        if self.dtype not in DTYPES:
            raise ConfigError(f"the transformers teacher option dtype must be one of {', '.join(DTYPES)}")
        self.batch_size = _at_least_one(opts, "batch_size")
        self.batch_tokens = _at_least_one(opts, "batch_tokens")
        self.max_model_len: int | None = int(opts["max_model_len"]) if opts["max_model_len"] else None
        self._max_model_len_option = self.max_model_len  # as configured: the model's limit fills the other
        self.think_tags = reasoning.think_tags(
            opts["think_tags"], where="the transformers teacher option think_tags"
        )
        self._model: Any = None
        self._tok: Any = None
        self._eos: set[int] = set()
        self.batches = 0  # generate calls made

    def _digest_weights(self) -> str:
        folder = self.model_dir()
        return folder_digest(folder, [folder / self.gguf_file] if self.gguf_file else None)

    def output_options(self) -> dict[str, Any]:
        """dtype, max_model_len (None: the model's own limit, which its config.json sets) and the sampler's
        version. Not keyed: device, batch_size and batch_tokens (see the module docstring)."""
        return {
            "dtype": self.dtype,
            "max_model_len": self._max_model_len_option,
            "sampler": SAMPLER,
            **reasoning.tags_identity(self.think_tags),  # only when not the default
        }

    def suggested_in_flight(self) -> int:
        """Four sub-batches: one generating, the next ones gathering while it runs."""
        return 4 * self.batch_size

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "path": str(self._folder),
            "gguf_file": self.gguf_file,
            "device": self.device,
            "dtype": self.dtype,
            "batch_size": self.batch_size,
            "batch_tokens": self.batch_tokens,
            "loaded": self._model is not None,
        }

    # -- loading ---------------------------------------------------------------------------------------
    def _load(self) -> tuple[Any, Any]:
        if self._model is not None:
            return self._model, self._tok
        if self._load_error is not None:
            raise self._load_error
        try:
            import torch
            import transformers
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError as exc:
            self._load_error = ConfigError(
                f"the transformers teacher needs torch and transformers: pip install torch transformers ({exc})"
            )
            raise self._load_error from exc
        folder = self.model_dir()
        device = self.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        kwargs: dict[str, Any] = {}
        if self.gguf_file:
            kwargs["gguf_file"] = self.gguf_file
        dtype = "auto" if self.dtype == "auto" else getattr(torch, self.dtype)
        major_minor = tuple(int(x) for x in transformers.__version__.split(".")[:2])
        dtype_key = "dtype" if major_minor >= (4, 56) else "torch_dtype"
        t0 = time.perf_counter()
        try:
            tok = AutoTokenizer.from_pretrained(str(folder), **kwargs)
            model = AutoModelForCausalLM.from_pretrained(str(folder), **{dtype_key: dtype}, **kwargs)
            model.to(device)  # type: ignore[arg-type]
            model.eval()
        except Exception as exc:
            hint = ""
            if "accelerate" in str(exc):
                hint = " Loading a GGUF file needs accelerate: pip install accelerate."
            self._load_error = ConfigError(
                f"transformers could not load the model in {str(folder)!r}: {type(exc).__name__}: {exc}.{hint}"
            )
            raise self._load_error from exc
        tok.padding_side = "left"
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        eos = model.generation_config.eos_token_id
        if eos is None:
            eos = tok.eos_token_id
        self._eos = set(eos if isinstance(eos, (list, tuple)) else [eos]) - {None}
        if self.max_model_len is None:
            self.max_model_len = getattr(model.config, "max_position_embeddings", None)
        log.info("transformers model %s ready on %s in %.1fs", folder, device, time.perf_counter() - t0)
        self._model, self._tok = model, tok
        return model, tok

    def _prompt_ids(self, tok: Any, req: Request) -> list[int]:
        msgs = plain_messages(req)
        if getattr(tok, "chat_template", None):
            text = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
            return list(tok(text, add_special_tokens=False)["input_ids"])
        text = "\n".join(f"{m['role']}: {m['content']}" for m in msgs) + "\nassistant:"
        return list(tok(text)["input_ids"])

    # -- generation ------------------------------------------------------------------------------------
    def _run(self, requests: Sequence[Request]) -> list[Completion | TeacherError]:
        model, tok = self._load()
        out: list[Completion | TeacherError | None] = [None] * len(requests)
        rows: list[_Row] = []
        for i, req in enumerate(requests):
            ids = self._prompt_ids(tok, req)
            if self.max_model_len is not None and len(ids) >= self.max_model_len:
                out[i] = TeacherRejected(
                    f"the prompt has {len(ids)} tokens; the model takes {self.max_model_len}",
                    kind="too_long",
                    cacheable=True,
                )
                continue
            max_new = req.sampling.max_tokens
            if self.max_model_len is not None:  # the row's own room, whatever the batch's longest prompt
                max_new = max(1, min(max_new, self.max_model_len - len(ids)))
            rows.append(_Row(i, ids, req.sampling, max_new))
        rows.sort(key=lambda r: (len(r.ids), r.max_new))
        for chunk in self._chunks(rows):
            self.attempts += len(chunk)
            for row, res in zip(chunk, self._generate(model, tok, chunk), strict=True):
                out[row.index] = res
        for outcome in out:
            if isinstance(outcome, TeacherError):
                self.failed(outcome)
        assert all(r is not None for r in out)
        return out  # type: ignore[return-value]

    def _chunks(self, rows: list[_Row]) -> Iterator[list[_Row]]:
        """Rows (sorted by prompt length) in sub-batches of at most ``batch_size`` rows whose padded
        size, rows × (longest prompt + largest max_tokens), stays within ``batch_tokens`` (a row over it
        runs alone)."""
        chunk: list[_Row] = []
        most_new = 0
        for row in rows:
            size = (len(chunk) + 1) * (len(row.ids) + max(most_new, row.max_new))
            if chunk and (len(chunk) == self.batch_size or size > self.batch_tokens):
                yield chunk
                chunk, most_new = [], 0
            chunk.append(row)
            most_new = max(most_new, row.max_new)
        if chunk:
            yield chunk

    def _generate(self, model: Any, tok: Any, chunk: list[_Row]) -> list[Completion | TeacherError]:
        import torch
        from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList

        from factory.teachers.hf_rows import RowEnds, RowSampler, row_stream

        t0 = time.perf_counter()
        self.batches += 1
        cfg = GenerationConfig(
            max_new_tokens=max(r.max_new for r in chunk),
            do_sample=False,  # RowSampler draws the sampled rows; the greedy ones stay argmax
            pad_token_id=tok.pad_token_id,
            eos_token_id=sorted(self._eos) or None,
        )
        try:
            batch = tok.pad({"input_ids": [r.ids for r in chunk]}, return_tensors="pt")
            batch = {k: v.to(model.device) for k, v in batch.items()}
            width = batch["input_ids"].shape[1]
            sampler = RowSampler(
                [r.sampling.temperature for r in chunk],
                [r.sampling.top_p for r in chunk],
                [row_stream(r.sampling.seed, r.ids, SAMPLER) for r in chunk],
            )
            ends = RowEnds(
                tok, width, [r.max_new for r in chunk], [r.sampling.stop for r in chunk], self._eos
            )
            with torch.inference_mode():
                generated = model.generate(
                    **batch,
                    generation_config=cfg,
                    logits_processor=LogitsProcessorList([sampler]),
                    stopping_criteria=StoppingCriteriaList([ends]),
                )
        except Exception as exc:
            log.warning("transformers batch of %d failed: %r", len(chunk), exc)
            err = f"transformers generate failed on a batch of {len(chunk)}: {type(exc).__name__}: {exc}"
            return [TeacherUnavailable(err, kind="engine") for _ in chunk]
        latency_ms = (time.perf_counter() - t0) * 1000.0
        results: list[Completion | TeacherError] = []
        for k, row in enumerate(chunk):
            n, why = ends.ends[k] or (row.max_new, "length")
            new = generated[k, width : width + n].tolist()
            if why == "eos":  # counted, like vLLM does, and not part of the text
                new = new[:-1]
            text = tok.decode(new, skip_special_tokens=True)
            finish = "length" if why == "length" else "stop"
            cut = min((p for p in (text.find(x) for x in row.sampling.stop) if p >= 0), default=-1)
            if cut >= 0:
                text, finish = text[:cut], "stop"
            text, thought = reasoning.split(text, self.think_tags)
            results.append(
                Completion(
                    text=text,
                    reasoning=thought,
                    finish_reason=finish,
                    prompt_tokens=len(row.ids),
                    completion_tokens=n,
                    latency_ms=latency_ms,
                )
            )
        return results

    def _drop(self) -> None:
        self._model, self._tok = None, None
        gc.collect()


def _at_least_one(opts: dict[str, Any], name: str) -> int:
    value = opts[name]
    try:
        n = int(value)
    except (TypeError, ValueError):
        n = 0
    if n < 1 or isinstance(value, bool):
        raise ConfigError(
            f"the transformers teacher option {name} must be a whole number of at least 1, not {value!r}"
        )
    return n


def create(spec: str, model: str, options: dict[str, Any]) -> Teacher:
    return TransformersTeacher(spec, model, options)
