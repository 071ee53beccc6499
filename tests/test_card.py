"""The dataset card on a real store: Hub metadata that parses, the funnel, filters, label balance and
decontamination as stored, no invented license, no secret, and the same bytes for the same store."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from conftest import write_config
from huggingface_hub import DatasetCard

from factory import api
from factory.card import ExportFacts, render_dataset_card, size_category, task_categories
from factory.store import Store
from factory.teachers.scripted import ScriptedTeacher
from factory.testing.fault_server import FaultConfig, serve_in_thread

FILTERS = "filters:\n  - heuristics: {min_chars: 10}\n  - exact_dedup\n"
INFO = {
    "features": [{"name": "input", "dtype": "string"}, {"name": "label", "dtype": "string"}],
    "splits": [{"name": "train", "num_bytes": 4321, "num_examples": 16}],
}


def _teacher(seeds_file) -> ScriptedTeacher:
    """Per question: sample 0 right, sample 1 off by one, sample 2 a copy of sample 0 (an exact duplicate)."""
    gold = {(r := orjson.loads(x))["question"]: r["answer"] for x in seeds_file.read_text().splitlines()}

    def answer(req):
        a = gold[req.messages[-1]["content"].rsplit("Question: ", 1)[1].split("\n")[0].strip()]
        if req.sample_index == 1:
            return f"Off by one somewhere. The answer is {float(a) + 1:g}."
        return f"Work it out: the sum is right. The answer is {a}."

    return ScriptedTeacher("scripted:x", "x", {"fn": answer})


def _run(
    tmp_path, seeds_file, extra="license: cc-by-4.0\n", filters=FILTERS, teacher="scripted:x", given=True
):
    cfg = write_config(
        tmp_path,
        f"name: card\nrecipe: rationales\nseeds: {seeds_file}\nstore: {tmp_path / 's.duckdb'}\n"
        f"teacher: {teacher}\nparams: {{k: 3}}\ncuration: {{recipe_filters: false}}\n{filters}{extra}",
    )
    t = _teacher(seeds_file) if given else None
    return asyncio.run(api.run_async(api.prepare(cfg), teacher=t)).run_id


def _facts(st: Store, run_id: str, *, include_rejected: bool = False) -> ExportFacts:
    rows = []
    for r in st.curated_table(run_id, include_rejected=include_rejected).to_pylist():
        rows.append({**orjson.loads(r["payload"]), "record_id": r["id"]})
    return ExportFacts(
        split_sizes={"train": len(rows)}, split_bytes={"train": 4321},
        data_files={"train": "data/train-*.parquet"}, dataset_info=INFO, shape="records", label_names=None,
        examples=rows[:2], slim=False, include_rejected=include_rejected,
    )  # fmt: skip


def _card(tmp_path, run_id: str, **kw) -> str:
    with Store(tmp_path / "s.duckdb", read_only=True) as st:
        return render_dataset_card(st, run_id, _facts(st, run_id, **kw))


def _section(card: str, title: str) -> str:
    return card.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def _rows(section: str) -> list[list[str]]:
    """The cells of the first Markdown table in a section (header and rule left out)."""
    lines = [x for x in section.splitlines() if x.startswith("|")]
    return [[c.strip() for c in x.strip("|").split(" | ")] for x in lines[2:]]


def test_card_parses_on_the_hub_and_renders_the_same_bytes(tmp_path, seeds_file):
    run_id = _run(tmp_path, seeds_file, "license: cc-by-4.0\nsource_datasets: [openai/gsm8k]\n")
    card = _card(tmp_path, run_id)
    data = DatasetCard(card).data.to_dict()
    assert data["license"] == "cc-by-4.0"
    assert data["tags"] == ["synthetic", "distillation", "rationales"]
    assert data["task_categories"] == ["text-generation", "question-answering"]
    assert data["size_categories"] == ["n<1K"]
    assert data["source_datasets"] == ["openai/gsm8k"]
    assert data["configs"] == [
        {"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*.parquet"}]}
    ]
    assert data["dataset_info"] == INFO
    assert card == _card(tmp_path, run_id)  # a fresh connection, the same bytes
    # the shipped template is found, its version checked against the records', and shown
    with Store(tmp_path / "s.duckdb", read_only=True) as st:
        ((stage, version, n),) = st.template_versions(run_id)
    assert (stage, n) == ("rationale", 24) and f"| rationale | `{version}` | 24 |" in card
    assert "<summary><code>rationales.j2</code>" in card and "{{ question }}" in card
    assert "## Decontamination\n\nNot run" in card
    assert "| records curated | 16 |" in card and "factory export card --out DIR" in card


def test_funnel_numbers_are_the_stores(tmp_path, seeds_file):
    run_id = _run(tmp_path, seeds_file)
    card = _card(tmp_path, run_id)
    with Store(tmp_path / "s.duckdb", read_only=True) as st:
        funnel = st.funnel(run_id)
    rows = {r[0]: r for r in _rows(_section(card, "Funnel"))}
    assert rows["generated"][2] == str(funnel["generated"]) == "24"
    assert rows["parsed (the recipe's own checks)"][1:4] == [
        str(funnel["generated"]),
        str(funnel["parsed"]),
        "0",
    ]
    for step in funnel["filters"]:
        got = rows[f"`{step['filter']}`"]
        assert got[1:4] == [str(step["in"]), str(step["kept"]), str(step["dropped"])]
    assert rows["`exact_dedup`"][4] == "exact duplicate ×8"
    assert rows["curated"][2] == str(funnel["curated"]) == "16"


def test_a_filter_pass_shows_versions_thresholds_and_the_command(tmp_path, seeds_file):
    evals = tmp_path / "evals.jsonl"
    evals.write_text(
        orjson.dumps({"id": "gsm-7", "question": "Off by one somewhere, said nobody"}).decode() + "\n"
    )
    filters = FILTERS + "  - decontaminate: {eval_files: [evals.jsonl], n: 4}\n"
    run_id = _run(tmp_path, seeds_file, filters=filters)
    out = subprocess.run(
        [sys.executable, "-m", "factory.cli", "filter", "card", "--store", str(tmp_path / "s.duckdb"),
         "--set", "heuristics.min_chars=25"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    card = _card(tmp_path, run_id)
    with Store(tmp_path / "s.duckdb", read_only=True) as st:
        last = st.latest_pass(run_id)
        funnel = st.funnel(run_id)
    assert last is not None and last["pass"] == 2
    filters_rows = {r[1]: r for r in _rows(_section(card, "Filters"))}
    assert list(filters_rows) == ["`heuristics`", "`exact_dedup`", "`decontaminate`"]
    for f in last["filters"]:
        assert filters_rows[f"`{f['filter']}`"][2] == f"`{f['version']}`"
    assert filters_rows["`heuristics`"][3].startswith("min_chars=25, max_chars=20000")
    assert filters_rows["`decontaminate`"][3] == "min_overlap=1"
    assert 'eval_files=["evals.jsonl"]' in filters_rows["`decontaminate`"][4]  # the name, not the path
    assert str(tmp_path) not in filters_rows["`decontaminate`"][4]
    assert "factory filter card --set heuristics.min_chars=25" in card
    # decontamination: the 8 off-by-one rationales share "off by one somewhere" with gsm-7
    decon = _section(card, "Decontamination")
    assert "16 records checked" in decon and "8 dropped" in decon
    assert _rows(decon) == [["evals.jsonl", "gsm-7", "8", "off by one somewhere"]]
    assert _rows(_section(card, "Funnel"))[-1][2] == str(funnel["curated"]) == "8"


def test_label_balance_counts_the_exported_records(tmp_path, seeds_file):
    run_id = _run(tmp_path, seeds_file)
    rows = _rows(_section(_card(tmp_path, run_id), "Label balance"))
    assert rows == [["`negative`", "8 (50.0 %)"], ["`positive`", "8 (50.0 %)"]]
    # with rejected records: the curated column stays, and a column counts everything exported
    rows = _rows(_section(_card(tmp_path, run_id, include_rejected=True), "Label balance"))
    assert rows == [["`positive`", "8 (50.0 %)", "16 (66.7 %)"], ["`negative`", "8 (50.0 %)", "8 (33.3 %)"]]


def test_no_license_in_the_config_means_no_license_on_the_card(tmp_path, seeds_file):
    run_id = _run(tmp_path, seeds_file, extra="")
    card = _card(tmp_path, run_id)
    data = DatasetCard(card).data.to_dict()
    assert "license" not in data and "source_datasets" not in data
    assert not re.search(r"^license:", card.split("\n---\n", 1)[0], re.MULTILINE)


def test_the_api_key_and_url_credentials_stay_out(tmp_path, seeds_file, monkeypatch):
    secret = "sk-card-test-4f1d2e9a7b"
    monkeypatch.setenv("CARD_TEST_KEY", secret)
    with serve_in_thread(
        FaultConfig(latency=0.0)
    ) as srv:  # the real openai teacher reads the key and sends it
        run_id = _run(tmp_path, seeds_file, teacher=f"{{spec: 'openai:m@{srv.base_url}', api_key_env: CARD_TEST_KEY}}",
                      given=False)  # fmt: skip
        assert srv.stats()["requests"] == 24
    card = _card(tmp_path, run_id)
    port = srv.base_url.split(":")[2].split("/")[0]
    assert secret not in card
    assert f"127.0.0.1:{port} (key from `$CARD_TEST_KEY`)" in card and "api_key_env: CARD_TEST_KEY" in card
    # a key pasted into an endpoint URL: only scheme, host and path reach the card
    leaky = (
        "{spec: 'openai:m@https://user:hunter2@api.example.com/v1?api-key=zz9', api_key_env: CARD_TEST_KEY}"
    )
    other = tmp_path / "other"
    other.mkdir()
    run_id = _run(other, seeds_file, teacher=leaky)
    card = _card(other, run_id)
    assert "hunter2" not in card and "zz9" not in card and secret not in card
    assert "| default | openai:m | API endpoint | api.example.com (key from `$CARD_TEST_KEY`) |" in card
    assert "spec: openai:m@https://api.example.com/v1\n" in card


@pytest.mark.parametrize(
    ("n", "bucket"),
    [(0, "n<1K"), (999, "n<1K"), (1000, "1K<n<10K"), (250_000, "100K<n<1M"), (10**13, "n>1T")],
)
def test_size_categories(n, bucket):
    assert size_category(n) == bucket


def test_task_categories_follow_recipe_and_shape():
    assert task_categories("boundary", "records") == ["text-classification"]
    assert task_categories("relabel", "text_label") == ["text-classification"]
    assert task_categories("rationales", "text_label") == ["text-classification"]
    assert task_categories("commonsense", "triples") == ["text-generation"]
    assert task_categories("boundary", "messages") == ["text-generation", "text-classification"]
    assert task_categories("program_rationales", "step_by_step") == ["text-generation", "question-answering"]
    assert task_categories("someone_elses_recipe", "records") == ["text-generation"]


RENDER = """
import sys
from pathlib import Path
from pathlib import Path
from factory.store import Store
from factory.card import render_dataset_card
import test_card
with Store(Path(sys.argv[1]), read_only=True) as st:
    sys.stdout.write(render_dataset_card(st, sys.argv[2], test_card._facts(st, sys.argv[2])))
"""


def test_the_same_store_renders_the_same_bytes_in_another_process_and_time_zone(tmp_path, seeds_file):
    run_id = _run(tmp_path, seeds_file)
    here = _card(tmp_path, run_id)
    env = {**os.environ, "TZ": "Pacific/Chatham", "PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", RENDER, str(tmp_path / "s.duckdb"), run_id],
        capture_output=True, text=True, timeout=120, env=env, cwd=Path(__file__).parent,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout == here
    assert re.search(r"\| run created \| \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC \|", here)


def test_mean_cosine_comes_from_stored_vectors_only(tmp_path, seeds_file):
    import numpy as np

    from factory.curation import filters_dir
    from filters.diversity import diversity_report
    from filters.vectors import model_key, text_key

    run_id = _run(tmp_path, seeds_file)
    with Store(tmp_path / "s.duckdb", read_only=True) as st:
        texts = st.curated_table(run_id).column("text").to_pylist()
        folder = filters_dir(st) / "embeddings" / model_key(None)
    assert "| mean pairwise cosine (sentence vectors the filters stored) | not measured" in _card(
        tmp_path, run_id
    )
    # the vectors' documented layout: one .npy of rows and one .keys.npy of the texts' digests
    vecs = np.random.default_rng(0).normal(size=(len(texts), 8)).astype(np.float32)
    folder.mkdir(parents=True)
    np.save(folder / "0001.npy", vecs / np.linalg.norm(vecs, axis=1, keepdims=True))
    np.save(folder / "0001.keys.npy", np.array([text_key(t) for t in texts], dtype="S32"))
    want = diversity_report(texts, vecs)["mean_pairwise_cosine"]
    assert f"| mean pairwise cosine (sentence vectors the filters stored) | {want} |" in _card(
        tmp_path, run_id
    )
    assert sorted(p.name for p in folder.iterdir()) == ["0001.keys.npy", "0001.npy"]  # nothing written
