"""`factory import`: real teacher rationales (PaLM on SVAMP and CommonsenseQA) become records of a run that
filters, the ledger, export and the card treat like generated ones; bad input changes nothing."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from factory.importer import import_file
from factory.keys import record_id
from recipes.rationale_answers import normalize_answer

DATA = Path("/work/shared/data/palm_rationales")
SVAMP, CQA = DATA / "svamp_train.jsonl", DATA / "cqa_train.jsonl"
needs_data = pytest.mark.skipif(not SVAMP.is_file(), reason=f"the PaLM rationales are not at {DATA}")
SVAMP_MAP = ["rationale=teacher_rationale", "answer=teacher_answer"]
TABLES = ("runs", "records", "verdicts", "seeds_done", "run_stats", "filter_passes")


def factory_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "factory.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=120
    )


def agrees(row: dict) -> bool:
    """The teacher's answer equals gold, judged here independently of the recipe: as numbers, else as text
    without case (CQA's gold is lower case where the teacher wrote "Istanbul": 100 of its 9,741 rows, which is
    why the data's README, comparing exactly, counts 7,234 right where this counts 7,334)."""
    t, g = row["teacher_answer"], row["answer"]
    if t is None:
        return False
    try:
        return abs(float(t) - float(g)) < 1e-6
    except ValueError:
        return t.strip().lower() == g.strip().lower()


def row_counts(store: Path) -> dict[str, int]:
    con = duckdb.connect(str(store), read_only=True)
    try:
        return {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES}
    finally:
        con.close()


def records(store: Path, run_id: str) -> list[dict]:
    con = duckdb.connect(str(store), read_only=True)
    try:
        cur = con.execute(
            "SELECT id, seed_id, sample_index, stage, recipe, teacher, request_keys, payload FROM records "
            "WHERE run_id = ? ORDER BY seed_id, sample_index",
            [run_id],
        )
        cols = [d[0] for d in cur.description]
        out = [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]
    finally:
        con.close()
    for r in out:
        r["payload"] = json.loads(r["payload"])
    return out


@pytest.fixture(scope="module")
def svamp200(tmp_path_factory) -> Path:
    if not SVAMP.is_file():
        pytest.skip(f"the PaLM rationales are not at {DATA}")
    p = tmp_path_factory.mktemp("svamp") / "svamp200.jsonl"
    p.write_text("".join(SVAMP.read_text().splitlines(keepends=True)[:200]))
    return p


@pytest.fixture(scope="module")
def imported(svamp200, tmp_path_factory):
    """The 200-row SVAMP slice imported (answers from teacher_answer) and curated by the default filters."""
    store = tmp_path_factory.mktemp("store") / "s.duckdb"
    res = import_file(svamp200, recipe="rationales", store_path=store, maps=SVAMP_MAP)
    return res, store


@needs_data
def test_counts_and_lineage(imported, svamp200):
    res, store = imported
    rows = [json.loads(x) for x in svamp200.read_text().splitlines()]
    recs = records(store, res.run_id)
    assert res.rows == len(recs) == 200
    by_seed = {r["seed_id"]: r for r in recs}
    assert set(by_seed) == {r["id"] for r in rows}  # the id column is the seed id
    positives = {r["id"] for r in rows if agrees(r)}
    assert {s for s, r in by_seed.items() if r["payload"]["label"] == "positive"} == positives
    unparsed = sum(r["teacher_answer"] is None for r in rows)
    assert res.rejected == ({"no answer parsed": unparsed} if unparsed else {})
    sha = hashlib.sha256(svamp200.read_bytes()).hexdigest()
    assert res.sha256 == sha
    for r in recs:
        assert r["request_keys"] == [f"imported:{sha}"]
        assert (r["recipe"], r["stage"], r["sample_index"], r["teacher"]) == (
            "rationales",
            "rationale",
            0,
            "imported",
        )
        assert r["id"] == record_id(res.run_id, "rationale", r["seed_id"], 0)
        assert "The answer is" not in r["payload"]["rationale"]  # the answer sentence is the label's
    assert res.funnel["generated"] == 200 and res.funnel["parsed"] == 200 - unparsed
    agreement = next(s for s in res.funnel["filters"] if s["filter"] == "agreement")
    assert agreement["kept"] == len(positives)


@needs_data
def test_reimport_adds_nothing(imported, svamp200):
    res, store = imported
    before = row_counts(store)
    again = import_file(svamp200, recipe="rationales", store_path=store, maps=SVAMP_MAP)
    assert again.already and again.records == 0 and again.run_id == res.run_id
    assert row_counts(store) == before


@needs_data
def test_filter_why_export_round_trip(imported, svamp200, tmp_path):
    res, src = imported
    store = tmp_path / "s.duckdb"
    shutil.copy(src, store)
    rows = {r["id"]: r for r in map(json.loads, svamp200.read_text().splitlines())}
    out = factory_cli("filter", res.run_id, "--store", str(store), "--json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert [s["filter"] for s in json.loads(out.stdout)["funnel"]["filters"]] == ["agreement", "exact_dedup"]
    out = factory_cli("export", res.run_id, "--store", str(store), "--as", "step_by_step", "--format", "jsonl",
                      "--out", str(tmp_path / "exp"), cwd=tmp_path)  # fmt: skip
    assert out.returncode == 0, out.stderr
    exported = [json.loads(x) for x in (tmp_path / "exp" / "train.jsonl").read_text().splitlines()]
    agreeing = {i for i, r in rows.items() if agrees(r)}
    assert exported and {e["seed_id"] for e in exported} <= agreeing
    dups = json.loads(factory_cli("status", res.run_id, "--store", str(store), "--json", cwd=tmp_path).stdout)
    dropped = sum(d["records"] for d in dups["dropped"] if d["filter"] == "exact_dedup")
    assert len(exported) == len(agreeing) - dropped
    for e in exported:
        assert normalize_answer(e["label"]) == normalize_answer(rows[e["seed_id"]]["answer"]) == e["gold"]
        assert e["input"] == rows[e["seed_id"]]["question"] and e["rationale"]
    wrong = next(i for i, r in rows.items() if r["teacher_answer"] is not None and not agrees(r))
    rid = record_id(res.run_id, "rationale", wrong, 0)
    out = factory_cli("why", rid, "--store", str(store), cwd=tmp_path)
    assert out.returncode == 0 and "not curated" in out.stdout and "disagrees with gold" in out.stdout


@needs_data
def test_card_says_imported(imported, tmp_path):
    from factory.export import export_run

    res, src = imported
    store = tmp_path / "s.duckdb"
    shutil.copy(src, store)
    from factory.store import Store

    with Store(store, read_only=True) as st:
        export_run(st, res.run_id, tmp_path / "hf")
    card = (tmp_path / "hf" / "README.md").read_text()
    assert "answers were imported" in card and res.sha256 in card
    assert "factory import svamp200.jsonl --recipe rationales" in card


@needs_data
def test_answers_parsed_from_rationales_match_the_files(svamp200, tmp_path):
    """Without an answer column the answer is parsed from the rationale ("The answer is (84 / 2).")."""
    res = import_file(svamp200, recipe="rationales", store_path=tmp_path / "s.duckdb",
                      maps=["rationale=teacher_rationale"], filters=[])  # fmt: skip
    rows = {r["id"]: r for r in map(json.loads, svamp200.read_text().splitlines())}
    recs = records(tmp_path / "s.duckdb", res.run_id)
    differ = [r for r in recs if (r["payload"]["label"] == "positive") != agrees(rows[r["seed_id"]])]
    # Over all 800 rows the two differ on 4 (2 each way): "The answer is ((29/2) and (30/2))" names two
    # numbers, and a rationale with no answer sentence is parsed for its last number where the file has null.
    assert len(differ) <= 4, [r["payload"]["completion"][-80:] for r in differ]


@needs_data
def test_cqa_choice_answers(tmp_path):
    """CommonsenseQA rationales end "So the answer is (d) math problem": the letter is not the answer."""
    lines = CQA.read_text().splitlines()[:300]
    f = tmp_path / "cqa300.jsonl"
    f.write_text("\n".join(lines) + "\n")
    rows = {r["id"]: r for r in map(json.loads, lines)}
    res = import_file(f, recipe="rationales", store_path=tmp_path / "s.duckdb",
                      maps=["rationale=teacher_rationale"], teacher="palm-540b", filters=[])  # fmt: skip
    recs = records(tmp_path / "s.duckdb", res.run_id)
    assert len(recs) == 300 and {r["teacher"] for r in recs} == {"palm-540b"}
    positive = {r["seed_id"] for r in recs if r["payload"]["label"] == "positive"}
    assert positive == {i for i, r in rows.items() if agrees(r)}
    first = recs[0]["payload"]
    assert "\nAnswer choices: (a) " in first["input"] and not first["rationale"].endswith("So")


def test_vote_without_gold_and_bad_rows(tmp_path):
    rows = [
        {"question": "What is 2 + 3?", "rationale": "2 + 3 = 5. The answer is 5."},
        {"question": "What is 2 + 3?", "rationale": "Two and three make 5. The answer is 5."},
        {"question": "What is 2 + 3?", "rationale": "2 + 3 = 7. The answer is 7."},
        {"rationale": "No question here. The answer is 1."},
        {"question": "A null rationale", "rationale": None},
        {"question": "Nothing to parse", "rationale": "I do not know."},
    ]
    f = tmp_path / "votes.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = import_file(f, recipe="rationales", store_path=tmp_path / "s.duckdb", filters=["agreement"])
    assert res.rejected == {"missing input": 1, "no rationale": 1, "no answer parsed": 1}
    recs = records(tmp_path / "s.duckdb", res.run_id)
    votes = sorted((r["sample_index"], r["payload"]["answer"], r["payload"]["vote_share"]) for r in recs
                   if r["payload"]["input"] == "What is 2 + 3?")  # fmt: skip
    assert votes == [(0, "5", 2 / 3), (1, "5", 2 / 3), (2, "7", 1 / 3)]
    assert {r["payload"]["majority_answer"] for r in recs if r["payload"]["input"] == "What is 2 + 3?"} == {
        "5"
    }
    assert res.funnel["generated"] == 6 and res.funnel["parsed"] == 3 and res.funnel["curated"] == 2


def test_parquet_and_dataset_folders_give_the_same_records(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"id": f"q{i}", "question": f"What is {i} + 1?", "rationale": f"{i} + 1 = {i + 1}. The answer is "
             f"{i + 1}.", "answer": str(i + 1 if i % 3 else i)} for i in range(30)]  # fmt: skip
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "a.parquet")
    shards = tmp_path / "shards" / "data"
    shards.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows[:10]), shards / "train-00000-of-00002.parquet")
    pq.write_table(pa.Table.from_pylist(rows[10:]), shards / "train-00001-of-00002.parquet")
    saved = tmp_path / "saved"
    saved.mkdir()
    with pa.ipc.new_stream(saved / "data-00000-of-00001.arrow", pa.Table.from_pylist(rows).schema) as w:
        w.write_table(pa.Table.from_pylist(rows), max_chunksize=7)
    (saved / "state.json").write_text('{"_data_files": [{"filename": "data-00000-of-00001.arrow"}]}')
    got = {}
    for name in ("a.jsonl", "a.parquet", "shards", "saved"):
        res = import_file(tmp_path / name, recipe="rationales", store_path=tmp_path / "s.duckdb", filters=[])
        got[name] = [
            (r["seed_id"], r["payload"]["label"]) for r in records(tmp_path / "s.duckdb", res.run_id)
        ]
    assert got["a.jsonl"] == got["a.parquet"] == got["shards"] == got["saved"]
    assert sum(label == "positive" for _, label in got["a.jsonl"]) == 20


def _huge_line(p: Path) -> None:
    with p.open("wb") as f:
        f.write(b'{"question": "q", "rationale": "')
        f.write(b"x" * (65 * 2**20))
        f.write(b'"}\n')


BAD = {
    "missing_file": (lambda d: None, ["nope.jsonl"], "FILE nope.jsonl not found"),
    "not_a_dataset": (lambda d: (d / "empty").mkdir(), ["empty"], "is a folder but not a dataset"),
    "unknown_extension": (lambda d: (d / "x.csv").write_text("a,b\n"), ["x.csv"], "unsupported extension '.csv'"),
    "missing_column": (
        lambda d: (d / "x.jsonl").write_text('{"question": "q", "teacher_rationale": "r"}\n'),
        ["x.jsonl", "--map", "answer=teacher_answer", "--map", "rationale=teacher_rationale"],
        "no column 'teacher_answer' (field 'answer', --map); its first row's columns are 'question', 'teacher_rationale'. "
        "Name the column that holds it: --map answer=COLUMN",
    ),
    "default_column_missing": (
        lambda d: (d / "x.jsonl").write_text('{"question": "q", "teacher_rationale": "r"}\n'),
        ["x.jsonl"], "no column 'rationale' (field 'rationale', by default)",
    ),
    "gold_is_a_list": (
        lambda d: (d / "x.jsonl").write_text(
            '{"question": "q", "rationale": "r. The answer is 1."}\n{"question": "q2", "rationale": "r", "answer": [1]}\n'
        ),
        ["x.jsonl"], "x.jsonl, row 2: column 'answer' (field 'gold') holds a list; expected text or a number",
    ),
    "line_too_long": (lambda d: _huge_line(d / "x.jsonl"), ["x.jsonl"], "line 1: longer than 64 MiB"),
    "binary": (lambda d: (d / "x.jsonl").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"), ["x.jsonl"], "is not text"),
    "bad_json": (lambda d: (d / "x.jsonl").write_text('{"question": "q", "rationale": "r"}\n{oops\n'), ["x.jsonl"],
                 "line 2: not valid JSON"),
    "unknown_recipe": (lambda d: (d / "x.jsonl").write_text("{}\n"), ["x.jsonl", "--recipe", "rationale"],
                       "unknown recipe 'rationale' in --recipe. Did you mean 'rationales'? Installed recipes:"),
    "cannot_import": (lambda d: (d / "x.jsonl").write_text("{}\n"), ["x.jsonl", "--recipe", "prompt"],
                      "the prompt recipe cannot import rows"),
    "bad_map": (lambda d: (d / "x.jsonl").write_text("{}\n"), ["x.jsonl", "--map", "rationale"],
                "--map 'rationale': write it as FIELD=COLUMN"),
}  # fmt: skip


@needs_data
@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_one_message_and_stores_nothing(case, imported, tmp_path):
    _res, src = imported
    store = tmp_path / "s.duckdb"
    shutil.copy(src, store)
    before = row_counts(store)
    make, args, message = BAD[case]
    make(tmp_path)
    if "--recipe" not in args:
        args = [*args, "--recipe", "rationales"]
    out = factory_cli("import", *args, "--store", str(store), cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr and out.stdout == ""
    assert out.stderr.count("\n") == 1 and out.stderr.startswith("error: "), out.stderr
    assert message in out.stderr
    assert row_counts(store) == before


def test_failure_half_way_leaves_the_store_as_it_was(tmp_path, monkeypatch):
    """A file that reads differently the second time (or any error between batches) undoes the import."""
    import factory.importer as importer
    from factory.errors import ConfigError

    rows = [
        {"id": f"q{i}", "question": f"{i} + 1?", "rationale": f"The answer is {i + 1}."} for i in range(12)
    ]
    f = tmp_path / "a.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    store = tmp_path / "s.duckdb"
    import_file(f, recipe="rationales", store_path=store, name="first", filters=[])
    before = row_counts(store)
    monkeypatch.setattr(importer, "WRITE_ROWS", 5)
    real_rows = importer.Source.rows
    calls = []

    def rows_then_change(self):
        calls.append(1)
        for n, row in real_rows(self):
            yield n, ({**row, "id": "changed"} if len(calls) == 2 and n == 9 else row)

    monkeypatch.setattr(importer.Source, "rows", rows_then_change)
    with pytest.raises(ConfigError, match="changed while it was being imported"):
        import_file(f, recipe="rationales", store_path=store, name="second", filters=[])
    assert row_counts(store) == before  # two batches were committed, then deleted again
    monkeypatch.undo()
    again = import_file(f, recipe="rationales", store_path=store, name="second", filters=[])
    assert not again.already and again.records == 12


@needs_data
def test_config_names_store_filters_and_license(svamp200, tmp_path):
    (tmp_path / "imp.yaml").write_text(
        f"name: palm-svamp\nrecipe: rationales\nseeds: {svamp200}\nstore: st/s.duckdb\nfilters: [agreement]\n"
        "license: mit\n"
    )
    out = factory_cli("import", str(svamp200), "--recipe", "rationales", "--config", "imp.yaml", "--json",
                      *(x for m in SVAMP_MAP for x in ("--map", m)), "--teacher", "palm-540b", cwd=tmp_path)  # fmt: skip
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got["run_id"].startswith("palm-svamp-") and Path(got["store"]) == tmp_path / "st" / "s.duckdb"
    assert [s["filter"] for s in got["funnel"]["filters"]] == ["agreement"]
    recs = records(tmp_path / "st" / "s.duckdb", got["run_id"])
    assert {r["teacher"] for r in recs} == {"palm-540b"}
    from factory.store import Store

    with Store(tmp_path / "st" / "s.duckdb", read_only=True) as st:
        stored = st.run_config(got["run_id"])
    assert stored["license"] == "mit" and stored["import"]["sha256"] == got["sha256"]
    assert stored["import"]["teacher"] == "palm-540b"
    out = factory_cli("import", str(svamp200), "--recipe", "rationales", "--config", "imp.yaml", "--teacher",
                      "palm-540b", *(x for m in SVAMP_MAP for x in ("--map", m)), cwd=tmp_path)  # fmt: skip
    assert out.returncode == 0 and "already imported" in out.stdout and "nothing added" in out.stdout


@needs_data
def test_the_recipe_filters_join_a_given_filter_list_unless_opted_out(svamp200, tmp_path):
    """`--filters exact_dedup` still curates against gold (the recipe's own filter, as for a generated run and
    for `factory filter`); `--no-recipe-filters` leaves it out, in the import's pass and in later ones."""
    store = tmp_path / "s.duckdb"
    for name, extra in (("with", []), ("without", ["--no-recipe-filters"])):
        out = factory_cli("import", str(svamp200), "--recipe", "rationales", "--name", name, "--store", str(store),
                          "--map", "rationale=teacher_rationale", "--map", "answer=teacher_answer",
                          "--filters", "exact_dedup", "--json", *extra, cwd=tmp_path)  # fmt: skip
        assert out.returncode == 0, out.stderr
        run_id = json.loads(out.stdout)["run_id"]
        want = ["agreement", "exact_dedup"] if name == "with" else ["exact_dedup"]
        assert [s["filter"] for s in json.loads(out.stdout)["funnel"]["filters"]] == want
        again = factory_cli("filter", run_id, "--store", str(store), "--json", cwd=tmp_path)
        assert again.returncode == 0, again.stderr
        assert [s["filter"] for s in json.loads(again.stdout)["funnel"]["filters"]] == want
