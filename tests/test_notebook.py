"""factory.run from Python: seeds as a Dataset, frames, rows or a saved folder; a two-function recipe; a
second call of the same cell sends nothing; results as a Dataset, a polars frame and the funnel."""

from __future__ import annotations

import json
import os

import datasets
import polars as pl
import pytest

import factory
from factory.errors import ConfigError
from factory.testing.fault_server import FaultConfig, serve_in_thread
from recipes.functions import recipe

ROWS = [{"id": f"q{i}", "text": f"sentence number {i}", "topic": "t" if i % 2 else "u"} for i in range(5)]


def prompt(row):
    return [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": f"Simplify: {row['text']}"},
    ]


def parse(row, text):
    """Simplified sentences."""
    if row["id"] == "q0":
        return None  # rejected, with the reason kept
    return {"source": row["text"], "text": text.strip()}


SIMPLIFY = recipe("nb_simplify", prompt, parse, required=["text"])


@pytest.fixture(scope="module")
def server():
    with serve_in_thread(FaultConfig(latency=0.0)) as srv:
        yield srv


def _cfg(tmp_path, server, **more):
    return {"name": "nb", "recipe": SIMPLIFY, "teacher": f"openai:m@{server.base_url}",
            "store": str(tmp_path / "nb.duckdb"), **more}  # fmt: skip


def test_a_cell_run_twice_sends_nothing_the_second_time(tmp_path, server):
    ds = datasets.Dataset.from_list(ROWS)
    before = server.stats()["requests"]
    first = factory.run(_cfg(tmp_path, server), seeds=ds)
    assert first.status == "done" and first.progress.records == len(ROWS)
    assert server.stats()["requests"] - before == len(ROWS)
    again = factory.run(_cfg(tmp_path, server), seeds=ds)
    assert again.run_id == first.run_id and again.progress.requests_sent == 0
    assert server.stats()["requests"] - before == len(ROWS)

    got = again.to_dataset()
    assert isinstance(got, datasets.Dataset) and got.num_rows == len(ROWS) - 1  # q0 was rejected by parse
    assert sorted(got["source"]) == sorted(r["text"] for r in ROWS[1:])
    frame = again.to_polars()
    assert isinstance(frame, pl.DataFrame) and frame.height == len(ROWS) - 1
    everything = again.to_polars(include_rejected=True)
    assert everything.height == len(ROWS)
    funnel = again.funnel()
    assert funnel["generated"] == len(ROWS) and funnel["curated"] == len(ROWS) - 1
    pc = again.to_dataset("prompt_completion")
    assert set(pc.column_names) >= {"prompt", "completion"} and pc[0]["prompt"].startswith("Simplify: ")


def test_every_form_of_the_same_seeds_is_the_same_run(tmp_path, server):
    saved = tmp_path / "saved"
    datasets.Dataset.from_list(ROWS).save_to_disk(str(saved))
    forms = [
        ROWS,
        pl.DataFrame(ROWS),
        pl.DataFrame(ROWS).to_pandas(),
        str(saved),
        datasets.Dataset.from_list(ROWS),
    ]
    ids = {factory.run(_cfg(tmp_path, server), seeds=s).run_id for s in forms}
    assert len(ids) == 1
    files = list((tmp_path / "nb.duckdb.seeds").glob("*.parquet"))
    assert len(files) == 1  # written once, named by content


@pytest.mark.parametrize(
    ("seeds", "message"),
    [
        (
            datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS)}),
            "a DatasetDict .*seeds=ds\\['train'\\]",
        ),
        (42, "seeds= is a builtins.int; pass a datasets.Dataset"),
        ([], "no rows in them"),
        ([{"text": "a"}, {"text": 3}], "the rows do not make one table"),
    ],
)
def test_bad_seeds_are_one_message(tmp_path, server, seeds, message):
    with pytest.raises(ConfigError, match=message):
        factory.run(_cfg(tmp_path, server), seeds=seeds)
    assert not (tmp_path / "nb.duckdb").exists()


def test_a_folder_that_is_not_a_dataset(tmp_path, server):
    (tmp_path / "plain").mkdir()
    with pytest.raises(ConfigError, match="neither a dataset saved with save_to_disk"):
        factory.run(_cfg(tmp_path, server), seeds=tmp_path / "plain")
    with pytest.raises(ConfigError, match="no seeds"):
        factory.run(_cfg(tmp_path, server))
    with pytest.raises(ConfigError, match="config 'recipe': a int"):
        factory.run({**_cfg(tmp_path, server), "recipe": 3}, seeds=ROWS)


def test_the_cli_reads_a_notebook_store(tmp_path, server, cli):
    """Another process cannot load a recipe made in a notebook: status and a records export still work."""
    from conftest import cli_process

    done = factory.run(_cfg(tmp_path, server), seeds=ROWS)
    store = str(tmp_path / "nb.duckdb")
    out = cli_process("status", done.run_id, "--store", store, cwd=tmp_path)
    assert out.returncode == 0 and "nb_simplify" in out.stdout, out.stdout + out.stderr
    out = cli_process("export", done.run_id, "--store", store, "--out", str(tmp_path / "ex"), "--format", "jsonl",
                      cwd=tmp_path)  # fmt: skip
    assert out.returncode == 0, out.stderr
    lines = [ln for f in (tmp_path / "ex").rglob("*.jsonl") for ln in f.read_text().splitlines()]
    assert len(lines) == len(ROWS) - 1


def test_what_another_process_needs_the_notebook_recipe_for_is_one_message(tmp_path, server):
    """A shaped export and a judge that must score again need the recipe's code: exit 2, one message naming
    the run, the Python session and the fixes, nothing stored changed. A filter pass from stored scores (the
    recipe's default filters included, as the run applied them) and the report work without it."""
    import dataclasses

    import duckdb
    from conftest import cli_process

    judged = dataclasses.replace(SIMPLIFY, slug="nb_judged", default_filters=lambda p: ["exact_dedup"])
    done = factory.run({**_cfg(tmp_path, server), "recipe": judged, "filters": ["critic"]}, seeds=ROWS)
    assert done.status == "done" and [f["filter"] for f in done.funnel()["filters"]] == [
        "exact_dedup",
        "critic",
    ]
    store = str(tmp_path / "nb.duckdb")

    def passes() -> int:
        con = duckdb.connect(store, read_only=True)
        try:
            return int(con.execute("SELECT count(*) FROM filter_passes").fetchone()[0])
        finally:
            con.close()

    out = cli_process("export", done.run_id, "--store", store, "--out", str(tmp_path / "ex"), "--as", "messages",
                      cwd=tmp_path)  # fmt: skip
    assert out.returncode == 2 and out.stderr.count("error:") == 1 and "Traceback" not in out.stderr, (
        out.stderr
    )
    for part in (f"run {done.run_id}", "'nb_judged' was defined in a Python session", "--as messages",
                 "entry point named 'nb_judged'", "run.to_dataset('messages')"):  # fmt: skip
        assert part in out.stderr, out.stderr
    assert not (tmp_path / "ex").exists()

    out = cli_process(
        "filter", done.run_id, "--store", store, "--set", "critic.min_score=1", "--json", cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got["scored"] == {"exact_dedup": len(ROWS) - 1, "critic": 0}  # the judge's scores from the ledger
    before = passes()
    out = cli_process("filter", done.run_id, "--store", store, "--set", "critic.max_tokens=64", cwd=tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert f"run {done.run_id}" in out.stderr and "filter critic, which asks a teacher" in out.stderr
    assert "Python session" in out.stderr and passes() == before

    out = cli_process("report", done.run_id, "--store", store, "--out", str(tmp_path / "r.html"),
                      "--map-points", "0", cwd=tmp_path)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "nb_judged" in (tmp_path / "r.html").read_text()


def test_a_notebook_recipe_cannot_go_to_ray_workers(tmp_path, server):
    with pytest.raises(
        ConfigError, match="'nb_simplify' was defined in this Python session, and Ray workers"
    ):
        factory.run({**_cfg(tmp_path, server), "executor": {"kind": "ray"}}, seeds=ROWS)
    assert not (tmp_path / "nb.duckdb").exists()


def test_ctrl_c_stops_a_run_made_from_python(tmp_path):
    """SIGINT lands in the thread that waits; the run (on a worker thread) stops after the requests in flight
    and says so; running again finishes it."""
    import json
    import signal
    import subprocess
    import sys
    import time

    with serve_in_thread(FaultConfig(latency=1.5)) as slow:
        script = tmp_path / "cell.py"
        script.write_text(f"""
import json, factory
rows = [{{"id": f"s{{i}}", "text": f"t{{i}}"}} for i in range(40)]
cfg = {{"name": "cell", "recipe": "prompt", "store": {str(tmp_path / "c.duckdb")!r},
       "teacher": {{"spec": "openai:m@{slow.base_url}", "max_in_flight": 4}}}}
run = factory.run(cfg, seeds=rows)
print(json.dumps({{"status": run.status, "records": run.progress.records}}))
""")
        proc = subprocess.Popen(
            [sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        deadline = time.time() + 60
        while slow.stats()["requests"] < 4 and time.time() < deadline:
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err[-2000:]
        first = json.loads(out.strip().splitlines()[-1])
        assert first["status"] == "interrupted" and 0 < first["records"] < 40, (first, err[-1000:])
        assert "stopping; everything finished so far is kept" in err and "Traceback" not in err
        done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
        second = json.loads(done.stdout.strip().splitlines()[-1])
        assert second["status"] == "done" and first["records"] + second["records"] == 40
        assert (
            slow.stats()["requests"] == 40
        )  # the requests in flight at the stop were waited for, not re-sent


def test_a_ctrl_c_while_the_run_is_set_up_stops_it_before_its_first_request(tmp_path, server):
    """SIGINT that lands before the runner exists (here: while the teacher is being built) is kept: the run
    stops before sending anything, says so, and running again finishes it."""
    import subprocess
    import sys

    (tmp_path / "slow_start.py").write_text("""
import os, signal, time
from pathlib import Path
from factory.teachers import build_teacher

def Teacher(spec, model, options):
    flag = Path(os.environ["CTRL_C_ONCE"])
    if not flag.exists():  # the first run only: Ctrl+C while it is being set up
        flag.write_text("sent")
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(1.0)  # the waiting thread takes it meanwhile
    return build_teacher(f"openai:{model}", options)
""")
    script = tmp_path / "cell.py"
    script.write_text(f"""
import json, factory
rows = [{{"id": f"s{{i}}", "text": f"t{{i}}"}} for i in range(5)]
cfg = {{"name": "early", "recipe": "prompt", "store": {str(tmp_path / "e.duckdb")!r},
       "teacher": {{"spec": "{tmp_path / "slow_start.py"}:Teacher:m@{server.base_url}"}}}}
run = factory.run(cfg, seeds=rows)
print(json.dumps({{"status": run.status, "records": run.progress.records}}))
""")
    env = {**os.environ, "CTRL_C_ONCE": str(tmp_path / "flag")}
    before = server.stats()["requests"]
    first = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, env=env
    )
    assert first.returncode == 0 and (tmp_path / "flag").exists(), first.stderr[-2000:]
    assert json.loads(first.stdout.strip().splitlines()[-1]) == {"status": "interrupted", "records": 0}
    assert "stopping; everything finished so far is kept" in first.stderr and "Traceback" not in first.stderr
    assert server.stats()["requests"] == before  # stopped before its first request
    second = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, env=env
    )
    assert json.loads(second.stdout.strip().splitlines()[-1]) == {"status": "done", "records": 5}, (
        second.stderr
    )
    assert server.stats()["requests"] - before == 5
