"""The dataset card (README.md of an exported Hugging Face dataset folder), rendered only from what the store
knows about a run: its stored config, the records and their lineage, the request cache, the filter passes and
the verdict ledger. A fact the store does not hold is left out or called "not recorded", never guessed: no
license unless the config names one, no teacher revision unless the config pins one.

The card is a function of the store state and the export's facts: no clock, no environment variable, no
network, so the same state renders the same bytes. Keys never reach it (configs hold only the name of the
variable that holds one), and endpoints appear as their host only.
"""

from __future__ import annotations

import shlex
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import orjson
import yaml

from factory import __version__
from factory import card_facts as cf
from factory import markdown as md
from factory.costs import run_cost
from factory.pricing import usd
from factory.store import Store


@dataclass(slots=True)
class ExportFacts:
    """What an export knows that the store does not: the files written and the rows' shape."""

    split_sizes: dict[str, int]  # rows per split, in split order
    split_bytes: dict[str, int]  # bytes of parquet written per split
    data_files: dict[str, str]  # split -> path glob, e.g. "data/train-*.parquet"
    dataset_info: dict[str, Any]  # YAML-ready `dataset_info` mapping (features + splits); embedded verbatim
    shape: str  # "records" | "messages" | "prompt_completion" | "text_label" | "triples" | "step_by_step"
    label_names: list[str] | None  # ClassLabel names when shape is text_label
    examples: list[dict[str, Any]]  # a few exported rows, already in the exported shape
    slim: bool
    include_rejected: bool
    stage: str | None = None  # records stage exported, when the recipe has several
    split_by: str = "seed"  # what the split hash is taken of: "seed" or "record"
    funnel_image: str | None = None  # the funnel chart written beside the card (a path in the folder)
    set_aside: dict[str, int] = field(default_factory=dict)  # untrusted records a target shape left out
    skipped: int = 0  # records the shape could not show (preference: records left out of every pair)
    soft_labels: dict[str, int] = field(
        default_factory=dict
    )  # rows with the teacher's logprobs, by ids or not


# Hub task categories per recipe; a recipe not listed here is text generation.
RECIPE_TASKS: dict[str, tuple[str, ...]] = {
    "rationales": ("text-generation", "question-answering"),
    "program_rationales": ("text-generation", "question-answering"),
    "boundary": ("text-classification",),
    "relabel": ("text-classification",),
    "commonsense": ("text-generation",),
    "prompt": ("text-generation",),
}
CHAT_SHAPES = ("messages", "prompt_completion", "step_by_step", "preference")
SHAPES = {
    "records": "the recipe's record fields, plus lineage columns unless exported slim",
    "messages": "chat conversations (`messages`: a list of {role, content}), as TRL's SFTTrainer reads them",
    "prompt_completion": "`prompt` / `completion` pairs, as TRL's SFTTrainer reads them",
    "text_label": "`text` / `label` pairs for a classifier (the label is a ClassLabel)",
    "triples": "(head, relation, tail) commonsense triples",
    "step_by_step": "input to rationale and answer, for Distilling Step-by-Step multi-task training",
    "preference": "preference pairs in TRL's conversational format, as DPOTrainer reads them: `prompt` (the "
    "question as a user turn), `chosen` (a rationale whose answer is trusted) and `rejected` (a rationale of the "
    "same question whose answer is wrong), each a list of {role, content}",
}
# Shapes whose target is an answer the student learns to give: only trusted records are exported.
TARGET_SHAPES = ("messages", "prompt_completion", "step_by_step")
# Payload fields that hold a record's label, per recipe (recipes/README.md documents each record).
LABEL_FIELDS: dict[str, tuple[str, ...]] = {
    "rationales": ("label",),
    "program_rationales": ("verified",),
    "boundary": ("teacher_label", "intended_label"),
    "relabel": ("label",),
    "commonsense": ("relation",),
}
SIZE_BUCKETS = (
    (1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
    (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B"),
    (10_000_000_000, "1B<n<10B"), (100_000_000_000, "10B<n<100B"), (1_000_000_000_000, "100B<n<1T"),
)  # fmt: skip
SAMPLING_KEYS = ("k", "n", "samples", "seed", "stop", "top_p", "voters", "new_events", "alphas_per_class",
                 "n_per_prompt", "json_schema", "relabel_json_schema")  # fmt: skip
FILE_PARAMS = ("fewshot", "labels", "relations_file")
MAX_CHARS = 300  # longest string shown in an example row
MAX_ITEMS = 12  # longest list shown in an example row
TOP = 10


def size_category(n: int) -> str:
    return next((name for bound, name in SIZE_BUCKETS if n < bound), "n>1T")


def task_categories(recipe: str, shape: str) -> list[str]:
    if shape == "text_label":
        return ["text-classification"]
    tasks = list(RECIPE_TASKS.get(recipe, ("text-generation",)))
    if shape in CHAT_SHAPES and "text-generation" not in tasks:
        tasks.insert(0, "text-generation")
    return tasks


# ---- the card -------------------------------------------------------------------------------------


def render_dataset_card(store: Store, run_id: str, facts: ExportFacts) -> str:
    """The README.md of an exported HF dataset folder: YAML metadata, then what made the data and how."""
    c = _Card(store, run_id, facts)
    body = [
        *c.summary(), *c.answers(), *c.structure(), *c.focus(), *c.teachers(), *c.templates(), *c.sampling(), *c.filters(),
        *c.funnel_table(), *c.labels(), *c.diversity(), *c.decontamination(), *c.examples(), *c.provenance(),
    ]  # fmt: skip
    return c.header() + "\n" + "\n".join(body).rstrip("\n") + "\n"


class _Card:
    """The sections of one card, each a list of Markdown lines, over facts read once."""

    def __init__(self, store: Store, run_id: str, facts: ExportFacts):
        self.store, self.run_id, self.facts = store, run_id, facts
        self.s = store.run_summary(run_id)
        self.cfg = store.run_config(run_id)
        self.slug = str(self.s["recipe"])
        self.recipe = cf.recipe_for(self.slug)
        self.params = cf.resolved_params(self.recipe, self.cfg.get("params") or {})
        self.roles = cf.roles(self.cfg)
        self.funnel = store.funnel(run_id)
        self.cost = run_cost(store, run_id, self.s, self.funnel)
        self.last = store.latest_pass(run_id)
        self.sent = store.request_sampling(run_id)
        self.rows = cf.exported_rows(
            store, run_id, include_rejected=facts.include_rejected, stage=facts.stage,
            fields=LABEL_FIELDS.get(self.slug, ()), expected=sum(facts.split_sizes.values()),
            distrust=getattr(self.recipe, "distrust", None),
            gold=getattr(self.recipe, "distrust", None) is not None and facts.shape != "preference",
        )  # fmt: skip
        self.n = sum(facts.split_sizes.values())

    def header(self) -> str:
        f, cfg = self.facts, self.cfg
        meta: dict[str, Any] = {}
        if cfg.get("license"):
            meta["license"] = cfg["license"]
        meta["pretty_name"] = str(self.s["name"])
        meta["task_categories"] = task_categories(self.slug, f.shape)
        meta["size_categories"] = [size_category(self.n)]
        meta["tags"] = list(dict.fromkeys(["synthetic", "distillation", self.slug]))
        if cfg.get("source_datasets"):
            meta["source_datasets"] = list(cfg["source_datasets"])
        files = [{"split": k, "path": v} for k, v in f.data_files.items()]
        meta["configs"] = [{"config_name": "default", "data_files": files}]
        meta["dataset_info"] = f.dataset_info
        return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True, width=100) + "---\n"

    def summary(self) -> list[str]:
        s, fn, f = self.s, self.funnel, self.facts
        what = f"the `{self.slug}` recipe"
        if self.recipe is not None:
            what += f" ({self.recipe.summary.rstrip('.')})"
        # the teacher names stored with the answers; the configured specs when no answer is stored
        specs = sorted({g["teacher"] for g in self.sent}) or [
            cf.teacher_row(r, t)[1] for r, t in self.roles.items()
        ]
        who = ("the teacher " if len(specs) == 1 else "the teachers ") + ", ".join(f"`{x}`" for x in specs)
        if self.last:
            applied = ", ".join(x["filter"] for x in self.last["filters"]) or "no filters"
            passed = f"passed filter pass {self.last['pass']} ({applied})"
        else:
            passed = "were kept (no filter pass has run)"
        splits = ", ".join(f"{k}: {v:,}" for k, v in f.split_sizes.items())
        imported = cf.import_sentence(self.cfg)
        sent = f"sent {s['seeds_done']:,} seed examples to {who}, which produced"
        if imported:
            sent = f"imported the answers to {s['seeds_done']:,} questions, which gave"
        text = (
            f"Synthetic data for distilling teacher LLMs into a small student, made by {what} of "
            f"distill-factory. Run `{self.run_id}` {sent} {fn['generated']:,} candidate records; "
            f"{fn['parsed']:,} passed the recipe's own checks and {fn['curated']:,} {passed}. "
            + (f"{imported} " if imported else "")
            + f"This export holds {self.n:,} rows ({splits}) in the `{f.shape}` shape. Every number and "
            "setting on this card is read from the factory's store."
        )
        rows = [
            ["run", f"`{self.run_id}`"], ["recipe", f"`{self.slug}`"],
            ["records generated", fn["generated"]], ["records curated", fn["curated"]], ["rows exported", self.n],
            ["splits", ", ".join(f"{k}: {v}" for k, v in f.split_sizes.items())],
            ["teacher requests (paid)", s["requests_sent"]], ["cache hits", s["cache_hits"]],
            ["prompt tokens", s["prompt_tokens"]], ["output tokens", s["completion_tokens"]],
            ["cost (estimate)", self._cost_cell()],
            ["config hash", f"`{s['config_hash']}`"], ["factory version", __version__],
        ]  # fmt: skip
        return [f"# {s['name']}", "", text, "", *md.table(["", ""], rows)]

    def _cost_cell(self) -> str:
        c = self.cost
        cell = f"{usd(c.paid_usd)}"
        if c.per_curated is not None:
            cell += f" ({usd(c.per_curated)} per curated record)"
        cell += f"; {c.basis}"
        if c.saved_usd:
            cell += f"; {usd(c.saved_usd)} of answers other runs paid for came from the cache"
        if c.unpriced:
            cell += f"; {c.unpriced:,} answers of no known cost"
        return cell

    def answers(self) -> list[str]:
        from factory.card_quality import answer_quality

        return answer_quality(self.store, self.run_id, self.facts, self.cfg, self.rows)

    def structure(self) -> list[str]:
        f = self.facts
        notes = [f"Rows are {SHAPES.get(f.shape, f'`{f.shape}` rows')}."]
        if f.stage:
            notes.append(f"Only records of the stage `{f.stage}` are exported.")
        if f.slim:
            notes.append("Exported slim: lineage columns (record id, request keys, ...) are left out.")
        if f.include_rejected:
            notes.append(
                "Rejected records are included; `dropped_by` says which filter dropped each and why."
            )
        if f.examples:
            notes.append("Columns: " + ", ".join(f"`{k}`" for k in f.examples[0]) + ".")
        if f.label_names:
            names = ", ".join(f"{i} `{n}`" for i, n in enumerate(f.label_names))
            notes.append(f"Label ids and names: {names}.")
        rows = [
            [k, v, f.split_bytes.get(k, ""), f"`{f.data_files.get(k, '')}`"] for k, v in f.split_sizes.items()
        ]
        return [
            "## Dataset structure", "", " ".join(notes), "",
            *md.table(["split", "rows", "parquet bytes", "files"], rows),
            ("Each record's split comes from a hash of its seed id: every record of a seed is in one split, "
             "and a record stays in its split." if f.split_by == "seed" else
             "Each record's split comes from a hash of its id, so a record stays in its split."), "",
        ]  # fmt: skip

    def focus(self) -> list[str]:
        """The focused rounds that chose this run's seeds: which eval, how many seeds it failed and solved."""
        found = self.store.focus_rounds(self.run_id)
        if not found:
            return []
        f = self.cfg.get("focus") or {}
        rows = [[r["round"], f"`{Path(str(r['eval'])).name}` (sha256 `{r['eval_digest']}`)", r["eval_failed"],
                 r["eval_solved"], r["outcome"], r["seeds"], r["records"]] for r in found]  # fmt: skip
        return [
            "## Focus rounds", "",
            f"The seeds were chosen by a student's results in an earlier evaluation: seeds it failed got "
            f"{f.get('failed_samples')} samples each, seeds it solved {f.get('solved_samples')}, seeds it was not "
            f"scored on {f.get('unscored_samples')}. Each record carries its round and eval (`focus_round`, "
            "`focus_eval`).", "",
            *md.table(["round", "eval", "failed in eval", "solved in eval", "seeds chosen as", "seeds", "records"],
                      rows),
        ]  # fmt: skip

    def teachers(self) -> list[str]:
        out = ["## Teachers", ""]
        head = ["role", "spec", "kind", "where", "model revision"]
        out += md.table(head, [cf.teacher_row(r, t) for r, t in self.roles.items()])
        by: dict[str, list[int]] = {}
        for g in self.sent:
            acc = by.setdefault(g["teacher"], [0, 0, 0])
            for i, k in enumerate(("requests", "prompt_tokens", "completion_tokens")):
                acc[i] += int(g[k])
        if by:
            out += ["Answers behind this dataset, by the teacher name stored with each (answers served from the "
                    "request cache count too):", ""]  # fmt: skip
            rows = [[t, *v] for t, v in sorted(by.items())]
            out += md.table(["teacher", "requests", "prompt tokens", "output tokens"], rows)
        out += [
            "> **Terms of use.** The models above wrote this data. Check each teacher's license and terms of use "
            "(some providers forbid training competing models on their outputs) before you train on or publish "
            "it.",
            "",
        ]
        return out

    def templates(self) -> list[str]:
        versions = self.store.template_versions(self.run_id)
        rows = [[st, f"`{v}`" if v else "none", n] for st, v, n in versions]
        out = ["## Prompt templates", "", *md.table(["stage", "template version", "records"], rows)]
        files = [[k, "shipped default" if v is None else f"`{v}`"] for k, v in self.params.items()
                 if k.endswith(("template", "template_file")) or k in FILE_PARAMS]  # fmt: skip
        if files:
            out += md.table(["param", "file"], files)
        stored = {v for _, v, _ in versions if v}
        found = cf.templates_used(self.recipe, self.cfg.get("params") or {}, stored)
        if found:
            out += [f"The template files found now give the records' template version (`{min(stored)}`), so "
                    "their text below is what the prompts were rendered from.", ""]  # fmt: skip
        else:
            out += ["The template text is not shown: the files found now do not give the version the records "
                    "carry, or were not found from here.", ""]  # fmt: skip
        for t in found:
            out += ["<details>", f"<summary><code>{t.name}</code></summary>", "", *md.fence(t.source, "jinja"),
                    "</details>", ""]  # fmt: skip
        return out

    def sampling(self) -> list[str]:
        out = ["## Sampling", ""]
        rows = [[k, md.compact_json(v)] for k, v in self.params.items()
                if k in SAMPLING_KEYS or "temperature" in k or "max_tokens" in k]  # fmt: skip
        if rows:
            out += [
                "Recipe parameters (stored config, defaults filled in):",
                "",
                *md.table(["param", "value"], rows),
            ]
        if self.sent:
            head = ["teacher", "temperature", "top_p", "max_tokens", "requests", "with a seed"]
            rows = [[g["teacher"], md.scalar(g["temperature"]), md.scalar(g["top_p"]), md.scalar(g["max_tokens"]),
                     g["requests"], g["seeded"]] for g in self.sent]  # fmt: skip
            out += ["As sent, from the request cache:", "", *md.table(head, rows)]
        opts = [[r, md.compact_json(t["options"])] for r, t in self.roles.items() if t.get("options")]
        if opts:
            out += ["Teacher engine options:", "", *md.table(["role", "options"], opts)]
        return [*out, "<details>", "<summary>All recipe parameters</summary>", "",
                *md.fence(md.indented_json(self.params), "json"), "</details>", ""]  # fmt: skip

    def filters(self) -> list[str]:
        out = ["## Filters", ""]
        if self.last is None:
            listed = ", ".join(f"`{_slug(x)}`" for x in self.cfg.get("filters") or []) or "none"
            return [*out, f"No filter pass has run on this data (filters in the config: {listed}).", ""]
        out += [f"Filter pass {self.last['pass']} ({_utc(self.last['created_at'])}), in order; each filter sees only "
                "what the ones before it kept. Thresholds only decide; the other params change what is "
                "measured, so they are part of the filter's version.", ""]  # fmt: skip
        rows = []
        for i, f in enumerate(self.last["filters"], 1):
            th, paths = cf.filter_param_kinds(f["filter"])
            params = {k: _file_names(v) if k in paths else v for k, v in f["params"].items()}
            thresholds = {k: v for k, v in params.items() if th is None or k in th}
            scoring = {k: v for k, v in params.items() if th is not None and k not in th}
            rows.append([i, f"`{f['filter']}`", f"`{f['version']}`", _kv(thresholds), _kv(scoring)])
        return out + md.table(["#", "filter", "version", "thresholds", "scoring params"], rows)

    def funnel_table(self) -> list[str]:
        fn, f = self.funnel, self.facts
        slugs = {x["filter"] for x in fn["filters"]}
        parse = sorted(
            (-n, flt, r) for flt, r, n in self.store.verdict_counts(self.run_id) if flt not in slugs
        )
        dropped = fn["generated"] - fn["parsed"]
        rows: list[list[Any]] = [
            ["generated", "", fn["generated"], "", ""],
            ["parsed (the recipe's own checks)", fn["generated"], fn["parsed"], dropped,
             _reasons([(f"{flt}: {r}", -n) for n, flt, r in parse[:3]])],
        ]  # fmt: skip
        for x in fn["filters"]:
            top = sorted(x["top_reasons"], key=lambda y: (-y["records"], y["reason"]))
            reasons = _reasons([(y["reason"], y["records"]) for y in top])
            rows.append([f"`{x['filter']}`", x["in"], x["kept"], x["dropped"], reasons])
        rows.append(["curated", "", fn["curated"], "", ""])
        out = ["## Funnel", ""]
        if f.funnel_image:
            out += [f"![The funnel: generated, parsed, each filter, curated]({f.funnel_image})", ""]
        out += md.table(["step", "in", "kept", "dropped", "top reasons"], rows)
        if self.n != fn["curated"]:
            why = [
                w for w, on in (("one stage", f.stage), ("rejected records too", f.include_rejected)) if on
            ]
            out += [f"This export holds {self.n:,} rows ({', '.join(why) or 'see the export options'}).", ""]
        return [*out, "`factory why RECORD_ID` tells why one record is in or out.", ""]

    def labels(self) -> list[str]:
        out = ["## Label balance", ""]
        fields = [k for k in LABEL_FIELDS.get(self.slug, ()) if self.rows.exported[k]]
        if not fields:
            return [*out, "The records of this recipe carry no label field.", ""]
        cols: list[tuple[str, Counter[str]]] = []
        for k in fields:
            cols.append((f"`{k}`", self.rows.curated[k]))
            if self.facts.include_rejected:
                cols.append((f"`{k}` (all exported)", self.rows.exported[k]))
        total: Counter[str] = Counter()
        for _, c in cols:
            total.update(c)
        names = list(self.facts.label_names or [])
        order = names + sorted((v for v in total if v not in names), key=lambda v: (-total[v], v))
        rows = [[f"`{v}`", *(_share(c[v], sum(c.values())) for _, c in cols)] for v in order]
        note = "Curated records per value of the label fields"
        if self.facts.include_rejected:
            note += ' (the "all exported" columns count rejected records too)'
        return [*out, note + ":", "", *md.table(["value", *(h for h, _ in cols)], rows)]

    def diversity(self) -> list[str]:
        from filters.diversity import diversity_report

        texts = self.rows.texts
        rep = diversity_report(texts, cf.stored_vectors(self.store, texts, self.last))
        over = "Over the texts of the curated records exported:"
        if len(texts) < self.rows.curated_total:
            over = (f"Over an evenly spaced sample of {len(texts):,} of the {self.rows.curated_total:,} curated "
                    "records exported:")  # fmt: skip
        cos = rep["mean_pairwise_cosine"]
        if cos is None:
            cos = "not measured: not every text has a stored sentence vector (`factory status --diversity` measures it)"
        rows = [
            ["records", rep["records"]], ["distinct-1 (unique words / words)", rep["distinct_1"]],
            ["distinct-2 (unique word bigrams / bigrams)", rep["distinct_2"]],
            ["mean pairwise cosine (sentence vectors the filters stored)", cos],
        ]  # fmt: skip
        return ["## Diversity", "", over, "",
                *md.table(["metric", "value"], rows)]  # fmt: skip

    def decontamination(self) -> list[str]:
        out = ["## Decontamination", ""]
        step = next((f for f in (self.last or {}).get("filters", []) if f["filter"] == "decontaminate"), None)
        if step is None:
            return [*out, "Not run: this data was not checked for overlap with evaluation sets.", ""]
        p = step["params"]
        verdicts = self.store.pass_verdicts(self.run_id, "decontaminate")
        hits: Counter[tuple[str, str]] = Counter()
        ngram: dict[tuple[str, str], str] = {}
        for v in verdicts:
            if not v["keep"] and v["detail"]:
                d = orjson.loads(v["detail"])
                key = (str(d.get("eval_name")), str(d.get("eval_item")))
                hits[key] += 1
                ngram.setdefault(key, str(d.get("ngram", "")))
        overlapping = sum(1 for v in verdicts if (v["score"] or 0) > 0)
        dropped = sum(1 for v in verdicts if not v["keep"])
        files = ", ".join(f"`{x}`" for x in sorted(_file_names(p.get("eval_files") or [])))
        out += [f"Word {p.get('n')}-gram overlap with {files} (fields: {', '.join(p.get('fields') or [])}; a "
                f"record with {p.get('min_overlap')} or more overlapping n-grams is dropped). "
                f"{len(verdicts):,} records checked (what the filters before it kept), {overlapping:,} with any "
                f"overlap, {dropped:,} dropped.", ""]  # fmt: skip
        if hits:
            top = sorted(hits.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP]
            rows = [[f, i, n, ngram[(f, i)]] for (f, i), n in top]
            out += md.table(["eval file", "item", "records dropped", "first n-gram found"], rows)
        return out

    def examples(self) -> list[str]:
        out = ["## Examples", ""]
        if not self.facts.examples:
            return [*out, "No rows were exported.", ""]
        out += [f"{len(self.facts.examples)} exported rows (strings over {MAX_CHARS} characters cut):", ""]
        for row in self.facts.examples:
            out += md.fence(md.indented_json(md.shorten(row, MAX_CHARS, MAX_ITEMS)), "json")
        return out

    def provenance(self) -> list[str]:
        s, f = self.s, self.facts
        rows = [
            ["run id", f"`{self.run_id}`"], ["run created", _utc(s["created_at"])], ["run updated", _utc(s["updated_at"])],
            ["run made with factory", self.store.factory_version(self.run_id) or "not recorded"],
            ["card rendered by factory", __version__], ["config hash", f"`{s['config_hash']}`"],
        ]  # fmt: skip
        name = shlex.quote(str(s["name"]))
        cmds = [cf.import_command(self.cfg) or "factory run CONFIG.yaml    # answers already in the store's "
                "cache are not paid for again"]  # fmt: skip
        if self.last is not None:
            sets = cf.filter_overrides(self.cfg, self.last)
            if sets is None:
                cmds.append(f"factory filter {name}    # the latest pass applied other filters: see Filters")
            else:
                cmds.append(" ".join([f"factory filter {name}", *(f"--set {shlex.quote(x)}" for x in sets)]))
        flags = [x for x, on in (("--slim", f.slim), ("--include-rejected", f.include_rejected)) if on]
        cmds.append(" ".join([f"factory export {name} --out DIR", *flags]))
        config = yaml.safe_dump(cf.public_config(self.cfg), sort_keys=False, allow_unicode=True, width=100)
        return [
            "## Provenance and reproduction", "", *md.table(["", ""], rows), *md.fence("\n".join(cmds), "bash"),
            "`CONFIG.yaml` as stored with the run (relative paths resolve against the original config's folder; "
            "endpoint URLs are shown without credentials or query strings):", "", *md.fence(config, "yaml"),
        ]  # fmt: skip


def _utc(stamp: str | None) -> str:
    """A stored timestamp in UTC (the store hands them out in the machine's time zone)."""
    if not stamp:
        return "not recorded"
    t = datetime.fromisoformat(stamp)
    return (t.astimezone(timezone.utc) if t.tzinfo else t).strftime("%Y-%m-%d %H:%M:%S UTC")


def _slug(item: Any) -> str:
    if isinstance(item, dict):
        return str(next(iter(item), "?"))
    return str(item)


def _file_names(v: Any) -> Any:
    """File names without their folders, for tables (the stored config below has the full paths)."""
    if isinstance(v, list):
        return [Path(x).name if isinstance(x, str) else x for x in v]
    return Path(v).name if isinstance(v, str) else v


def _kv(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={md.compact_json(v)}" for k, v in params.items()) or "none"


def _reasons(items: list[tuple[str, int]]) -> str:
    return "; ".join(f"{r or '(no reason)'} ×{n}" for r, n in items)


def _share(n: int, total: int) -> str:
    return f"{n} ({100 * n / total:.1f} %)" if total else "0"
