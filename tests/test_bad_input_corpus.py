"""A corpus of malformed inputs, each through the real CLI against a store that holds a finished run.

Every case must exit with code 2 and print one message (argparse's usage lines aside) that names the
file, field or flag at fault; the store file, its WAL and its journal folder must be byte-for-byte as
before. Cases already in test_bad_input.py are not repeated here.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

SCRIPTED = "{spec: 'scripted:x', options: {default: 'A plain answer about it.'}}"


def factory_cli(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "factory.cli", *args],
        capture_output=True,
        text=True,
        errors="replace",
        cwd=cwd,
        timeout=timeout,
    )


def store_state(store: Path) -> dict[str, str | None]:
    """sha256 of the store file, its WAL and each journal segment (None when absent)."""

    def sha(p: Path) -> str | None:
        return hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None

    out = {"store": sha(store), "wal": sha(store.with_name(store.name + ".wal"))}
    journal = store.with_name(store.name + ".journal")
    for seg in sorted(journal.glob("*")) if journal.is_dir() else []:
        out[f"journal/{seg.name}"] = sha(seg)
    return out


def the_message(stderr: str) -> list[str]:
    """stderr's lines without argparse's usage block (``usage: ...`` and its indented continuation)."""
    lines, in_usage = [], False
    for line in stderr.splitlines():
        if line.startswith("usage:"):
            in_usage = True
            continue
        if in_usage and line.startswith(" "):
            continue
        in_usage = False
        if line.strip():
            lines.append(line)
    return lines


def _parquet(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


@dataclass(frozen=True)
class Case:
    """``files`` are written into the case's folder; ``{store}`` in them and in ``argv`` is the store path."""

    id: str
    argv: tuple[str, ...]
    expect: str  # a regular expression the one message must contain
    files: dict[str, str | bytes] = field(default_factory=dict)


def config(extra: str = "", *, seeds: str | None = "s.jsonl", drop: str = "") -> str:
    """A valid prompt-recipe config on the scripted teacher, plus ``extra`` lines, minus the ``drop`` line."""
    lines = ["name: bad", "recipe: prompt", "store: '{store}'", f"teacher: {SCRIPTED}"]
    if seeds is not None:
        lines.append(f"seeds: '{seeds}'")
    lines = [x for x in lines if not (drop and x.startswith(drop + ":"))]
    return "\n".join(lines) + "\n" + extra


OK_SEED = b'{"id": "a", "text": "apples"}\n'
RUN = ("run", "c.yaml")


def run_case(id: str, expect: str, cfg: str, seeds: dict[str, str | bytes] | None = None, **more) -> Case:
    files: dict[str, str | bytes] = {"c.yaml": cfg, **({"s.jsonl": OK_SEED} if seeds is None else seeds)}
    files.update(more)
    return Case(id, RUN, expect, files)


def seeds_case(id: str, expect: str, name: str, content: str | bytes) -> Case:
    return Case(id, RUN, expect, {"c.yaml": config(seeds=name), name: content})


EXPORT = ("export", "corpus", "--store", "{store}", "--out", "o")
FILTER = ("filter", "corpus", "--store", "{store}")

CASES = [
    # -- the run config --------------------------------------------------------------------------------
    run_case("config-empty-file", r"c\.yaml: the config must be a YAML mapping", ""),
    run_case("config-top-level-list", r"c\.yaml: the config must be a YAML mapping .* not list", "- a\n- b\n"),
    run_case("config-binary-file", r"c\.yaml: not valid UTF-8", bytes(range(256)) * 8),  # type: ignore[arg-type]
    run_case("config-tab-indent", r"c\.yaml: malformed YAML at line 2", "name: a\n\trecipe: prompt\n"),
    run_case("config-duplicate-key", r"c\.yaml: malformed YAML at line 6.*duplicate key 'name'", config("name: twice\n")),
    run_case("config-name-wrong-type", r"field 'name': Input should be a valid string", config().replace("name: bad", "name: 12")),
    run_case("config-name-bad-chars", r"field 'name': String should match pattern", config().replace("name: bad", "name: 'a b/c'")),
    run_case("config-missing-recipe", r"field 'recipe': Field required", config(drop="recipe")),
    run_case("config-missing-seeds", r"field 'seeds': Field required", config(seeds=None)),
    run_case("config-seeds-wrong-type", r"field 'seeds': Input should be a valid string", config("seeds: [a, b]\n", seeds=None)),
    run_case("config-unknown-key-did-you-mean", r"unknown field 'budgett'\. Did you mean 'budget'\?", config("budgett: {max_requests: 3}\n")),
    run_case("config-unknown-nested-key-did-you-mean", r"unknown field 'teacher\.max_inflight'\. Did you mean 'max_in_flight'\?",
             config().replace("options:", "max_inflight: 3, options:")),
    run_case("config-negative-max-requests", r"field 'budget\.max_requests': Input should be greater than or equal to 0", config("budget: {max_requests: -1}\n")),
    run_case("config-negative-max-output-tokens", r"field 'budget\.max_output_tokens': Input should be greater than or equal to 0",
             config("budget: {max_output_tokens: -500}\n")),
    run_case("config-budget-not-a-number", r"field 'budget\.max_requests': Input should be a valid integer", config("budget: {max_requests: lots}\n")),
    run_case("config-teacher-spec-without-model", r"teacher spec 'openai:' names no model", config().replace("'scripted:x'", "'openai:'")),
    run_case("config-teacher-bad-base-url", r"teacher base URL 'ftp://x'", config().replace(SCRIPTED, "{spec: 'openai:m', base_url: 'ftp://x'}")),
    run_case("config-teacher-url-port-out-of-range", r"teacher base URL 'http://127\.0\.0\.1:99999/v1': malformed .*teacher\.spec",
             config().replace(SCRIPTED, "'openai:m@http://127.0.0.1:99999/v1'")),
    run_case("config-teacher-url-credentials", r"teacher base URL 'http://\*\*\*@127\.0\.0\.1:9/v1': carries credentials.*api_key_env",
             config().replace(SCRIPTED, "'openai:m@http://u:secret@127.0.0.1:9/v1'")),
    run_case("config-teacher-url-chat-completions", r"ends in /chat/completions",
             config().replace(SCRIPTED, "{spec: 'openai:m', base_url: 'http://127.0.0.1:9/v1/chat/completions'}")),
    run_case("config-teacher-unknown-option", r"unknown option\(s\) for the openai teacher: backof_base_s",
             config().replace(SCRIPTED, "{spec: 'openai:m@http://127.0.0.1:9/v1', options: {backof_base_s: 1}}")),
    run_case("config-teacher-zero-in-flight", r"field 'teacher\.max_in_flight': Input should be greater than or equal to 1",
             config().replace("options:", "max_in_flight: 0, options:")),
    run_case("config-teacher-url-on-local-backend", r"base_url and api_key_env apply to the openai backend only",
             config().replace("options:", "base_url: 'http://127.0.0.1:9/v1', options:")),
    run_case("config-role-not-snake-case", r"role 'Judge': use a snake_case name", config("teachers: {Judge: embedded}\n")),
    run_case("config-commit-interval-zero", r"field 'runner\.commit_interval_s': Input should be greater than 0", config("runner: {commit_interval_s: 0}\n")),
    run_case("config-export-format-unknown", r"field 'export\.format': Input should be 'hf', 'parquet' or 'jsonl'", config("export: {format: xml}\n")),
    run_case("config-export-splits-sum", r"field 'export\.splits'.*sum to 1", config("export: {splits: {train: 0.5}}\n")),
    run_case("config-export-shape-recipe-lacks", r"export\.shape 'text_label': the prompt recipe's records do not come in that shape",
             config("export: {shape: text_label}\n")),
    run_case("config-param-wrong-type", r"params\.n: Input should be a valid integer", config("params: {n: many}\n")),
    run_case("config-param-unknown-did-you-mean", r"unknown field 'temprature' for recipe 'prompt'\. Did you mean 'temperature'\?",
             config("params: {temprature: 0.5}\n")),
    run_case("config-param-undefined-teacher-role", r"asks for teacher role 'judge'.*teachers:", config("params: {teacher: judge}\n")),
    run_case("config-store-is-a-folder", r"the store path .* is a folder", config().replace("store: '{store}'", "store: '.'")),
    run_case("config-store-under-a-file", r"the store path .*f\.txt/x\.duckdb: .*f\.txt is a file, not a folder",
             config().replace("store: '{store}'", "store: 'f.txt/x.duckdb'"), **{"f.txt": "a file"}),
    run_case("config-yaml-alias-bomb", r"c\.yaml: aliases \(\*e at line \d+.*expand the document by more than 100,000 values",
             config("bomb: {a: &a [x, x, x, x, x, x, x, x, x], " + ", ".join(
                 f"{k}: &{k} [" + ", ".join([f"*{p}"] * 9) + "]" for p, k in zip("abcdefgh", "bcdefghi", strict=True)) + "}\n")),
    run_case("config-nested-50000-deep", r"c\.yaml: nested more than 100 levels deep", config("params: " + "[" * 50_000 + "]" * 50_000 + "\n")),
    run_case("config-nested-block-style", r"c\.yaml: nested more than 100 levels deep at line 7", config("params:\n  " + "- " * 50_000 + "x\n")),
    run_case("config-alias-cycle", r"c\.yaml: alias \*p at line 6.* refers to a node that contains it", config("params: &p {n: *p}\n")),
    # -- filters in the config -------------------------------------------------------------------------
    run_case("filter-unknown-did-you-mean", r"unknown filter 'heuristic' in filters\[0\]\. Did you mean 'heuristics'\?", config("filters: [heuristic]\n")),
    run_case("filter-unknown-param-did-you-mean", r"filters\[0\] heuristics: unknown param 'min_char'.*Did you mean 'min_chars'\?",
             config("filters: [{heuristics: {min_char: 3}}]\n")),
    run_case("filter-param-negative", r"filters\[0\] heuristics\.min_chars: Input should be greater than or equal to 0",
             config("filters: [{heuristics: {min_chars: -3}}]\n")),
    run_case("filter-params-not-a-mapping", r"filters\[0\]: the params of 'heuristics' must be a mapping", config("filters: [{heuristics: 5}]\n")),
    run_case("filter-eval-file-missing", r"decontaminate.*nope\.jsonl", config("filters: [{decontaminate: {eval_files: [nope.jsonl]}}]\n")),
    # -- prompt templates ------------------------------------------------------------------------------
    run_case("template-syntax-error", r"params: template inline: Jinja syntax error at line 1", config("params: {template: 'Say {{ text '}\n")),
    run_case("template-file-syntax-error", r"params: template t\.j2: Jinja syntax error at line 2", config("params: {template_file: t.j2}\n"),
             **{"t.j2": "About {{ text }}\n{% for x in %}"}),
    run_case("template-file-missing", r"params: template file 'nope\.j2' not found", config("params: {template_file: nope.j2}\n")),
    run_case("template-file-is-a-folder", r"params: template file 'sub' not found", config("params: {template_file: sub}\n"), **{"sub/x": ""}),
    run_case("template-file-escapes-project", r"params: template file '\.\./\.\./\.\./\.\./\.\./\.\./no/such\.j2' not found",
             config("params: {template_file: ../../../../../../no/such.j2}\n")),
    run_case("template-file-invalid-utf8", r"template file .*t\.j2: not valid UTF-8", config("params: {template_file: t.j2}\n"),
             **{"t.j2": b"Say \xff {{ text }}"}),
    run_case("template-file-unknown-variable", r"seed 'a' does not fit the prompt template: 'topic' is undefined", config("params: {template_file: t.j2}\n"),
             **{"t.j2": "{% if text %}About {{ topic }}{% endif %}"}),
    run_case("template-unsafe-attribute", r"does not fit the prompt template: access to attribute '__class__'",
             config("params: {template: '{{ text.__class__.__mro__ }}'}\n")),
    # -- seed files ------------------------------------------------------------------------------------
    seeds_case("jsonl-line-not-an-object", r"s\.jsonl, line 2: expected a JSON object, got list", "s.jsonl", OK_SEED + b'["a"]\n'),
    seeds_case("jsonl-huge-line", r"s\.jsonl, line 1: not valid JSON", "s.jsonl", b'{"text": "' + b"x" * 20_000_000 + b"\n"),
    seeds_case("jsonl-binary-garbage", r"s\.jsonl: invalid UTF-8", "s.jsonl", bytes(range(128, 256)) * 64),
    seeds_case("jsonl-utf16", r"s\.jsonl: invalid UTF-8 at line 1", "s.jsonl", '{"text": "apples"}\n'.encode("utf-16")),
    seeds_case("jsonl-duplicate-ids", r"s\.jsonl, row 2: id 'a' repeats row 1", "s.jsonl", OK_SEED * 2),
    seeds_case("jsonl-null-required-field", r"s\.jsonl, row 1: missing required field\(s\) 'text'", "s.jsonl", b'{"text": null}\n'),
    seeds_case("json-object-not-list", r"s\.json: expected a JSON list of objects", "s.json", b'{"text": "a"}'),
    seeds_case("json-empty-list", r"s\.json holds no rows", "s.json", b"[]"),
    seeds_case("json-invalid", r"s\.json: not valid JSON", "s.json", b'[{"text": }]'),
    seeds_case("csv-empty-file", r"s\.csv holds no rows", "s.csv", b""),
    seeds_case("csv-header-only", r"s\.csv holds no rows", "s.csv", b"id,text\n"),
    seeds_case("csv-missing-column", r"s\.csv, row 1: missing required field\(s\) 'text'", "s.csv", b"id,topic\n1,a\n"),
    seeds_case("csv-invalid-utf8", r"s\.csv: invalid UTF-8 at line 2", "s.csv", b"id,text\n1,caf\xe9\n"),
    seeds_case("csv-extra-values", r"s\.csv, line 3: more values than the 2 header columns", "s.csv", b"id,text\n1,a\n2,b,c\n"),
    seeds_case("parquet-not-parquet", r"s\.parquet: cannot read Parquet", "s.parquet", b"PAR1" + bytes(range(256)) * 16),
    seeds_case("parquet-zero-bytes", r"s\.parquet: cannot read Parquet", "s.parquet", b""),
    seeds_case("parquet-no-rows", r"s\.parquet holds no rows", "s.parquet", _parquet(pa.table({"text": pa.array([], pa.string())}))),
    seeds_case("parquet-missing-column", r"s\.parquet, row 1: missing required field\(s\) 'text'", "s.parquet", _parquet(pa.table({"topic": ["a"]}))),
    seeds_case("parquet-binary-column", r"s\.parquet, row 1: .*not JSON serializable: bytes", "s.parquet",
               _parquet(pa.table({"text": ["a"], "blob": [b"\xff\x00"]}))),
    seeds_case("seeds-unsupported-extension", r"s\.txt: unsupported extension '\.txt'", "s.txt", b"apples\n"),
    seeds_case("seeds-gzip", r"s\.jsonl\.gz: unsupported extension '\.gz'", "s.jsonl.gz", gzip.compress(OK_SEED)),
    run_case("seeds-path-is-a-folder", r"seeds .*sub' is a folder but neither a dataset saved with save_to_disk", config(seeds="sub"), seeds={"sub/x": ""}),
    run_case("seeds-path-escapes-project", r"seed file .*/no/such\.jsonl not found", config(seeds="../../../../../../no/such.jsonl"), seeds={}),
    # -- flags and exports -----------------------------------------------------------------------------
    Case("export-unknown-run", ("export", "zzz", "--store", "{store}", "--out", "o"), r"no run 'zzz' in .*; known runs: corpus-"),
    Case("export-as-shape-recipe-lacks", (*EXPORT, "--as", "text_label"), r"--as text_label: the prompt recipe's records do not come in that shape"),
    Case("export-as-unknown", (*EXPORT, "--as", "chatml"), r"--as chatml: the prompt recipe's records do not come in that shape; it offers records"),
    Case("export-format-unknown", (*EXPORT, "--format", "csv"), r"argument --format: invalid choice: 'csv'"),
    Case("export-stage-unknown", (*EXPORT, "--stage", "draft"), r"--stage 'draft': the prompt recipe's stages are completion"),
    Case("export-stage-with-as", (*EXPORT, "--as", "messages", "--stage", "all"), r"--as messages is built from the 'completion' stage; drop --stage"),
    Case("export-max-shard-zero", (*EXPORT, "--max-shard-mb", "0"), r"--max-shard-mb must be positive"),
    Case("export-max-shard-not-a-number", (*EXPORT, "--max-shard-mb", "big"), r"argument --max-shard-mb: invalid float value: 'big'"),
    Case("export-out-not-empty", EXPORT, r"--out .*/o exists and is not empty; pass --overwrite", {"o/keep.txt": "mine"}),
    Case("export-out-is-a-file", EXPORT, r"--out .*/o is a file; give a folder", {"o": "a file"}),
    Case("export-out-under-a-file", (*EXPORT[:-1], "f.txt/o"), r"--out .*/f\.txt/o: .*/f\.txt is a file, not a folder", {"f.txt": "a file"}),
    Case("report-out-under-a-file", ("report", "--store", "{store}", "--out", "f.txt/r.html"), r"--out .*/f\.txt: .*f\.txt is a file, not a folder",
         {"f.txt": "a file"}),
    Case("report-out-is-a-folder", ("report", "--store", "{store}", "--out", "sub"), r"--out .*/sub is a folder", {"sub/x": ""}),
    Case("run-store-flag-under-a-file", ("run", "c.yaml", "--store", "f.txt/x.duckdb"), r"the store path f\.txt/x\.duckdb: .*f\.txt is a file",
         {"c.yaml": config(), "s.jsonl": OK_SEED, "f.txt": "a file"}),
    Case("filter-set-malformed-yaml", (*FILTER, "--set", "heuristics.min_chars=[1"), r"--set 'heuristics\.min_chars=\[1': the value is not valid YAML"),
    Case("filter-set-deep-yaml", (*FILTER, "--set", "heuristics.min_chars=" + "[" * 5000), r"--set 'heuristics\.min_chars=\[\[\[.*nested more than 100 levels"),
    Case("doctor-store-missing", ("doctor", "--store", "nope.duckdb"), r"--store: no store at nope\.duckdb"),
    Case("export-store-missing", ("export", "--store", "nope.duckdb", "--out", "o"), r"--store: no store at nope\.duckdb"),
    Case("status-store-missing", ("status", "--store", "nope.duckdb"), r"--store: no store at nope\.duckdb"),
    Case("filter-set-bad-value", (*FILTER, "--set", "heuristics.min_chars=abc"), r"heuristics\.min_chars: Input should be a valid integer"),
    Case("filter-set-negative", (*FILTER, "--set", "heuristics.min_chars=-4"), r"heuristics\.min_chars: Input should be greater than or equal to 0"),
    Case("filter-set-unknown-filter", (*FILTER, "--set", "agreement.min_vote_share=1"), r"--set 'agreement\.min_vote_share=1': filter 'agreement' is not in this run's filters \(heuristics\)"),
    Case("filter-set-unknown-param", (*FILTER, "--set", "heuristics.min_char=4"), r"unknown param 'min_char' for filter 'heuristics'\. Did you mean 'min_chars'\?"),
    Case("filter-set-no-dot", (*FILTER, "--set", "heuristics=4"), r"--set 'heuristics=4': write it as FILTER\.PARAM=VALUE"),
    Case("filter-config-missing", (*FILTER, "--config", "nope.yaml"), r"config file nope\.yaml not found"),
    Case("filter-config-without-filters", (*FILTER, "--config", "c.yaml"), r"c\.yaml: filters: no filters to apply", {"c.yaml": config(), "s.jsonl": OK_SEED}),
    Case("why-unknown-record", ("why", "0000ffff", "--store", "{store}"), r"no record with id '0000ffff'"),
    Case("run-unknown-flag", ("run", "c.yaml", "--fast"), r"unrecognized arguments: --fast"),
    Case("unknown-command", ("frobnicate",), r"argument COMMAND: invalid choice: 'frobnicate'"),
    Case("push-card-alias-bomb", ("push", "o", "--repo-id", "me/data"), r"o/README\.md: the dataset card's YAML header: aliases .*100,000 values",
         {"o/README.md": "---\nlicense: mit\na: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
             f"{k}: &{k} [{', '.join([f'*{p}'] * 9)}]\n" for p, k in zip("abcdefgh", "bcdefghi", strict=True)) + "---\n# data\n",
          "o/data/train-00000-of-00001.parquet": _parquet(pa.table({"text": ["a"]}))}),
    Case("push-bad-repo-id", ("push", "o", "--repo-id", "no-slash"), r"--repo-id 'no-slash' is not a Hub dataset id", {"o/x.txt": "x"}),
]  # fmt: skip


@pytest.fixture(scope="module")
def corpus_store(tmp_path_factory) -> Path:
    """A store holding one finished run (`corpus`, prompt recipe, a heuristics filter), made by the CLI."""
    d = tmp_path_factory.mktemp("corpus")
    (d / "seeds.jsonl").write_text(
        "".join(orjson.dumps({"id": f"s{i}", "text": f"topic {i}"}).decode() + "\n" for i in range(5))
    )
    (d / "corpus.yaml").write_text(
        f"name: corpus\nrecipe: prompt\nseeds: seeds.jsonl\nstore: store.duckdb\nteacher: {SCRIPTED}\n"
        "params: {template: 'Write about {{ text }}'}\nfilters: [heuristics]\n"
    )
    out = factory_cli("run", "corpus.yaml", cwd=d)
    assert out.returncode == 0, out.stderr
    return d / "store.duckdb"


def test_the_corpus_is_large_and_ids_are_unique():
    assert len(CASES) >= 40
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_clear_message_and_exit_2(case: Case, tmp_path: Path, corpus_store: Path):
    for name, content in case.files.items():
        p = tmp_path / name
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            p.write_text(content.replace("{store}", str(corpus_store)), encoding="utf-8")
        else:
            p.write_bytes(content)
    argv = [a.replace("{store}", str(corpus_store)) for a in case.argv]
    before = store_state(corpus_store)

    out = factory_cli(*argv, cwd=tmp_path)

    assert out.returncode == 2, (out.returncode, out.stdout[-2000:], out.stderr[-2000:])
    assert "Traceback" not in out.stderr, out.stderr
    message = the_message(out.stderr)
    assert len(message) == 1, out.stderr
    assert re.match(r"(error: |factory( \w+)?: error: )", message[0]), message[0]
    assert re.search(case.expect, message[0]), message[0]
    assert len(message[0]) < 1000  # names the problem; never echoes a huge input back
    assert store_state(corpus_store) == before
    for made in ("data", "out", "store.duckdb"):  # nothing was created beside the inputs either
        assert not (tmp_path / made).exists(), made
    if case.argv[0] == "export":
        assert not [p for p in tmp_path.glob(".o.*")], "an export left its temporary folder"


def test_template_syntax_in_a_seed_is_data_not_code(tmp_path: Path):
    """Not bad input: a seed holding Jinja syntax is sent as the literal text and never evaluated."""
    literal = "{{ 7*7 }} {% for x in range(10**9) %}x{% endfor %} {{ ''.__class__ }}"
    (tmp_path / "s.jsonl").write_bytes(orjson.dumps({"id": "t", "text": literal}) + b"\n")
    cfg = config("params: {template: 'Topic: {{ text }}'}\n").replace("{store}", str(tmp_path / "s.duckdb"))
    (tmp_path / "c.yaml").write_text(cfg)
    out = factory_cli("run", "c.yaml", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    import duckdb

    con = duckdb.connect(str(tmp_path / "s.duckdb"), read_only=True)
    try:
        (payload,) = con.execute("SELECT payload FROM records").fetchone()
    finally:
        con.close()
    assert orjson.loads(payload)["prompt"] == f"Topic: {literal}"
