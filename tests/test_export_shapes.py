"""Training formats, shards, splits and the --out rules of `factory export`, loaded back with `datasets`."""

import asyncio
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import write_config
from test_relabel import _roles_config, _teachers

from factory import api
from factory.export import export_run
from factory.store import Store
from factory.teachers.scripted import ScriptedTeacher


def _gold_answer(seeds_file):
    """A teacher that gives each question's gold answer (so every sample is trusted and curated)."""
    gold = {(r := json.loads(x))["question"]: r["answer"] for x in seeds_file.read_text().splitlines()}

    def fn(r):
        question = r.messages[-1]["content"].rsplit("Question: ", 1)[1].split("\n")[0].strip()
        return f"Add them up, case {r.sample_index}. The answer is {gold[question]}."

    return fn


def _rationales(tmp_path, seeds_file, extra="", name="ex", answer=None):
    cfg = write_config(
        tmp_path,
        f"name: {name}\nrecipe: rationales\nseeds: {seeds_file}\nstore: {tmp_path / 's.duckdb'}\n"
        f"teacher: scripted:x\nparams: {{k: 3}}\n{extra}",
        name=f"{name}.yaml",
    )
    fn = answer or _gold_answer(seeds_file)
    return asyncio.run(
        api.run_async(api.prepare(cfg), teacher=ScriptedTeacher("scripted:x", "x", {"fn": fn}))
    )


def _cli(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "factory.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=120
    )


def _load(folder: Path, tmp_path: Path):
    import datasets

    return datasets.load_dataset(str(folder), cache_dir=str(tmp_path / "hf-cache"))


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_messages_export_loads_and_trains_with_trl(tmp_path, seeds_file, tiny_llama):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    res = _rationales(tmp_path, seeds_file)
    with Store(tmp_path / "s.duckdb") as st:
        out = export_run(st, res.run_id, tmp_path / "msgs", shape="messages")
    ds = _load(out.out, tmp_path)["train"]
    assert len(ds) == 24 and out.rows == 24
    first = ds[0]["messages"]
    assert [m["role"] for m in first] == ["user", "assistant"]
    gold = {(r := json.loads(x))["question"]: r["answer"] for x in seeds_file.read_text().splitlines()}
    assert first[1]["content"].endswith(f"The answer is {gold[first[0]['content']]}.")
    assert "record_id" in ds.column_names

    tok = AutoTokenizer.from_pretrained(str(tiny_llama))
    model = AutoModelForCausalLM.from_pretrained(str(tiny_llama))
    args = SFTConfig(
        output_dir=str(tmp_path / "sft"), max_steps=2, per_device_train_batch_size=4, report_to=[],
        logging_steps=1, save_strategy="no", max_length=256, use_cpu=True, dataloader_num_workers=0,
    )  # fmt: skip
    trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok)
    result = trainer.train()
    assert result.global_step == 2 and result.training_loss > 0


def test_step_by_step_and_prompt_completion(tmp_path, seeds_file):
    res = _rationales(tmp_path, seeds_file)
    with Store(tmp_path / "s.duckdb") as st:
        sbs = export_run(st, res.run_id, tmp_path / "sbs", shape="step_by_step", slim=True)
        pc = export_run(st, res.run_id, tmp_path / "pc", shape="prompt_completion", fmt="jsonl")
    row = _load(sbs.out, tmp_path)["train"][0]
    assert set(row) == {"input", "label", "rationale", "gold"}
    assert row["label"] == "28" and row["rationale"].startswith("Add them up")
    lines = [json.loads(x) for x in (pc.out / "train.jsonl").read_text().splitlines()]
    assert len(lines) == 24 and lines[0]["completion"].endswith("\nThe answer is 28.")  # arith-01's gold
    assert lines[0]["gold"] == json.loads(seeds_file.read_text().splitlines()[0])["answer"]
    assert lines[0]["prompt"] == json.loads(seeds_file.read_text().splitlines()[0])["question"]


def test_text_label_has_class_label_names(tmp_path):
    import datasets

    cfg = _roles_config(tmp_path)
    res = asyncio.run(api.run_async(api.prepare(cfg), teachers=_teachers()))
    with Store(tmp_path / "s.duckdb") as st:
        curated = [json.loads(r["payload"]) for r in st.curated_table(res.run_id).to_pylist()]
        out = export_run(st, res.run_id, tmp_path / "tl", shape="text_label", slim=True)
    ds = _load(out.out, tmp_path)["train"]
    feat = ds.features["label"]
    assert isinstance(feat, datasets.ClassLabel)
    want = {p["text"]: p["label"] for p in curated if p["label"]}
    assert feat.names == sorted(set(want.values()))
    assert {r["text"]: feat.int2str(r["label"]) for r in ds} == want
    card = (out.out / "README.md").read_text()
    assert "class_label" in card  # dataset_info in the card names the labels


def test_triples_come_from_the_tails_stage(tmp_path):
    seeds = tmp_path / "ev.jsonl"
    seeds.write_text(json.dumps({"id": "e0", "event": "PersonX sings a song"}) + "\n")
    cfg = write_config(
        tmp_path,
        f"name: cs\nrecipe: commonsense\nseeds: {seeds}\nstore: {tmp_path / 's.duckdb'}\nteacher: scripted:x\n"
        "params: {relations: [xNeed, xReact], samples: 2}\n",
    )
    res = asyncio.run(
        api.run_async(
            api.prepare(cfg), teacher=ScriptedTeacher("scripted:x", "x", {"fn": lambda r: "Happy."})
        )
    )
    with Store(tmp_path / "s.duckdb") as st:
        tri = export_run(st, res.run_id, tmp_path / "tri", shape="triples", fmt="parquet", slim=True)
        recs = export_run(st, res.run_id, tmp_path / "recs", fmt="jsonl")
        every = export_run(st, res.run_id, tmp_path / "all", fmt="jsonl", stage="all")
    import pyarrow.parquet as pq

    rows = pq.read_table(tri.out / "train.parquet").to_pylist()
    assert len(rows) == 4 and {r["relation"] for r in rows} == {"xNeed", "xReact"}
    assert all(set(r) == {"head", "relation", "tail"} and r["tail"] == "happy" for r in rows)
    assert recs.stage == "tails" and recs.rows == 4  # default: the recipe's last stage
    assert every.stage is None and every.rows == 4  # no events stage records without new_events


def test_shards_and_seed_splits(tmp_path, seeds_file):
    res = _rationales(tmp_path, seeds_file, "export: {splits: {train: 0.5, test: 0.5}}\n")
    with Store(tmp_path / "s.duckdb") as st:
        out = export_run(
            st, res.run_id, tmp_path / "sh", splits={"train": 0.5, "test": 0.5}, max_shard_mb=0.004,
        )  # fmt: skip
    names = sorted(p.name for p in (out.out / "data").iterdir())
    assert any(n.endswith(f"-of-{out.shards['train']:05d}.parquet") for n in names)
    assert out.shards["train"] > 1, names
    ds = _load(out.out, tmp_path)
    assert sum(len(ds[s]) for s in ds) == 24
    split_of_seed = {}
    for s in ds:
        for r in ds[s]:
            assert split_of_seed.setdefault(r["seed_id"], s) == s  # every sample of a question in one split


def test_exports_are_byte_identical_and_out_is_protected(tmp_path, seeds_file):
    res = _rationales(tmp_path, seeds_file, "license: cc-by-4.0\n")
    store = str(tmp_path / "s.duckdb")
    first = _cli("export", res.run_id, "--store", store, "--out", "a", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    before = _digest(tmp_path / "a")
    again = _cli("export", res.run_id, "--store", store, "--out", "a", cwd=tmp_path)
    assert again.returncode == 2 and "--overwrite" in again.stderr
    assert _digest(tmp_path / "a") == before
    redo = _cli("export", res.run_id, "--store", store, "--out", "a", "--overwrite", cwd=tmp_path)
    assert redo.returncode == 0, redo.stderr
    assert _digest(tmp_path / "a") == before  # same store, same bytes: a second push commits nothing


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--as", "text_label"], "offers records, prompt_completion, step_by_step, preference, messages"),
        (["--stage", "nope"], "--stage 'nope'"),
        (["nosuchrun"], "no run 'nosuchrun'"),
    ],
)
def test_bad_export_input(tmp_path, seeds_file, args, message):
    res = _rationales(tmp_path, seeds_file)
    store = str(tmp_path / "s.duckdb")
    run = [] if args[0] == "nosuchrun" else [res.run_id]
    out = _cli("export", *run, *args, "--store", store, "--out", "x", cwd=tmp_path)
    assert out.returncode == 2 and message in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and not (tmp_path / "x").exists()


def test_a_license_added_later_reaches_the_card(tmp_path, seeds_file):
    res = _rationales(tmp_path, seeds_file)
    again = _rationales(tmp_path, seeds_file, "license: mit\n")
    assert again.run_id == res.run_id and again.progress.requests_sent == 0
    with Store(tmp_path / "s.duckdb") as st:
        out = export_run(st, res.run_id, tmp_path / "lic")
    assert "license: mit" in (out.out / "README.md").read_text()
