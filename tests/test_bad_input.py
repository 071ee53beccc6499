"""Bad input: one clear message naming the file/field and the fix, exit code 2, and no store change."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SEEDS


def factory_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "factory.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=120
    )


def _digest(p: Path) -> str | None:
    return hashlib.sha256(p.read_bytes()).hexdigest() if p.exists() else None


@pytest.fixture
def store_with_run(tmp_path):
    """A store holding one finished run, so 'unchanged' is checked against real content."""
    import asyncio

    from factory import api
    from factory.teachers.scripted import ScriptedTeacher

    seeds = tmp_path / "ok.jsonl"
    seeds.write_text("\n".join(SEEDS.read_text().splitlines()[:2]) + "\n")
    cfg = tmp_path / "ok.yaml"
    cfg.write_text(
        "name: ok\nrecipe: rationales\ncuration: {recipe_filters: false}\nseeds: ok.jsonl\nstore: store.duckdb\nteacher: scripted:x\n"
    )
    t = ScriptedTeacher("scripted:x", "x", {"default": "x. The answer is 1."})
    asyncio.run(api.run_async(api.prepare(cfg), teacher=t))
    return tmp_path / "store.duckdb"


CASES = {
    "malformed_yaml": ("name: a\nrecipe: [rationales\n", None, "malformed YAML at line"),
    "unknown_recipe": ("name: a\nrecipe: rationale\nseeds: s.jsonl\n", '{"question": "q"}\n', "Did you mean 'rationales'"),
    "unknown_teacher": (
        "name: a\nrecipe: rationales\nseeds: s.jsonl\nteacher: opnai:gpt\n", '{"question": "q"}\n', "Did you mean 'openai'",
    ),
    "unknown_field": ("name: a\nrecipe: rationales\nseeds: s.jsonl\nteachr: embedded\n", '{"question": "q"}\n', "unknown field 'teachr'"),
    "unknown_param": ("name: a\nrecipe: rationales\nseeds: s.jsonl\nparams: {kk: 2}\n", '{"question": "q"}\n', "unknown field 'kk'"),
    "bad_param_value": ("name: a\nrecipe: rationales\nseeds: s.jsonl\nparams: {k: 0}\n", '{"question": "q"}\n', "params.k"),
    "missing_seed_file": ("name: a\nrecipe: rationales\nseeds: nope.jsonl\n", None, "nope.jsonl not found"),
    "missing_field": ("name: a\nrecipe: rationales\nseeds: s.jsonl\n", '{"question": "q"}\n{"answer": "3"}\n', "row 2: missing required field(s) 'question'"),
    "invalid_utf8": ("name: a\nrecipe: rationales\nseeds: s.jsonl\n", b'{"question": "caf\xe9"}\n', "invalid UTF-8 at line 1"),
    "empty_seeds": ("name: a\nrecipe: rationales\nseeds: s.jsonl\n", "\n", "holds no rows"),
    "bad_json_line": ("name: a\nrecipe: rationales\nseeds: s.jsonl\n", '{"question": "q"}\n{oops\n', "line 2: not valid JSON"),
    "template_field": (
        "name: a\nrecipe: prompt\nseeds: s.jsonl\nparams: {template: 'Say {{ topic }}'}\n", '{"text": "q"}\n',
        "does not fit the prompt template: 'topic' is undefined",
    ),
    "missing_api_key": (
        "name: a\nrecipe: rationales\nseeds: s.jsonl\nteacher: {spec: 'openai:m@http://127.0.0.1:9/v1', api_key_env: FACTORY_TEST_NO_SUCH_KEY}\n",
        '{"question": "q"}\n', "FACTORY_TEST_NO_SUCH_KEY",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input(case, tmp_path, store_with_run):
    config, seeds, expected = CASES[case]
    cfg = tmp_path / f"{case}.yaml"
    cfg.write_text(config + f"store: {store_with_run}\n" if "recipe: [" not in config else config)
    if seeds is not None:
        (tmp_path / "s.jsonl").write_bytes(seeds if isinstance(seeds, bytes) else seeds.encode())
    before = _digest(store_with_run)
    out = factory_cli("run", str(cfg), cwd=tmp_path)
    assert out.returncode == 2, (out.stdout, out.stderr)
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr
    assert expected in lines[0]
    assert "Traceback" not in out.stderr
    assert _digest(store_with_run) == before
    assert not (tmp_path / "data").exists()  # no default store was created either


def test_missing_config_file(tmp_path):
    out = factory_cli("run", "nope.yaml", cwd=tmp_path)
    assert out.returncode == 2 and "config file nope.yaml not found" in out.stderr


@pytest.mark.parametrize("command", ["status", "export", "report", "filter", "cache-ls"])
def test_unknown_run(command, tmp_path, store_with_run):
    """Exit 2 naming the store searched, the runs it holds and how to look elsewhere; nothing changes."""
    before = _digest(store_with_run)
    args = ["cache", "ls", "--run", "zzz"] if command == "cache-ls" else [command, "zzz"]
    out = factory_cli(*args, "--store", str(store_with_run), cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: no run 'zzz' in {store_with_run}")
    assert (
        "known runs: ok-" in lines[0] and "(ok, updated " in lines[0] and "--config CONFIG.yaml" in lines[0]
    )
    assert _digest(store_with_run) == before and not (tmp_path / "out").exists()


def test_bad_cli_flag(tmp_path):
    out = factory_cli("export", "--format", "xml", cwd=tmp_path)
    assert out.returncode == 2 and "invalid choice: 'xml'" in out.stderr


# -- YAML that would exhaust memory or the stack ---------------------------------------------------------
BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{k}: &{k} [{', '.join([f'*{p}'] * 9)}]\n" for p, k in zip("abcdefgh", "bcdefghi", strict=True)
)  # 9**9 (387 million) values once expanded
DEEP = "x: " + "[" * 50_000 + "]" * 50_000 + "\n"


def _loaders(tmp_path: Path):
    """Every place a user's YAML file is loaded, each as (name, function of a path)."""
    from factory.config import load_config
    from recipes.commonsense import load_relations
    from recipes.relabel import load_labels
    from trainers.config import load_train_config

    return [("run config", load_config), ("training config", load_train_config),
            ("labels file", load_labels), ("relations file", load_relations)]  # fmt: skip


@pytest.mark.parametrize("doc", ["bomb", "deep", "cycle"])
def test_every_yaml_loader_refuses_bombs_and_deep_nesting_cheaply(tmp_path, doc):
    import tracemalloc

    from factory.errors import ConfigError

    text = {"bomb": BOMB, "deep": DEEP, "cycle": "a: &a [1, *a]\n"}[doc]
    expect = {"bomb": "expand the document by more than 100,000", "deep": "nested more than 100 levels deep",
              "cycle": "refers to a node that contains it"}[doc]  # fmt: skip
    for name, load in _loaders(tmp_path):
        path = tmp_path / f"{name.replace(' ', '_')}.yaml"
        path.write_text(text)
        tracemalloc.start()
        try:
            with pytest.raises(ConfigError) as err:
                load(path)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert str(path) in str(err.value) and expect in str(err.value), (name, str(err.value))
        assert peak < 8 * 2**20, (name, peak)  # a few MB at most: the document is never expanded


def test_yaml_aliases_within_the_limit_still_work(tmp_path):
    from factory.yamlsafe import load_yaml

    data = load_yaml(
        "base: &b {temperature: 0.7, top_p: 0.9}\none: *b\ntwo: {<<: *b, top_p: 1.0}\n", "x.yaml"
    )
    assert data["one"] == {"temperature": 0.7, "top_p": 0.9} and data["two"] == {
        "temperature": 0.7,
        "top_p": 1.0,
    }
    nested = "x: " + "[" * 99 + "]" * 99 + "\n"  # the mapping and 99 lists: 100 levels, the limit
    assert load_yaml(nested, "x.yaml")["x"] is not None


# -- exit codes ----------------------------------------------------------------------------------------
def test_the_readme_exit_code_table_matches_the_code():
    """Every FactoryError class is named in the README's exit-code table in the row of its exit_code, and
    every row's code is one the CLI really returns."""
    import re

    from factory import cli, errors, hub

    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    section = readme.split("### Exit codes", 1)[1].split("\n## ", 1)[0]
    cells = [[c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]] for line in section.splitlines()]
    rows = {int(c[0]): c[2] for c in cells if len(c) == 3 and c[0].isdigit()}
    classes: dict[str, int] = {}
    todo = [errors.FactoryError]
    while todo:
        c = todo.pop()
        classes[c.__name__] = c.exit_code
        todo.extend(c.__subclasses__())
    assert "PushFailed" in classes and hub.PushFailed.exit_code == 6
    for name, code in classes.items():
        assert code in rows, f"exit code {code} of {name} is not in the README's table"
        assert f"`{name}`" in rows[code], f"{name} (exit {code}) is not named in the README's row for {code}"
    named = set(re.findall(r"`(\w+)`", "".join(rows.values())))
    assert named <= set(classes), named - set(classes)  # no class the code does not have
    assert {0, cli.EXIT_INTERRUPTED, cli.EXIT_CLOSED_PIPE, 2} <= set(rows)
    assert set(rows) == {0, cli.EXIT_INTERRUPTED, cli.EXIT_CLOSED_PIPE, *classes.values()}


def test_a_run_prefix_of_several_runs_is_refused(tmp_path, store_with_run):
    """`export ok` once exported `ok-v2-…`: an exact name wins, and a prefix of two runs is exit 2 naming both."""
    import asyncio

    from factory import api
    from factory.teachers.scripted import ScriptedTeacher

    cfg = tmp_path / "ok-v2.yaml"
    cfg.write_text((tmp_path / "ok.yaml").read_text().replace("name: ok\n", "name: ok-v2\n"))
    asyncio.run(
        api.run_async(
            api.prepare(cfg), teacher=ScriptedTeacher("scripted:x", "x", {"default": "y. The answer is 2."})
        )
    )
    store = str(store_with_run)
    out = factory_cli("export", "ok", "--store", store, "--out", "o", "--format", "jsonl", cwd=tmp_path)
    assert out.returncode == 0 and " of ok-" in out.stdout and "ok-v2" not in out.stdout, out.stderr
    before = _digest(store_with_run)
    out = factory_cli("export", "ok-", "--store", store, "--out", "o2", cwd=tmp_path)
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert out.returncode == 2 and len(lines) == 1 and "RUN 'ok-' is ambiguous" in lines[0]
    assert "(ok, updated " in lines[0] and "(ok-v2, updated " in lines[0] and "Traceback" not in out.stderr
    assert _digest(store_with_run) == before and not (tmp_path / "o2").exists()
