"""`factory import`: rows that already hold a teacher's answers become the records of a run, so that they go
through the same filters, ledger, card, export and trainer as generated records.

The file is read twice, a batch at a time: the first pass checks every row (a column of the wrong type, an
unreadable line) and tallies the votes of each question's rows; only then is anything written, and the second
pass writes the run in one transaction. A row the recipe cannot use (no input, no rationale, no answer) is
still a record, with the recipe's verdict saying why. The run id is a hash of the recipe, its params, the
field map, the teacher and the file's SHA-256, so importing the same file again finds the run and adds
nothing. Each record's request keys hold ``imported:<sha256>``: where a generated record names the answers
it came from, an imported one names the file.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from factory import __version__
from factory.errors import ConfigError
from factory.import_files import Source, open_source
from factory.keys import digest, record_id
from recipes.base import Draft, Importer, Recipe

log = logging.getLogger(__name__)

TEMPLATE_VERSION = "imported"
DEFAULT_TEACHER = "imported"
WRITE_ROWS = 5000
_NAME = re.compile(r"[^A-Za-z0-9_.-]+")
_FIRST = object()


@dataclass(slots=True)
class ImportResult:
    run_id: str
    name: str
    store: Path
    sha256: str
    rows: int
    records: int  # added now (0 when the file was imported before)
    already: bool  # the same file was imported into this run before: nothing added
    rejected: dict[str, int] = field(default_factory=dict)  # the recipe's reasons, rows per reason
    funnel: dict[str, Any] | None = None  # after the run's filters, when applied


@dataclass(slots=True)
class _Tally:
    """What the first pass learns: rows per question, the votes of each, the teachers the rows name."""

    rows: int = 0
    per_seed: dict[str, int] = field(default_factory=dict)
    votes: dict[str, Any] = field(default_factory=dict)  # the one answer of a question, or a Counter
    teachers: set[str] = field(default_factory=set)

    def tally(self, seed_id: str) -> Counter[Any]:
        """The votes of one question's rows."""
        had = self.votes.get(seed_id)
        return had if isinstance(had, Counter) else Counter([] if had is None else [had])


def recipe_for_import(slug: str) -> tuple[Recipe, Importer]:
    from recipes import all_recipes, get_recipe

    recipe = get_recipe(slug, where="--recipe", base_dir=Path.cwd())
    if recipe.importer is None:
        able = [r.plugin.name for r in all_recipes() if r.obj is not None and r.obj.importer is not None]
        raise ConfigError(
            f"--recipe {slug}: the {slug} recipe cannot import rows (it declares no importer); recipes that "
            f"can: {', '.join(able) or 'none'}"
        )
    return recipe, recipe.importer


def field_map(
    importer: Importer, params: Any, given: list[str], columns: list[str], path: Path, sparse: bool = False
) -> dict[str, str]:
    """Record field → column for the fields this file fills: the recipe's defaults, then ``--map`` pairs.
    ``columns`` are the schema's, or (``sparse``, JSONL) the first row's: a mapped or required column must
    be there, an optional one is read from each row that has it."""
    defaults = importer.fields(params)
    mapped: dict[str, str] = {}
    for item in given:
        fld, eq, col = item.partition("=")
        fld, col = fld.strip(), col.strip()
        if not eq or not fld or not col:
            raise ConfigError(
                f"--map {item!r}: write it as FIELD=COLUMN, e.g. --map rationale=teacher_rationale"
            )
        if fld not in defaults:
            raise ConfigError(
                f"--map {item!r}: no field {fld!r}; the fields an import can fill: {', '.join(defaults)}"
            )
        mapped[fld] = col
    shown = ", ".join(repr(c) for c in columns) or "none"
    where = "first row's columns are" if sparse else "columns are"
    out: dict[str, str] = {}
    for fld, default in defaults.items():
        chosen = mapped.get(fld, default)
        if chosen is None:
            continue
        if chosen in columns or (sparse and fld not in mapped and fld not in importer.required):
            out[fld] = chosen  # a JSONL row may leave out an optional column the first row has not
        elif fld in mapped or fld in importer.required:
            how = "--map" if fld in mapped else "by default"
            raise ConfigError(
                f"FILE {path}: no column {chosen!r} (field {fld!r}, {how}); its {where} {shown}. Name the column "
                f"that holds it: --map {fld}=COLUMN"
            )
    return out


def _values(row: dict[str, Any], fields: dict[str, str]) -> dict[str, Any]:
    return {f: row.get(c) for f, c in fields.items()}


def _check_types(
    values: dict[str, Any], fields: dict[str, str], importer: Importer, path: Path, n: int
) -> None:
    for fld, v in values.items():
        if v is None or isinstance(v, str | int | float | bool):
            continue
        if fld in importer.lists and isinstance(v, list | tuple):
            continue
        raise ConfigError(
            f"FILE {path}, row {n}: column {fields[fld]!r} (field {fld!r}) holds a {type(v).__name__}; expected "
            "text or a number. Fix the row, or map the field to another column with --map"
        )


def _seed_id(values: dict[str, Any], row: dict[str, Any]) -> str:
    rid = values.get("id")
    if rid not in (None, "") and not isinstance(rid, bool):
        return str(rid)
    question = values.get("input")
    what = question if question not in (None, "") else orjson.loads(orjson.dumps(row, default=str))
    return digest("import-seed1", what, length=16)


def _first_pass(src: Source, importer: Importer, params: Any, fields: dict[str, str]) -> _Tally:
    t = _Tally()
    for n, row in src.rows():
        values = _values(row, fields)
        _check_types(values, fields, importer, src.path, n)
        sid = _seed_id(values, row)
        t.rows += 1
        t.per_seed[sid] = t.per_seed.get(sid, 0) + 1
        who = values.get("teacher")
        if isinstance(who, str) and who.strip() and len(t.teachers) <= 16:
            t.teachers.add(who.strip())
        if importer.vote is not None:
            choice = importer.vote(importer.row(values, params))
            had = t.votes.get(sid, _FIRST)
            if had is _FIRST:  # most questions have one row: keep its answer, not a Counter
                t.votes[sid] = choice
            else:
                tally = had if isinstance(had, Counter) else Counter([] if had is None else [had])
                if choice is not None:
                    tally[choice] += 1
                t.votes[sid] = tally
    if not t.rows:
        raise ConfigError(f"FILE {src.path} holds no rows: nothing to import")
    return t


def default_name(path: Path) -> str:
    stem = path.name if path.is_dir() else path.stem
    return _NAME.sub("-", stem).strip("-._") or "imported"


def _batches(src: Source, imp: Importer, params: Any, fields: dict[str, str], tally: _Tally, *, run_id: str,
             slug: str, source_key: str, teacher: str, rejected: Counter[str]) -> Any:  # fmt: skip
    """Record batches of the second pass (its last one also holds the seeds). A file that no longer reads as
    it did in the first pass stops the import (the transaction is rolled back)."""
    from factory.store import Batch

    index: dict[str, int] = {}
    batch = Batch()
    for n, row in src.rows():
        values = _values(row, fields)
        _check_types(values, fields, imp, src.path, n)
        sid = _seed_id(values, row)
        i = index.get(sid, 0)
        index[sid] = i + 1
        d: Draft = imp.row(values, params)
        if imp.settle is not None:
            imp.settle(d, tally.tally(sid), tally.per_seed.get(sid, 1))
        rid = record_id(run_id, d.stage, sid, i)
        who = values.get("teacher")
        who = who.strip() if isinstance(who, str) and who.strip() else teacher
        batch.records.append(  # RECORD_COLUMNS order
            (rid, run_id, slug, d.stage, sid, i, d.text, orjson.dumps(d.payload).decode(), d.parent_ids,
             (source_key,), who, TEMPLATE_VERSION)
        )  # fmt: skip
        if d.reject is not None:
            batch.verdicts.append((rid, run_id, f"{slug}.parse", TEMPLATE_VERSION, False, d.score, d.reject))
            rejected[d.reject] += 1
        if len(batch.records) >= WRITE_ROWS:
            yield batch
            batch = Batch()
    if index != tally.per_seed:
        raise ConfigError(
            f"FILE {src.path} changed while it was being imported; nothing was stored: import it again"
        )
    batch.seeds_done = [(run_id, s, c) for s, c in index.items()]
    yield batch


def import_file(
    path: str | Path,
    *,
    recipe: str,
    store_path: Path,
    name: str | None = None,
    teacher: str | None = None,
    maps: list[str] | None = None,
    params: dict[str, Any] | None = None,
    filters: list[Any] | None = None,
    extra_config: dict[str, Any] | None = None,
    apply_filters: bool = True,
) -> ImportResult:
    """Import FILE into a run of ``recipe`` in the store; then apply the run's filters (``filters``, else
    the recipe's default curation for imports). Everything is checked before the store is opened.
    ``extra_config`` (license, source_datasets, teacher, export of a run config) is stored with the run."""
    from factory.config import RunConfig, validate_params
    from factory.curation import parse_steps, recipe_filters

    rec, imp = recipe_for_import(recipe)
    p = validate_params(rec.params, params or {}, prefix="params", owner=f"recipe {rec.slug!r}", noun="field")
    if name is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}", name):
        raise ConfigError(
            f"--name {name!r}: use letters, digits, '_', '.', '-' (starting with a letter or digit)"
        )
    items = list(imp.filters) if filters is None else list(filters)
    # the recipe's own filters join the list as they do for a generated run (and for `factory filter`)
    implied = recipe_filters({"recipe": rec.slug, "params": dict(params or {}), **(extra_config or {})})
    steps = parse_steps(items, where="--filters", implied=implied)
    src = open_source(Path(path))
    fields = field_map(imp, p, list(maps or []), src.columns(), src.path, sparse=src.kind == "jsonl")
    tally = _first_pass(src, imp, p, fields)
    sha = src.sha256()
    run_teacher = teacher or (next(iter(tally.teachers)) if len(tally.teachers) == 1 else DEFAULT_TEACHER)
    name = name or default_name(src.path)
    fingerprint = [rec.slug, p.model_dump(mode="json"), fields, teacher, sha]
    run_id = f"{name}-{digest('import1', fingerprint, length=10)}"
    facts = {"file": str(src.path), "kind": src.kind, "sha256": sha, "rows": tally.rows, "map": fields,
             "teacher": run_teacher, "teachers": sorted(tally.teachers)[:16]}  # fmt: skip
    config = {"name": name, "recipe": rec.slug, "seeds": str(src.path), "params": dict(params or {}),
              "filters": items, **(extra_config or {}), "import": facts}  # fmt: skip
    # stored as `factory filter` reads it back
    RunConfig.model_validate({k: v for k, v in config.items() if k != "import"})

    from factory.store import Store
    from factory.store.imports import imported_before, write_import

    result = ImportResult(run_id, name, Path(store_path), sha, tally.rows, 0, already=False)
    with Store(store_path) as st:
        if imported_before(st, run_id):
            result.already = True
            result.funnel = st.funnel(run_id)
            return result
        rejected: Counter[str] = Counter()
        batches = _batches(src, imp, p, fields, tally, run_id=run_id, slug=rec.slug,
                           source_key=f"imported:{sha}", teacher=run_teacher, rejected=rejected)  # fmt: skip
        run = {"id": run_id, "name": name, "recipe": rec.slug, "teacher": run_teacher, "config": config,
               "config_hash": digest("cfg1", fingerprint, length=16), "version": __version__}  # fmt: skip
        result.records = write_import(st, run=run, batches=batches)
        result.rejected = dict(rejected.most_common())
        log.info("imported %d rows of %s into run %s", tally.rows, src.path, run_id)
        if steps and apply_filters:
            from factory.api import filter_run, run_sync

            result.funnel = run_sync(filter_run(st, run_id, steps)).funnel
        else:
            result.funnel = st.funnel(run_id)
    return result
