"""A run's spending as ``factory status``, the run report and the dataset card show it: dollars paid,
dollars per curated record, what the request cache saved, and where the prices come from. Every figure is
an estimate from list prices (factory/prices.json, or a config's ``teacher.price``), not an invoice."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from factory.pricing import Price, price_for, usd


@dataclass(slots=True)
class RunCost:
    paid_usd: float  # answers the run paid for, at the price in effect when each came
    saved_usd: float  # answers behind its records that other runs had paid for (served from the cache)
    unpriced: int  # answers paid for whose cost is not known (a teacher with no price, or stored before)
    curated: int
    sources: list[str] = field(default_factory=list)  # "role: where its price comes from"
    read: list[str] = field(default_factory=list)  # the dates the list prices used were read

    @property
    def per_curated(self) -> float | None:
        return self.paid_usd / self.curated if self.curated else None

    @property
    def basis(self) -> str:
        """What the figures are: an estimate, and from which prices."""
        listed = f"list prices read {', '.join(self.read)}" if self.read else "the configured prices"
        return f"estimate from {listed}"

    def sentence(self) -> str:
        """One line: ``$0.42 spent (estimate ...) · $0.0021 per curated record · $0.10 saved by the cache``."""
        parts = [f"{usd(self.paid_usd)} spent ({self.basis})"]
        if self.per_curated is not None:
            parts.append(f"{usd(self.per_curated)} per curated record")
        if self.saved_usd:
            parts.append(
                f"{usd(self.saved_usd)} saved: answers other runs had paid for, served from the cache"
            )
        if self.unpriced:
            parts.append(f"the cost of {self.unpriced:,} answers is not known (no price; set teacher.price)")
        return " · ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        return {
            "paid_usd": round(self.paid_usd, 9), "saved_usd": round(self.saved_usd, 9), "unpriced": self.unpriced,
            "per_curated_usd": None if self.per_curated is None else round(self.per_curated, 10),
            "estimate": self.basis, "prices": self.sources,
        }  # fmt: skip


def price_sources(cfg: dict[str, Any]) -> tuple[list[str], list[str]]:
    """``role: source`` of each teacher role of a stored run config, and the dates its list prices were
    read."""
    from factory.config import TeacherConfig

    teachers = {"default": cfg.get("teacher") or {}, **(cfg.get("teachers") or {})}
    out, read = [], set()
    for role, t in teachers.items():
        try:
            tc = TeacherConfig.model_validate({"spec": t} if isinstance(t, str) else t)
            price: Price | None = price_for(tc)
        except Exception:  # a spec of a plugin no longer installed: its price is unknown
            price = None
        out.append(f"{role}: {price.source if price is not None else 'no known price'}")
        if price is not None and price.read:
            read.add(price.read)
    return out, sorted(read)


def run_cost(store: Any, run_id: str, summary: dict[str, Any], funnel: dict[str, Any]) -> RunCost:
    """The run's spending from its counters (``summary``: run_summary, journal included) and its stored
    answers, whichever knows more (a cluster run's shards count in the answers only)."""
    spent = store.run_spending(run_id)
    try:
        cfg = store.run_config(run_id)
    except Exception:
        cfg = {}
    sources, read = price_sources(cfg)
    return RunCost(
        paid_usd=max(float(summary.get("cost_usd") or 0), spent["paid_usd"]),
        saved_usd=spent["saved_usd"],
        unpriced=max(int(summary.get("unpriced") or 0), spent["unpriced"]),
        curated=int(funnel.get("curated") or 0),
        sources=sources,
        read=read,
    )


__all__ = ["RunCost", "price_sources", "run_cost"]
