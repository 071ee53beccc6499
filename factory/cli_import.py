"""`factory import FILE --recipe SLUG`: rows that already hold a teacher's answers become a run's records."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from factory.errors import ConfigError


def add_import_parser(sub: Any) -> None:
    im = sub.add_parser(
        "import", help="turn rows that already hold a teacher's answers into the records of a run"
    )
    im.add_argument("file", metavar="FILE", help=".jsonl, .parquet, or a local HF dataset folder")
    im.add_argument(
        "--recipe", required=True, help="the recipe whose records the rows become (e.g. rationales)"
    )
    im.add_argument("--name", help="run name (default: the config's name, else the file's name)")
    im.add_argument("--store", help="DuckDB store path (overrides the config's)")
    im.add_argument("--config", metavar="CONFIG.yaml",
                    help="a run config: its store, name, params, filters, license and judge teacher")  # fmt: skip
    im.add_argument("--teacher", help="who wrote the answers, for rows without a teacher column "
                                      "(default: imported)")  # fmt: skip
    im.add_argument("--map", action="append", default=[], metavar="FIELD=COLUMN",
                    help="read a record field from a column of another name, e.g. --map rationale=teacher_rationale "
                    "(repeatable)")  # fmt: skip
    im.add_argument("--filters", metavar="SLUG,SLUG",
                    help="the run's filters, comma-separated ('' for none; default: the config's, else the "
                    "recipe's curation for imports)")  # fmt: skip
    im.add_argument("--no-recipe-filters", action="store_true",
                    help="without the recipe's own filters (e.g. agreement with gold): "
                    "the run config's `curation: {recipe_filters: false}`")  # fmt: skip
    im.add_argument("--json", action="store_true", help="print the summary as JSON")
    im.set_defaults(fn=cmd_import)


def cmd_import(args: argparse.Namespace) -> int:
    from factory.config import DEFAULT_STORE, load_config
    from factory.importer import import_file

    cfg = load_config(args.config) if args.config else None
    if cfg is not None and cfg.recipe != args.recipe:
        raise ConfigError(
            f"--recipe {args.recipe}: the config {args.config} is for recipe {cfg.recipe!r}; give one"
        )
    if args.store:
        store = Path(args.store)
    elif cfg is not None:
        store = cfg.store_path()
    else:
        store = Path(os.environ.get("FACTORY_STORE", DEFAULT_STORE))
    filters: list[Any] | None = None
    if args.filters is not None:
        filters = [s.strip() for s in args.filters.split(",") if s.strip()]
    elif cfg is not None and cfg.filters:
        filters = cfg.filters
    extra: dict[str, Any] = {}
    if cfg is not None:
        dumped = cfg.model_dump(mode="json")
        extra = {
            k: dumped[k] for k in ("license", "source_datasets", "teacher", "teachers", "export", "curation")
        }
    if args.no_recipe_filters:
        extra["curation"] = {**extra.get("curation", {}), "recipe_filters": False}
    res = import_file(
        args.file, recipe=args.recipe, store_path=store, name=args.name or (cfg.name if cfg else None),
        teacher=args.teacher, maps=args.map, params=cfg.params if cfg else None, filters=filters,
        extra_config=extra,
    )  # fmt: skip
    if args.json:
        print(json.dumps({"run_id": res.run_id, "store": str(res.store), "sha256": res.sha256, "rows": res.rows,
                          "records_added": res.records, "already_imported": res.already,
                          "rejected": res.rejected, "funnel": res.funnel}))  # fmt: skip
        return 0
    if res.already:
        print(
            f"{args.file} (sha256 {res.sha256[:12]}) is already imported in run {res.run_id}: nothing added"
        )
    else:
        print(f"imported {res.rows} rows of {args.file} (sha256 {res.sha256[:12]}) into run {res.run_id} "
              f"in {res.store}: {res.records} records")  # fmt: skip
        for reason, n in res.rejected.items():
            print(f"  {n} rows rejected by the recipe: {reason}")
    if res.funnel is not None:
        from factory.cli_output import print_funnel

        print_funnel(res.funnel)
    return 0
