"""What keeps a causal student's training steps cheap: batches of similar length, mixed precision, and loss
logging without a host sync every step.

- ``LengthGroupedSampler``: the examples are shuffled (by the training seed and the epoch), cut into
  mega-batches of ``MEGA`` × batch size, and each mega-batch is sorted by length, longest first, so a batch
  pads little; the batches of the epoch are then shuffled again, so that lengths still mix across steps. The
  order depends only on the seed and the epoch: a resumed training sees the same batches.
- ``autocast``: bf16 autocast when the precision says so, on a GPU or a CPU; weights, optimizer state and the
  loss stay fp32.
- ``Running``: per-task losses added up on the device and read back only when the Trainer logs.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator, Sequence
from typing import Any

MEGA = 50


class LengthGroupedSampler:
    """Indices of a dataset in length-grouped order (see the module docstring); ``lengths[i]`` is example
    i's cost in tokens."""

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int):
        self.lengths = list(lengths)
        self.batch_size = max(1, batch_size)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        rng = random.Random(f"{self.seed}:{self.epoch}")
        order = list(range(len(self.lengths)))
        rng.shuffle(order)
        mega = MEGA * self.batch_size
        batches: list[list[int]] = []
        for start in range(0, len(order), mega):
            chunk = sorted(order[start : start + mega], key=lambda i: -self.lengths[i])
            batches += [chunk[i : i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
        # the last batch of a mega-batch may be short: keep it last so full batches come first
        full = [b for b in batches if len(b) == self.batch_size]
        short = [b for b in batches if len(b) < self.batch_size]
        rng.shuffle(full)
        for b in [*full, *short]:
            yield from b


def cost(example: dict[str, Any]) -> int:
    """Tokens of an example: one task's ``input_ids``, or the sum over the tasks of a multi-task one."""
    if "input_ids" in example:
        return len(example["input_ids"])
    return sum(len(part["input_ids"]) for part in example.values() if isinstance(part, dict))


def autocast(model: Any, enabled: bool) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on the model's device when ``enabled``; nothing otherwise."""
    if not enabled:
        return contextlib.nullcontext()
    import torch

    dev = next(model.parameters()).device.type
    return torch.autocast(device_type=dev, dtype=torch.bfloat16)


class Running:
    """Sums of named losses kept as device tensors; ``means()`` syncs once and starts over."""

    def __init__(self) -> None:
        self.sums: dict[str, Any] = {}
        self.n = 0

    def add(self, **losses: Any) -> None:
        for k, v in losses.items():
            v = v.detach()
            self.sums[k] = v if k not in self.sums else self.sums[k] + v
        self.n += 1

    def means(self) -> dict[str, float]:
        if not self.n:
            return {}
        out = {k: round(float(v) / self.n, 6) for k, v in self.sums.items()}
        self.sums, self.n = {}, 0
        return out


def trainer_mixin() -> Any:
    """What the causal students' Trainers share: the length-grouped sampler and the mixed precision flag."""

    class Fast:
        bf16_autocast = False
        _running: Running | None = None  # per-task losses summed on the device, averaged when logged

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            # every loss here is a mean per batch (per task): gradient accumulation divides by the steps
            self.model_accepts_loss_kwargs = False
            self._running = Running()

        def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
            if "loss" in logs and self._running is not None:
                logs.update(self._running.means())
            super().log(logs, start_time)  # type: ignore[misc]

        def _get_train_sampler(self, train_dataset: Any = None) -> Any:
            ds = train_dataset if train_dataset is not None else self.train_dataset  # type: ignore[attr-defined]
            args = self.args  # type: ignore[attr-defined]
            per_step = args.per_device_train_batch_size
            return LengthGroupedSampler([cost(ex) for ex in ds], per_step, args.seed)

    return Fast
