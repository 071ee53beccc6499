import asyncio
import gc

from conftest import write_config

from factory import api
from factory.teachers.scripted import ScriptedTeacher


def test_run_restores_the_collector_settings(tmp_path, seeds_file):
    cfg = write_config(
        tmp_path,
        f"name: g\nrecipe: rationales\nseeds: {seeds_file}\nstore: {tmp_path / 's.duckdb'}\nteacher: scripted:x\n"
        "params: {k: 2}\n",
    )
    seen = []
    t = ScriptedTeacher(
        "scripted:x", "x", {"fn": lambda r: seen.append(gc.get_threshold()) or "The answer is 28."}
    )
    before = gc.get_threshold()
    res = asyncio.run(api.run_async(api.prepare(cfg), teacher=t))
    assert res.status == "done" and seen
    assert all(th[0] >= 20_000 for th in seen)  # fewer young collections while the run went on
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0
