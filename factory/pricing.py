"""What teacher requests cost: the list-price table shipped in ``factory/prices.json``, a config's own
``teacher.price``, and the cost of one request.

Which price a teacher gets (:func:`price_for`):

1. ``teacher.price`` in the config, when given (any backend);
2. local engines (``vllm``, ``transformers``, ``embedded``, and the test backend ``scripted``): $0;
3. for ``openai:MODEL[@URL]``, the model name looked up in the table (:func:`lookup`):

   - case and surrounding spaces ignored; a route prefix naming a provider of the table
     (``openai/gpt-4o-mini``, as LiteLLM or OpenRouter write it) is dropped;
   - the name itself, then the provider's aliases (``chatgpt-4o-latest`` -> ``gpt-4o``);
   - then the name less a dated snapshot suffix (``-2024-07-18``, ``-20250514``, OpenAI's older
     ``-0125``) or ``-latest``, looked up the same way: ``gpt-4o-mini-2024-07-18`` is ``gpt-4o-mini``.

   No other prefix matching: ``gpt-4o-mini`` must never get ``gpt-4o``'s price, so a name not found is
   unknown (its cost is not counted; ``budget.max_usd`` refuses it);
4. any other backend (a plugin of the user's): unknown.

Every figure is an estimate from list prices: a provider's invoice also counts what it bills that the API
does not report (discounts, taxes, minimum charges).
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from factory.config import TeacherConfig

PER = 1_000_000  # prices are per million tokens
LOCAL_BACKENDS = ("vllm", "transformers", "embedded", "scripted")
_SNAPSHOT = re.compile(r"-(?:\d{4}-\d{2}-\d{2}|\d{8}|\d{4}|latest)$")


@dataclass(frozen=True, slots=True)
class Price:
    """Dollars per million tokens; ``batch_discount`` is the share a batch answer is spared (0.5: half)."""

    input: float
    output: float
    cached_input: float | None = None  # None: the input price
    batch_discount: float = 0.0
    source: str = ""  # where it comes from, for reports: "openai list price of gpt-4o-mini, read 2025-08-15"
    read: str | None = None  # the date the list price was read (None for a config's own or a local engine)

    @property
    def free(self) -> bool:
        return self.input == 0 and self.output == 0 and not self.cached_input

    def cost(
        self, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0, *, batch: bool = False
    ) -> float:
        """Dollars for one answer: uncached prompt tokens at the input price, cached ones (the provider's
        ``prompt_tokens_details.cached_tokens``) at the cached price, output at the output price; a batch
        answer less the batch discount."""
        cached = min(max(cached_tokens, 0), max(prompt_tokens, 0))
        cached_price = self.input if self.cached_input is None else self.cached_input
        dollars = (
            (max(prompt_tokens, 0) - cached) * self.input
            + cached * cached_price
            + max(completion_tokens, 0) * self.output
        ) / PER
        return dollars * (1.0 - self.batch_discount) if batch else dollars

    def worst_case(self, prompt_tokens: int, max_tokens: int, *, batch: bool = False) -> float:
        """The most a request can cost before its answer says: no prompt cache, every output token used
        (a batch request less the batch discount)."""
        dollars = (max(prompt_tokens, 0) * self.input + max(max_tokens, 0) * self.output) / PER
        return dollars * (1.0 - self.batch_discount) if batch else dollars


FREE = Price(0.0, 0.0, 0.0, source="local engine: $0 (set teacher.price to count its cost)")


@functools.cache
def table() -> dict[str, Any]:
    """The shipped price table (factory/prices.json)."""
    text = resources.files("factory").joinpath("prices.json").read_text(encoding="utf-8")
    data: dict[str, Any] = json.loads(text)
    return data


def _find(name: str) -> Price | None:
    for provider, p in table()["providers"].items():
        target = name if name in p["models"] else p.get("aliases", {}).get(name)
        if target in p["models"]:
            m = p["models"][target]
            shown = target if target == name else f"{target} (as {name})"
            return Price(
                input=float(m["input"]), output=float(m["output"]),
                cached_input=None if m.get("cached_input") is None else float(m["cached_input"]),
                batch_discount=float(m.get("batch_discount", p.get("batch_discount", 0.0))),
                source=f"{provider} list price of {shown} ({p['source']}, read {p['read']})", read=p["read"],
            )  # fmt: skip
    return None


def lookup(model: str) -> Price | None:
    """The list price of a model name by the rules in this module's docstring; None when unknown."""
    name = model.strip().lower()
    head, sep, rest = name.partition("/")
    if sep and head in table()["providers"]:
        name = rest
    found = _find(name)
    if found is None and _SNAPSHOT.search(name):
        found = _find(_SNAPSHOT.sub("", name))
    return found


def model_of(spec: str) -> tuple[str, str]:
    """(backend, model name) of a spec, without the ``@URL`` of an openai spec."""
    from factory.teachers import parse_spec

    backend, model = parse_spec(spec)
    if backend == "openai":
        model = model.split("@", 1)[0]
    return backend, model


def price_for(tc: TeacherConfig) -> Price | None:
    """The price a teacher's answers are counted at (rules in this module's docstring); None: unknown."""
    if tc.price is not None:
        p = tc.price
        return Price(
            input=p.input, output=p.output, cached_input=p.cached_input, batch_discount=p.batch_discount,
            source="teacher.price in the config",
        )  # fmt: skip
    backend, model = model_of(tc.spec)
    if backend in LOCAL_BACKENDS:
        return FREE
    if backend == "openai":
        return lookup(model)
    return None


def unknown_price_message(spec: str, where: str = "teacher") -> str:
    _, model = model_of(spec)
    return (
        f"budget.max_usd: no price is known for the model {model!r} of {where} {spec!r}, so its spending "
        f"cannot be counted; give it one in the config as `{where}.price: {{input: USD, cached_input: USD, "
        "output: USD}}` (dollars per million tokens), or drop budget.max_usd"
    )


def table_date() -> str:
    """The latest date a list price of the table was read."""
    return max(p["read"] for p in table()["providers"].values())


def usd(dollars: float | None) -> str:
    """Dollars as a short figure: $0.000042, $0.0042, $0.4200, $1.23, $1,234."""
    if dollars is None:
        return "unknown"
    if dollars == 0:
        return "$0"
    if abs(dollars) < 0.0001:
        return f"${dollars:.6f}"
    if abs(dollars) < 1:
        return f"${dollars:.4f}"
    if abs(dollars) < 1000:
        return f"${dollars:.2f}"
    return f"${dollars:,.0f}"


__all__ = ["FREE", "Price", "lookup", "price_for", "table", "table_date", "unknown_price_message", "usd"]
