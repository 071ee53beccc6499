"""Counting prompt tokens before anything is sent (``run --dry-run``).

Exact where the teacher's tokenizer is on disk: a ``vllm:`` or ``transformers:`` model folder, the embedded
model (its converted folder, else its GGUF file), or ``teacher.tokenizer`` (a folder or a tokenizer.json)
for an API model whose tokenizer the user has. The chat template is applied when the tokenizer has one,
so the count includes the role markers the model reads.

Otherwise an estimate: the messages' characters / 4. Its error against the exact count, measured over the
first-stage prompts of the shipped recipes (data/seeds/ and the PaLM rationale sets) with the embedded
model's tokenizer, is ``ESTIMATE_ERROR`` (written by ``benchmarks/bench_prompt_tokens.py`` into
``benchmarks/results/prompt_tokens.json``; a test checks that the two agree). Another model's tokenizer can
split text differently, so for an API model the bound is a guide, not a guarantee.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from factory.errors import ConfigError

log = logging.getLogger(__name__)

Messages = Sequence[dict[str, str]]
Counter = Callable[[Messages], int]

# Relative error of estimate() against the exact count (SmolLM2's tokenizer, chat template applied), over
# 2,942 distinct prompts of our recipes (benchmarks/results/prompt_tokens.json). It undercounts 99% of them:
# digits and punctuation take more tokens than four characters' worth.
ESTIMATE_ERROR = {"max": 0.3038, "median": 0.2695}


def estimate(messages: Messages) -> int:
    """The prompt estimate when no tokenizer is at hand: characters / 4."""
    return sum(len(m.get("content") or "") for m in messages) // 4


def estimate_note() -> str:
    return (
        f"estimated as characters / 4: median error {ESTIMATE_ERROR['median']:.0%}, at most "
        f"{ESTIMATE_ERROR['max']:.0%}, mostly under, against SmolLM2's tokenizer on our recipes' prompts; give "
        "teacher.tokenizer for an exact count"
    )


def load_tokenizer(where: str | Path) -> Any:
    """A tokenizer from a local folder (or a tokenizer.json file), never downloaded."""
    path = Path(where).expanduser()
    try:
        from transformers import AutoTokenizer, PreTrainedTokenizerFast
    except ImportError as exc:
        raise ConfigError(
            f"counting prompt tokens with {path} needs transformers: pip install transformers"
        ) from exc
    try:
        if path.is_file() and path.suffix == ".gguf":
            return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name, local_files_only=True)
        if path.is_file():
            return PreTrainedTokenizerFast(tokenizer_file=str(path))
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception as exc:  # transformers raises many kinds for a folder that holds no tokenizer
        raise ConfigError(
            f"teacher.tokenizer: cannot load a tokenizer from {str(path)!r} ({exc}); give a folder holding "
            "tokenizer.json (and tokenizer_config.json), or the tokenizer.json file itself"
        ) from None


def counter(tokenizer: Any) -> Counter:
    """A function that counts the prompt tokens of a chat, the chat template applied when there is one."""
    templated = bool(getattr(tokenizer, "chat_template", None))

    def count(messages: Messages) -> int:
        if templated:
            ids = tokenizer.apply_chat_template(list(messages), tokenize=True, add_generation_prompt=True)
            if hasattr(ids, "keys"):  # transformers 5 answers with a BatchEncoding
                ids = ids["input_ids"]
            return len(ids)
        text = "\n".join(m.get("content") or "" for m in messages)
        return len(tokenizer(text, add_special_tokens=True)["input_ids"])

    return count


def tokenizer_place(spec: str, tokenizer: str | None, base_dir: Path) -> Path | None:
    """Where a teacher's tokenizer is on disk, or None (then the estimate is used)."""
    from factory.pricing import model_of

    if tokenizer:
        p = Path(tokenizer).expanduser()
        return p if p.is_absolute() else base_dir / p
    backend, model = model_of(spec)
    if backend in ("vllm", "transformers") and model:
        p = Path(model).expanduser()
        p = p if p.is_absolute() else base_dir / p
        return p if (p / "tokenizer.json").is_file() or (p / "tokenizer_config.json").is_file() else None
    if backend == "embedded":
        from factory.teachers import embedded

        folder = embedded.target_dir()
        if (folder / "tokenizer.json").is_file():
            return folder
        try:
            return embedded.gguf_path()
        except ConfigError:
            return None
    return None


def counter_for(spec: str, tokenizer: str | None, base_dir: Path) -> tuple[Counter | None, str]:
    """(count function, what it is) for a teacher; (None, why not) when only the estimate is possible."""
    place = tokenizer_place(spec, tokenizer, base_dir)
    if place is None:
        return None, estimate_note()
    try:
        tok = load_tokenizer(place)
    except ConfigError:
        if tokenizer:
            raise
        log.info("no tokenizer readable at %s; estimating prompt tokens", place)
        return None, estimate_note()
    return counter(tok), f"counted with the tokenizer at {place}"


__all__ = ["ESTIMATE_ERROR", "counter", "counter_for", "estimate", "estimate_note", "load_tokenizer"]
