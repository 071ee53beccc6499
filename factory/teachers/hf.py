"""transformers ``generate`` on a local model folder: ``transformers:PATH``.

For machines without vLLM, and for small models where its start-up costs more than it saves. Requests
are grouped by identical sampling, sorted by prompt length (less padding) and generated in sub-batches
of ``batch_size`` with left padding. Greedy when temperature is 0; a request's seed seeds its sub-batch.
Stop strings end a row's generation early and the text is cut at the first one.

``PATH`` may also be a ``.gguf`` file, or a folder with option ``gguf_file``: transformers then loads
the GGUF (it needs the ``gguf`` and ``accelerate`` packages).

JSON schemas are not enforced here (``supports_json_schema = False``): such a request is generated as
plain text, and the recipe's parser decides. Nothing heavy is imported at module level.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from factory.errors import ConfigError, TeacherError, TeacherRejected, TeacherUnavailable
from factory.teachers.base import Teacher
from factory.teachers.local import LocalEngineTeacher, model_folder, plain_messages, take_options
from factory.teachers.weights import folder_digest
from factory.types import Completion, Request, Sampling

log = logging.getLogger(__name__)

HF_DEFAULTS: dict[str, Any] = {
    "device": "auto",
    "dtype": "float32",
    "batch_size": 16,
    "gguf_file": None,
    "max_model_len": None,
}
DTYPES = ("auto", "float32", "bfloat16", "float16")


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
        self.batch_size = int(opts["batch_size"])
        if self.batch_size < 1:
            raise ConfigError("the transformers teacher option batch_size must be at least 1")
        self.max_model_len: int | None = int(opts["max_model_len"]) if opts["max_model_len"] else None
        self._max_model_len_option = self.max_model_len  # as configured: the model's limit fills the other
        self._model: Any = None
        self._tok: Any = None
        self._eos: set[int] = set()

    def _digest_weights(self) -> str:
        folder = self.model_dir()
        return folder_digest(folder, [folder / self.gguf_file] if self.gguf_file else None)

    def output_options(self) -> dict[str, Any]:
        """dtype and max_model_len (None: the model's own limit, which its config.json sets). Not keyed:
        device and batch_size (see factory.teachers.local)."""
        return {"dtype": self.dtype, "max_model_len": self._max_model_len_option}

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
        groups: dict[Sampling, list[tuple[int, list[int]]]] = {}
        for i, req in enumerate(requests):
            ids = self._prompt_ids(tok, req)
            if self.max_model_len is not None and len(ids) >= self.max_model_len:
                out[i] = TeacherRejected(
                    f"the prompt has {len(ids)} tokens; the model takes {self.max_model_len}",
                    kind="too_long",
                    cacheable=True,
                )
                continue
            groups.setdefault(req.sampling, []).append((i, ids))
        for sampling, items in groups.items():
            items.sort(key=lambda it: len(it[1]))
            for start in range(0, len(items), self.batch_size):
                chunk = items[start : start + self.batch_size]
                self.attempts += len(chunk)
                for (i, _), res in zip(chunk, self._generate(model, tok, sampling, chunk), strict=True):
                    out[i] = res
        for outcome in out:
            if isinstance(outcome, TeacherError):
                self.failed(outcome)
        assert all(r is not None for r in out)
        return out  # type: ignore[return-value]

    def _generate(
        self, model: Any, tok: Any, s: Sampling, chunk: list[tuple[int, list[int]]]
    ) -> list[Completion | TeacherError]:
        import torch
        from transformers import GenerationConfig, StoppingCriteriaList

        t0 = time.perf_counter()
        longest = max(len(ids) for _, ids in chunk)
        max_new = s.max_tokens
        if self.max_model_len is not None:
            max_new = max(1, min(max_new, self.max_model_len - longest))
        sample = s.temperature > 0
        cfg: dict[str, Any] = {
            "max_new_tokens": max_new,
            "do_sample": sample,
            "pad_token_id": tok.pad_token_id,
            "eos_token_id": sorted(self._eos) or None,
        }
        if sample:
            cfg.update(temperature=s.temperature, top_p=s.top_p, top_k=0)
        try:
            batch = tok.pad({"input_ids": [ids for _, ids in chunk]}, return_tensors="pt")
            batch = {k: v.to(model.device) for k, v in batch.items()}
            extra: dict[str, Any] = {}
            if s.stop:
                stops = _stop_criterion(tok, s.stop, batch["input_ids"].shape[1])
                extra["stopping_criteria"] = StoppingCriteriaList([stops])
            if s.seed is not None:
                torch.manual_seed(s.seed)
            with torch.inference_mode():
                generated = model.generate(**batch, generation_config=GenerationConfig(**cfg), **extra)
        except Exception as exc:
            log.warning("transformers batch of %d failed: %r", len(chunk), exc)
            err = f"transformers generate failed on a batch of {len(chunk)}: {type(exc).__name__}: {exc}"
            return [TeacherUnavailable(err, kind="engine") for _ in chunk]
        latency_ms = (time.perf_counter() - t0) * 1000.0
        width = batch["input_ids"].shape[1]
        ends = self._eos | ({tok.pad_token_id} if tok.pad_token_id is not None else set())
        results: list[Completion | TeacherError] = []
        for row, (_, ids) in enumerate(chunk):
            new = generated[row, width:].tolist()
            end = next((k for k, t in enumerate(new) if t in ends), None)
            finish = "length"
            if end is not None:
                # ended by EOS (counted, like vLLM does) or padded after a stop string (not counted)
                n_tokens = end + 1 if new[end] in self._eos else end
                new = new[:end]
                finish = "stop"
            else:
                n_tokens = len(new)
            text = tok.decode(new, skip_special_tokens=True)
            cut = min((p for p in (text.find(x) for x in s.stop) if p >= 0), default=-1)
            if cut >= 0:
                text, finish = text[:cut], "stop"
            results.append(
                Completion(
                    text=text,
                    finish_reason=finish,
                    prompt_tokens=len(ids),
                    completion_tokens=n_tokens,
                    latency_ms=latency_ms,
                )
            )
        return results

    def _drop(self) -> None:
        self._model, self._tok = None, None
        gc.collect()


def _stop_criterion(tok: Any, stops: Sequence[str], prompt_width: int) -> Any:
    """Ends a row once its generated text holds a stop string. transformers' own ``stop_strings`` also
    match across the end of the prompt (a template ending in a newline stops a ``"\\n\\n"`` at once), so
    only the tokens after the prompt are looked at: the last few, enough to hold the longest stop."""
    import torch
    from transformers import StoppingCriteria

    window = max(len(x) for x in stops) + 8

    class StopOnStrings(StoppingCriteria):
        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            new = input_ids[:, prompt_width:]
            texts = tok.batch_decode(new[:, -window:], skip_special_tokens=True)
            hit = [any(x in text for x in stops) for text in texts]
            return torch.tensor(hit, dtype=torch.bool, device=input_ids.device)

    return StopOnStrings()


def create(spec: str, model: str, options: dict[str, Any]) -> Teacher:
    return TransformersTeacher(spec, model, options)
