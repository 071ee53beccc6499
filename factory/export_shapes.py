"""How records become the rows of an export shape (``factory export --as``).

A plain shape maps one curated record to one row (or to none: the record cannot be shown that way). A shape
that teaches an answer (``Shape.trusted_only``) shows only the records the recipe trusts and counts the others
by reason, so the export can say what it set aside. A group shape (``Shape.group``: preference pairs) sees all
the records of one seed at once: the trusted curated ones and the distrusted ones that no filter but
``agreement`` dropped (a wrong answer is what makes them useful there).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from factory.errors import ConfigError
from factory.logprobs import unpack
from factory.store import Store

PAIRS_PER_QUESTION = 4  # preference: the most pairs made from one question by default
# Verdicts that still leave a record fit to be a preference pair's rejected side.
NEGATIVE_OK = ("agreement",)


@dataclass(slots=True)
class Plan:
    shape: str
    stage: str | None  # None: every stage
    row: Callable[[dict[str, Any]], dict[str, Any] | None]
    label: str | None
    distrust: Callable[[dict[str, Any]], str | None] | None = None  # set: only trusted records are shown
    group: Any = None  # Shape.group: rows made from the records of one seed at once
    set_aside: dict[str, int] = field(default_factory=dict)
    # Rows exported with the teacher's logprobs (soft labels): "with ids" / "without ids" (token strings only).
    soft_labels: dict[str, int] = field(default_factory=dict)
    soft: bool = True  # Shape.soft_labels: rows may carry the teacher's logprobs


SOFT_LABEL_COLUMNS = ("teacher_token_ids", "teacher_top_ids", "teacher_top_logprobs")


def soft_labels_note(counts: dict[str, int]) -> str | None:
    """One sentence on the rows that carry the teacher's logprobs, or None when none do."""
    if not counts:
        return None
    with_ids, without = counts.get("with ids", 0), counts.get("without ids", 0)
    note = f"{with_ids + without} rows carry the teacher's top-k logprobs ({', '.join(SOFT_LABEL_COLUMNS)})"
    if without:
        note += (
            f"; {without} of them have no token ids (the teacher's API names tokens by text only): "
            "teacher_token_ids and teacher_top_ids are null there, teacher_tokens and teacher_top_tokens hold "
            "the token strings (a vLLM server gives ids with the teacher option token_ids: true)"
        )
    return note


def add_soft_labels(out: dict[str, Any], keys: Any, found: dict[str, bytes], counts: dict[str, int]) -> None:
    """The teacher's logprobs of the record's answer (its first request key whose answer has them) as the
    soft-label columns of ``out``: aligned per generated token, k alternatives per position."""
    key = next((k for k in keys or () if k in found), None)
    if key is None:
        return
    lp = unpack(found[key])
    out["teacher_token_ids"] = lp.token_ids
    out["teacher_top_ids"] = lp.top_ids
    out["teacher_top_logprobs"] = lp.top_logprobs
    if lp.has_ids:
        counts["with ids"] = counts.get("with ids", 0) + 1
    else:
        out["teacher_tokens"] = lp.tokens
        out["teacher_top_tokens"] = lp.top_tokens
        counts["without ids"] = counts.get("without ids", 0) + 1


def set_aside_note(set_aside: dict[str, int]) -> str | None:
    """One sentence on the records a shape that teaches an answer left out, or None."""
    if not set_aside:
        return None
    parts = ", ".join(
        f"{n} ({reason})" for reason, n in sorted(set_aside.items(), key=lambda x: (-x[1], x[0]))
    )
    total = sum(set_aside.values())
    return f"{total} negatives set aside: {parts}; export them with --as preference"


def plan_shape(recipe_slug: str, shape: str, stage: str | None) -> Plan:
    from recipes import get_recipe

    try:
        recipe = get_recipe(recipe_slug)
    except ConfigError:
        if shape != "records":
            raise
        # a recipe this process cannot load (one made in a notebook, a plugin since removed): its records
        # are exported as they are, every stage unless --stage names one
        return Plan(shape, None if stage in (None, "all") else stage, lambda p: p, None)
    if stage is not None and stage != "all" and stage not in recipe.stages:
        raise ConfigError(
            f"--stage {stage!r}: the {recipe_slug} recipe's stages are {', '.join(recipe.stages)} (or all)"
        )
    if shape == "records":
        chosen = None if stage == "all" else (stage or recipe.stages[-1])
        return Plan(shape, chosen, lambda p: p, None)
    base = "prompt_completion" if shape == "messages" else shape
    sh = recipe.shapes.get(base)
    if sh is None:
        offered = ["records", *recipe.shapes, *(["messages"] if "prompt_completion" in recipe.shapes else [])]
        raise ConfigError(
            f"--as {shape}: the {recipe_slug} recipe's records do not come in that shape; "
            f"it offers {', '.join(offered)}"
        )
    if stage is not None and stage != (sh.stage or recipe.stages[-1]):
        raise ConfigError(
            f"--as {shape} is built from the {sh.stage or recipe.stages[-1]!r} stage; drop --stage"
        )
    row = sh.row
    if shape == "messages":

        def row(p: dict[str, Any], pc: Callable[..., Any] = sh.row) -> dict[str, Any] | None:
            r = pc(p)
            if r is None:
                return None
            return {"messages": [{"role": "user", "content": r["prompt"]},
                                 {"role": "assistant", "content": r["completion"]}]}  # fmt: skip

    if sh.group is not None:
        if recipe.distrust is None:
            raise ConfigError(f"--as {shape}: the {recipe_slug} recipe does not say which answers are wrong")
        return Plan(shape, sh.stage or recipe.stages[-1], row, None, recipe.distrust, sh.group)
    return Plan(
        shape,
        sh.stage or recipe.stages[-1],
        row,
        sh.label,
        recipe.distrust if sh.trusted_only else None,
        soft=sh.soft_labels,
    )


def shaped_rows(
    store: Store, run_id: str, plan: Plan, *, slim: bool, include_rejected: bool, batch_rows: int
) -> Iterator[tuple[str, str, dict[str, Any] | None]]:
    """(seed id, record id, exported row or None when the shape cannot show the record), in store order.

    A shape that teaches an answer also reads the records only ``agreement`` dropped: they are counted with
    the curated ones it sets aside (a wrong answer is left out either way, and is a preference negative)."""
    counting = plan.distrust is not None and not include_rejected
    reader = store.curated_reader(run_id, stage=plan.stage, include_rejected=include_rejected or counting,
                                  batch_rows=batch_rows)  # fmt: skip
    for batch in reader:
        records = batch.to_pylist()
        found = store.logprobs_of([k for r in records for k in r["request_keys"] or ()]) if plan.soft else {}
        for r in records:
            if counting and r["dropped_by"] is not None and not _negative_ok(r["dropped_by"]):
                continue  # dropped for another reason than its answer: not a negative, not exported
            payload = orjson.loads(r["payload"])
            why = plan.distrust(payload) if plan.distrust is not None else None
            if why is not None:
                plan.set_aside[why] = plan.set_aside.get(why, 0) + 1
                continue
            if counting and r["dropped_by"] is not None:
                continue  # trusted by the recipe, dropped by agreement's own thresholds: not curated
            out = plan.row(payload)
            if out is not None:
                out = dict(out)
                if found:
                    add_soft_labels(out, r["request_keys"], found, plan.soft_labels)
                if not slim:
                    out.update(
                        record_id=r["id"], seed_id=r["seed_id"], stage=r["stage"], sample_index=r["sample_index"],
                        teacher=r["teacher"], template_version=r["template_version"], request_keys=r["request_keys"],
                    )  # fmt: skip
                    if isinstance(payload.get("focus"), dict):  # a focused round's record: its round and eval
                        out.update(
                            focus_round=payload["focus"].get("round"), focus_eval=payload["focus"].get("eval")
                        )
                if include_rejected:
                    out["dropped_by"] = r["dropped_by"]
            yield r["seed_id"], r["id"], out


def _negative_ok(dropped_by: str | None) -> bool:
    """Dropped by nothing, or only by filters that judge the answer (whose verdict a wrong answer earns)."""
    return dropped_by is None or all(part.split(":", 1)[0] in NEGATIVE_OK for part in dropped_by.split("; "))


def grouped_rows(
    store: Store, run_id: str, plan: Plan, *, slim: bool, cap: int, batch_rows: int
) -> Iterator[tuple[str, str, dict[str, Any] | None]]:
    """(seed id, a record id, row or None) for a group shape: each seed's trusted curated records and its
    distrusted ones go to ``plan.group`` together, in record-id order. A record left out of every row is
    yielded once as None (counted as not shown)."""
    assert plan.group is not None and plan.distrust is not None
    reader = store.curated_reader(run_id, stage=plan.stage, include_rejected=True, batch_rows=batch_rows)

    def flush(seed_id: str, recs: list[dict[str, Any]]) -> Iterator[tuple[str, str, dict[str, Any] | None]]:
        pos, neg, meta = [], [], {}
        for r in sorted(recs, key=lambda r: r["id"]):
            payload = orjson.loads(r["payload"])
            why = plan.distrust(payload)  # type: ignore[misc]
            if why is None and r["dropped_by"] is None:
                pos.append((r["id"], payload))
            elif why is not None and _negative_ok(r["dropped_by"]):
                neg.append((r["id"], payload))
            else:
                continue
            meta[r["id"]] = r
        used: set[str] = set()
        for row, ids in plan.group(pos, neg, cap):
            used.update(ids)
            out = dict(row)
            if not slim:
                first = meta[ids[0]]
                out.update(
                    seed_id=seed_id, stage=first["stage"], teacher=first["teacher"],
                    template_version=first["template_version"], chosen_record_id=ids[0],
                    rejected_record_id=ids[-1],
                    request_keys=[k for i in ids for k in (meta[i]["request_keys"] or [])],
                )  # fmt: skip
            yield seed_id, ids[0], out
        for rid in meta:
            if rid not in used:
                yield seed_id, rid, None

    seed: str | None = None
    recs: list[dict[str, Any]] = []
    for batch in reader:
        for r in batch.to_pylist():
            if r["seed_id"] != seed:
                if seed is not None:
                    yield from flush(seed, recs)
                seed, recs = r["seed_id"], []
            recs.append(r)
    if seed is not None:
        yield from flush(seed, recs)
