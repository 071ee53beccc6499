"""Plugins: a package installed into a venv of its own adds a recipe, a filter and a teacher that `factory`
lists and runs end to end against a local server; the same objects named by reference in a config; the
errors a user meets on the way."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from conftest import write_config

from factory import plugins
from factory.errors import ConfigError
from factory.testing.fault_server import FaultConfig, serve_in_thread

PKG = Path(__file__).resolve().parent / "plugin_pkg"
SEEDS = [{"id": f"s{i}", "text": f"hello number {i}"} for i in range(6)]


@pytest.fixture(scope="module")
def server():
    with serve_in_thread(FaultConfig(latency=0.0)) as srv:
        yield srv


@pytest.fixture(scope="module")
def plugin_venv(tmp_path_factory) -> Path:
    """A venv that sees this project's environment and has the demo plugin package pip-installed."""
    tmp = tmp_path_factory.mktemp("plugin-venv")
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    site = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    parent = sysconfig.get_paths()["purelib"]  # this project's environment, with its own .pth files
    Path(site, "_project_env.pth").write_text(f"import site; site.addsitedir({parent!r})\n")
    src = shutil.copytree(PKG, tmp / "src")  # the build writes beside the sources
    out = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps", "--no-build-isolation",
         "--no-index", str(src)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    return py


def _factory(py: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([str(py), "-m", "factory.cli", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=300)  # fmt: skip


def _seeds(tmp: Path) -> Path:
    p = tmp / "seeds.jsonl"
    p.write_text("".join(json.dumps(s) + "\n" for s in SEEDS))
    return p


def test_installed_plugins_list_with_their_origin(plugin_venv, tmp_path):
    out = _factory(plugin_venv, "recipes", cwd=tmp_path)
    lines = out.stdout.splitlines()
    assert out.returncode == 1  # one plugin cannot be loaded; the others list
    assert any(ln.split()[:3] == ["shout", "factory-demo-plugin", "0.3.0"] for ln in lines), out.stdout
    assert any(ln.startswith("rationales") and "built-in" in ln for ln in lines)
    broken = next(ln for ln in lines if ln.startswith("broken"))
    assert "cannot be loaded" in broken and "factory_demo_plugin_missing_dependency" in broken
    shadowed = [ln for ln in lines if ln.startswith("prompt")]
    assert len(shadowed) == 2 and "shadowed by the built-in" in shadowed[1]
    assert "1 plugin(s) above cannot be loaded" in out.stderr and "Traceback" not in out.stderr

    out = _factory(plugin_venv, "filters", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert any(
        ln.split()[:3] == ["min_words", "factory-demo-plugin", "0.3.0"] for ln in out.stdout.splitlines()
    )
    out = _factory(plugin_venv, "teachers", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    relay = next(ln for ln in out.stdout.splitlines() if ln.startswith("relay"))
    assert "factory-demo-plugin 0.3.0" in relay and "Relays chat requests" in relay


def test_installed_plugins_run_end_to_end(plugin_venv, tmp_path, server):
    cfg = write_config(tmp_path, f"""
name: shouting
recipe: shout
seeds: {_seeds(tmp_path)}
store: {tmp_path / 'store.duckdb'}
teacher: {{spec: "relay:m", options: {{base_url: "{server.base_url}"}}}}
filters:
  - min_words: {{min_words: 2}}
""")  # fmt: skip
    before = server.stats()["requests"]
    out = _factory(plugin_venv, "run", str(cfg), "--json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert server.stats()["requests"] - before == len(SEEDS)
    out = _factory(plugin_venv, "export", "shouting", "--store", str(tmp_path / "store.duckdb"),
                   "--out", str(tmp_path / "out"), "--format", "jsonl", cwd=tmp_path)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [json.loads(x) for f in (tmp_path / "out").rglob("*.jsonl") for x in f.read_text().splitlines()]
    assert rows and all(r["text"] == r["text"].upper() and r["source"].startswith("hello") for r in rows)
    # the same command again: everything comes from the store
    out = _factory(plugin_venv, "run", str(cfg), "--json", cwd=tmp_path)
    assert out.returncode == 0 and server.stats()["requests"] - before == len(SEEDS)


def test_references_in_a_config(tmp_path, server, cli, monkeypatch):
    """module:OBJECT (the package importable, not installed) and path/to/file.py:OBJECT, relative to the
    config file, for all three kinds."""
    monkeypatch.syspath_prepend(str(PKG))
    plugin_file = tmp_path / "mine" / "shout_file.py"
    plugin_file.parent.mkdir()
    plugin_file.write_text("from factory_demo_plugin import SHOUT as LOUD, MIN_WORDS as WORDS, Relay\n")
    cfg = write_config(tmp_path, f"""
name: by-reference
recipe: mine/shout_file.py:LOUD
seeds: {_seeds(tmp_path)}
store: {tmp_path / 'store.duckdb'}
teacher: {{spec: "factory_demo_plugin:Relay:m", options: {{base_url: "{server.base_url}"}}}}
filters: [{{mine/shout_file.py:WORDS: {{min_words: 2}}}}]
""")  # fmt: skip
    before = server.stats()["requests"]
    out = cli("run", str(cfg), cwd=tmp_path / "mine")  # run from elsewhere: the path is the config's
    assert out.returncode == 0, out.stderr
    assert server.stats()["requests"] - before == len(SEEDS)
    out = cli("status", "by-reference", "--store", str(tmp_path / "store.duckdb"), cwd=tmp_path / "mine")
    assert out.returncode == 0 and "min_words" in out.stdout, out.stdout


@pytest.mark.parametrize(
    ("recipe", "message"),
    [
        ("shuot", "unknown recipe 'shuot' in field 'recipe'.*Installed recipes: boundary"),
        ("nowhere.py:RECIPE", "the file .*nowhere.py does not exist"),
        ("mine/:RECIPE", "the file .*mine is a folder"),
        ("no_such_package.recipes:RECIPE", "no module named 'no_such_package'"),
        ("bad.py:RECIPE", r"running .*bad.py failed: SyntaxError: .*\(bad.py, line 2\)"),
        ("raises.py:RECIPE", r"running .*raises.py failed: KeyError: 'HOME_DIR' \(raises.py, line 3\)"),
        ("ok.py:RECIPES", r"ok.py has no 'RECIPES' \(it defines .*RECIPE\)"),
        ("ok.py:NUMBER", "is a int, not a Recipe"),
    ],
)
def test_bad_references_are_one_message(tmp_path, cli, recipe, message):
    (tmp_path / "mine").mkdir()
    (tmp_path / "bad.py").write_text("x = 1\ndef (:\n")
    (tmp_path / "raises.py").write_text("import os\n\nRECIPE = os.environ['HOME_DIR']\n")
    (tmp_path / "ok.py").write_text("from recipes.prompt import RECIPE\nNUMBER = 3\n")
    cfg = write_config(
        tmp_path, f"name: r\nrecipe: {recipe}\nseeds: {_seeds(tmp_path)}\nstore: {tmp_path / 's.duckdb'}\n"
    )
    out = cli("run", str(cfg), cwd=tmp_path)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "Traceback" not in out.stderr
    import re

    assert re.search(message, out.stderr), out.stderr
    assert not (tmp_path / "s.duckdb").exists()  # nothing was written


def test_a_plugin_code_change_is_a_new_run(tmp_path, server, cli):
    """The run id of a recipe of one's own holds its code: an edit starts a new run."""
    src = "from recipes.functions import recipe\nRECIPE = recipe('echo', lambda r: r['text'], lambda r, t: {{'text': t{}}})\n"
    (tmp_path / "r.py").write_text(src.format(""))
    cfg = write_config(tmp_path, f"name: e\nrecipe: r.py:RECIPE\nseeds: {_seeds(tmp_path)}\nstore: {tmp_path / 's.duckdb'}\n"
                       f"teacher: openai:m@{server.base_url}\n")  # fmt: skip
    from factory.api import prepare

    first = prepare(cfg).run_id
    assert prepare(cfg).run_id == first
    plugins_loaded = [m for m in sys.modules if m.startswith("factory_plugin_")]
    for m in plugins_loaded:  # a new process would load the edited file afresh
        del sys.modules[m]
    (tmp_path / "r.py").write_text(src.format(".strip()"))
    assert prepare(cfg).run_id != first


def test_the_builtins_are_registered_as_plugins():
    for kind, names in [("recipe", {"rationales", "prompt", "relabel"}), ("filter", {"agreement", "diversity"}),
                        ("teacher", {"openai", "vllm", "embedded"})]:  # fmt: skip
        reg = plugins.registered(kind)
        assert names <= set(reg) and all(reg[n][0].builtin for n in names)
    with pytest.raises(ConfigError, match="Did you mean 'rationales'"):
        plugins.find("recipe", "rationale", where="field 'recipe'")


@pytest.mark.parametrize("kind", ["recipe", "filter"])
def test_new_scaffolds_a_package_whose_test_passes(tmp_path, cli, kind):
    out = cli("new", kind, "my_thing", "--dir", str(tmp_path), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    root = tmp_path / "my_thing"
    assert f'my_thing = "my_thing:{kind.upper()}"' in (root / "pyproject.toml").read_text()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"], cwd=root,
                         capture_output=True, text=True, timeout=300, env=env)  # fmt: skip
    assert res.returncode == 0 and "2 passed" in res.stdout, res.stdout[-3000:]
    again = cli("new", kind, "my_thing", "--dir", str(tmp_path), cwd=tmp_path)
    assert again.returncode == 2 and "already exists" in again.stderr
