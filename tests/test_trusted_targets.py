"""Curated sets are fit to train on by default: `agreement` runs where gold is configured, the shapes that
teach an answer take trusted samples only (and say what they set aside), `preference` pairs a trusted
rationale with a wrong one of the same question, and the card states the teacher's accuracy against gold."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections import Counter

import orjson
import pytest
from conftest import write_config

from factory import api
from factory.export import export_run
from factory.store import Store
from factory.teachers.scripted import ScriptedTeacher
from factory.testing.fault_server import FaultConfig, serve_in_thread
from recipes.base import pair_up


def _gold(seeds_file) -> dict[str, str]:
    return {(r := orjson.loads(x))["question"]: r["answer"] for x in seeds_file.read_text().splitlines()}


def _answer_for(gold: dict[str, str], prompt: str, right: bool) -> str:
    a = gold[prompt.rsplit("Question: ", 1)[1].split("\n")[0].strip()]
    if right:
        return f"Work it out: the sum is right. The answer is {a}."
    return f"Off by one somewhere. The answer is {float(a) + 1:g}."


def _teacher(seeds_file) -> ScriptedTeacher:
    """Per question: samples 0 and 2 right (different texts), sample 1 off by one."""
    gold = _gold(seeds_file)

    def fn(req):
        text = _answer_for(gold, req.messages[-1]["content"], req.sample_index != 1)
        return text.replace("Work it out", f"Step {req.sample_index}: work it out")

    return ScriptedTeacher("scripted:x", "x", {"fn": fn})


def _run(tmp_path, seeds_file, extra="", name="tt", params="{k: 3}"):
    cfg = write_config(
        tmp_path,
        f"name: {name}\nrecipe: rationales\nseeds: {seeds_file}\nstore: {tmp_path / 's.duckdb'}\n"
        f"teacher: scripted:x\nparams: {params}\n{extra}",
        name=f"{name}.yaml",
    )
    return asyncio.run(api.run_async(api.prepare(cfg), teacher=_teacher(seeds_file)))


def _cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "factory.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=120
    )


def _jsonl(path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_gold_runs_agreement_by_default_and_the_ledger_says_so(tmp_path, seeds_file):
    res = _run(tmp_path, seeds_file)
    f = res.curation.funnel
    assert [s["filter"] for s in f["filters"]] == ["agreement"]
    assert (f["generated"], f["curated"]) == (24, 16)
    assert f["filters"][0]["top_reasons"] == [{"reason": "disagrees with gold", "records": 8}]
    store = str(tmp_path / "s.duckdb")
    with Store(tmp_path / "s.duckdb", read_only=True) as st:
        wrong = next(r for r in st.curated_table(res.run_id, include_rejected=True).to_pylist()
                     if r["dropped_by"])  # fmt: skip
    why = _cli("why", wrong["id"], "--store", store)
    assert why.returncode == 0, why.stderr
    assert (
        "not curated" in why.stdout and "DROP agreement" in why.stdout and "disagrees with gold" in why.stdout
    )
    # the target shapes say how many negatives agreement kept out, too
    sbs = _cli("export", res.run_id, "--store", store, "--as", "step_by_step", "--out", "sbs", cwd=tmp_path)
    assert sbs.returncode == 0, sbs.stderr
    assert "exported 16 records" in sbs.stdout
    assert "8 negatives set aside: 8 (disagree with gold); export them with --as preference" in sbs.stdout
    # `factory filter` from the stored config applies the recipe's filter too, and --set reaches it
    again = _cli("filter", res.run_id, "--store", store, "--set", "agreement.require_gold=false", "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["funnel"]["curated"] == 24


def test_opting_out_and_listing_the_filter_yourself(tmp_path, seeds_file):
    off = _run(tmp_path, seeds_file, "curation: {recipe_filters: false}\n", name="optout")
    assert off.curation is None  # no filters at all: no pass, every parsed record curated
    with Store(tmp_path / "s.duckdb", read_only=True) as st:
        assert st.funnel(off.run_id)["curated"] == 24
    listed = _run(tmp_path, seeds_file, "filters:\n  - heuristics: {min_chars: 10}\n  - agreement: {require_gold: false}\n",
                  name="listed")  # fmt: skip
    assert [s["filter"] for s in listed.curation.funnel["filters"]] == ["heuristics", "agreement"]
    assert listed.curation.funnel["curated"] == 24  # listed as the config says, not added a second time
    nogold = _run(tmp_path, seeds_file, name="nogold", params="{k: 3, gold_field: null}")
    assert nogold.curation is None
    bad = write_config(
        tmp_path, f"name: b\nrecipe: rationales\nseeds: {seeds_file}\ncuration: {{agreemnt: false}}\n"
    )
    out = _cli("run", str(bad), "--store", str(tmp_path / "b.duckdb"))
    assert out.returncode == 2 and "curation.agreemnt" in out.stderr and "Traceback" not in out.stderr


def test_target_shapes_set_negatives_aside_and_say_so(tmp_path, seeds_file):
    res = _run(tmp_path, seeds_file, "curation: {recipe_filters: false}\n")
    store = str(tmp_path / "s.duckdb")
    out = _cli("export", res.run_id, "--store", store, "--as", "step_by_step", "--out", "sbs", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "exported 16 records" in out.stdout
    assert "8 negatives set aside: 8 (disagree with gold); export them with --as preference" in out.stdout
    card = (tmp_path / "sbs" / "README.md").read_text()
    assert "8 samples were set aside: 8 (disagree with gold)" in card
    assert "opted out of the recipe's default curation" in card
    js = _cli("export", res.run_id, "--store", store, "--as", "messages", "--format", "jsonl", "--out", "m",
              "--json", cwd=tmp_path)  # fmt: skip
    assert js.returncode == 0, js.stderr
    got = json.loads(js.stdout)
    assert (got["rows"], got["set_aside"]) == (16, {"disagree with gold": 8})
    gold = _gold(seeds_file)
    for row in _jsonl(tmp_path / "m" / "train.jsonl"):
        q, a = row["messages"][0]["content"], row["messages"][1]["content"]
        assert a.endswith(f"The answer is {gold[q]}.")
    # the records shape keeps everything curated, and the card warns that some answers are wrong
    with Store(tmp_path / "s.duckdb", read_only=True) as st:
        recs = export_run(st, res.run_id, tmp_path / "recs")
    assert recs.rows == 24 and recs.set_aside == {}
    assert (
        "8 exported rows carry an answer that is not trusted (8 disagree with gold)"
        in (recs.out / "README.md").read_text()
    )


def test_without_gold_the_vote_decides(tmp_path, seeds_file):
    plain = tmp_path / "plain.jsonl"
    plain.write_text(
        "".join(json.dumps({"id": f"q{i}", "question": q}) + "\n" for i, q in enumerate(_gold(seeds_file)))
    )
    cfg = write_config(
        tmp_path,
        f"name: v\nrecipe: rationales\nseeds: {plain}\nstore: {tmp_path / 's.duckdb'}\nteacher: scripted:x\n"
        "params: {k: 3}\ncuration: {recipe_filters: false}\n",
    )
    gold = _gold(seeds_file)
    teacher = ScriptedTeacher("scripted:x", "x", {"fn": lambda r: _answer_for(gold, r.messages[-1]["content"],
                                                                             r.sample_index != 1)})  # fmt: skip
    res = asyncio.run(api.run_async(api.prepare(cfg), teacher=teacher))
    with Store(tmp_path / "s.duckdb") as st:
        pc = export_run(st, res.run_id, tmp_path / "pc", shape="prompt_completion", fmt="jsonl")
        export_run(st, res.run_id, tmp_path / "pref", shape="preference", fmt="jsonl", slim=True)
    assert pc.rows == 16 and pc.set_aside == {"disagree with the majority vote": 8}
    with Store(tmp_path / "s.duckdb") as st:
        hf = export_run(st, res.run_id, tmp_path / "hf", shape="step_by_step")
    card = (hf.out / "README.md").read_text()
    assert "16 exported rows have no gold answer to check their target against" in card
    assert "agrees with gold in" not in card  # no gold: no accuracy claimed
    rows = _jsonl(tmp_path / "pref" / "train.jsonl")
    assert len(rows) == 16 and all("Off by one" in r["rejected"][0]["content"] for r in rows)


def test_pair_up_is_deterministic_cycles_the_shorter_list_and_caps():
    pos = [("a", {}), ("b", {})]
    neg = [("x", {}), ("y", {}), ("z", {})]
    assert [(p[0], n[0]) for p, n in pair_up(pos, neg, 10)] == [("a", "x"), ("b", "y"), ("a", "z")]
    assert [(p[0], n[0]) for p, n in pair_up(pos, neg, 2)] == [("a", "x"), ("b", "y")]
    assert pair_up(pos, [], 4) == [] and pair_up([], neg, 4) == []


def test_preference_pairs_load_in_the_format_dpo_reads(tmp_path, seeds_file, embedded_dir):
    import datasets
    from transformers import AutoTokenizer
    from trl.data_utils import is_conversational, maybe_apply_chat_template

    res = _run(tmp_path, seeds_file)  # agreement on: the wrong samples are not curated, and still paired
    with Store(tmp_path / "s.duckdb") as st:
        out = export_run(st, res.run_id, tmp_path / "pref", shape="preference", slim=True,
                         splits={"train": 0.5, "test": 0.5})  # fmt: skip
        capped = export_run(st, res.run_id, tmp_path / "cap", shape="preference", fmt="jsonl",
                            pairs_per_question=1)  # fmt: skip
        export_run(st, res.run_id, tmp_path / "cap2", shape="preference", fmt="jsonl",
                           pairs_per_question=1)  # fmt: skip
    assert out.rows == 16 and out.skipped == 0  # 2 right and 1 wrong per question: 2 pairs each
    ds = datasets.load_dataset(str(out.out), cache_dir=str(tmp_path / "hf"))
    assert sum(len(ds[s]) for s in ds) == 16
    gold = _gold(seeds_file)
    for split in ds:
        assert ds[split].column_names == ["prompt", "chosen", "rejected", "gold"]  # gold: for eval
        for row in ds[split]:
            assert is_conversational(row)
            assert [m["role"] for m in row["prompt"]] == ["user"]
            assert [m["role"] for m in row["chosen"]] == [m["role"] for m in row["rejected"]] == ["assistant"]
            q = row["prompt"][0]["content"]
            assert row["chosen"][0]["content"].endswith(f"The answer is {gold[q]}.")
            assert row["rejected"][0]["content"].startswith("Off by one")
            assert row["gold"] == gold[q]
    # a question's pairs never straddle splits
    sides = {}
    for split in ds:
        for row in ds[split]:
            assert sides.setdefault(row["prompt"][0]["content"], split) == split
    from trainers.data import detect_shape

    assert detect_shape(ds["train"].column_names) == "preference"
    assert detect_shape(list(_jsonl(tmp_path / "cap" / "train.jsonl")[0])) == "preference"  # with lineage
    tok = AutoTokenizer.from_pretrained(str(embedded_dir))
    text = maybe_apply_chat_template(ds["train"][0], tok)
    assert {"prompt", "chosen", "rejected"} <= set(text) and "assistant" in text["prompt"]
    # `factory train --task dpo` reads the conversational columns as the user's and the assistant's turns
    from trainers.causal import encode_pair
    from trainers.dpo import encode_rows

    row = ds["train"][0]
    (ex,) = encode_rows([row], tok, True, 512)
    user = row["prompt"][0]["content"]
    assert ex["chosen"] == encode_pair(tok, user, row["chosen"][0]["content"], True, 512)
    assert ex["rejected"] == encode_pair(tok, user, row["rejected"][0]["content"], True, 512)
    # capped at one pair a question, deterministic, with the lineage of both records
    assert capped.rows == 8 and capped.skipped == 8  # one right sample per question is in no pair
    assert (tmp_path / "cap" / "train.jsonl").read_bytes() == (tmp_path / "cap2" / "train.jsonl").read_bytes()
    with Store(tmp_path / "s.duckdb", read_only=True) as st:
        recs = {r["id"]: orjson.loads(r["payload"]) for r in st.curated_table(res.run_id, include_rejected=True)
                .to_pylist()}  # fmt: skip
    for row in _jsonl(tmp_path / "cap" / "train.jsonl"):
        chosen, rejected = recs[row["chosen_record_id"]], recs[row["rejected_record_id"]]
        assert chosen["agrees_with_gold"] is True and rejected["agrees_with_gold"] is False
        assert chosen["input"] == rejected["input"] == row["prompt"][0]["content"]
        # the first positive in record-id order is the one paired
        firsts = sorted(i for i, p in recs.items() if p["input"] == chosen["input"] and p["agrees_with_gold"])
        assert row["chosen_record_id"] == firsts[0]
    card = (out.out / "README.md").read_text()
    assert (
        "DPOTrainer" in card
        and "66.7% of samples (16 of 24)" in card
        and "100.0% of questions (8 of 8)" in card
    )


def test_preference_refuses_record_splits_and_recipes_without_it(tmp_path, seeds_file):
    res = _run(tmp_path, seeds_file)
    store = str(tmp_path / "s.duckdb")
    out = _cli("export", res.run_id, "--store", store, "--as", "preference", "--split-by", "record", "--out", "x",
               cwd=tmp_path)  # fmt: skip
    assert out.returncode == 2 and "drop --split-by record" in out.stderr and not (tmp_path / "x").exists()
    ok = _cli("export", res.run_id, "--store", store, "--as", "preference", "--out", "y", cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert "exported 16 pairs" in ok.stdout


def test_through_a_real_server_the_accuracy_reaches_card_and_report(tmp_path, seeds_file):
    gold = _gold(seeds_file)
    firsts = Counter()

    def reply(messages, body):
        prompt = messages[-1]["content"]
        firsts[prompt] += 1
        return _answer_for(gold, prompt, right=firsts[prompt] != 2)  # the second sample asked is wrong

    with serve_in_thread(FaultConfig(reply=reply)) as srv:
        cfg = write_config(
            tmp_path,
            f"name: srv\nrecipe: rationales\nseeds: {seeds_file}\nstore: {tmp_path / 's.duckdb'}\n"
            f"teacher: 'openai:m@{srv.base_url}'\nparams: {{k: 3}}\n",
        )
        run = _cli("run", str(cfg))
        assert run.returncode == 0, run.stderr
    store = str(tmp_path / "s.duckdb")
    out = _cli("export", "srv", "--store", store, "--as", "preference", "--out", "p", "--json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    with Store(tmp_path / "s.duckdb", read_only=True) as st:
        recs = [orjson.loads(r["payload"]) for r in st.curated_table(st.resolve_run("srv"), include_rejected=True)
                .to_pylist()]  # fmt: skip
    right = sum(bool(p["agrees_with_gold"]) for p in recs)
    assert (len(recs), right) == (24, 16)
    assert json.loads(out.stdout)["rows"] == 16
    card = (tmp_path / "p" / "README.md").read_text()
    assert "agrees with gold in 66.7% of samples (16 of 24)" in card
    rep = _cli("report", "srv", "--store", store, "--out", str(tmp_path / "r.html"))
    assert rep.returncode == 0, rep.stderr
    assert "agrees with gold in 66.7% of samples (16 of 24)" in (tmp_path / "r.html").read_text()


@pytest.mark.parametrize("shape", ["step_by_step", "prompt_completion"])
def test_program_targets_exclude_unverified(tmp_path, shape):
    from recipes.program_rationales import RECIPE

    assert RECIPE.shapes[shape].trusted_only
    assert RECIPE.distrust({"executed_answer": 5, "verified": False}) == "disagree with gold"
    assert RECIPE.distrust({"executed_answer": 5, "verified": True}) is None
    assert RECIPE.default_filters(RECIPE.params()) == ["agreement"]
    assert RECIPE.default_filters(RECIPE.params(gold_field=None)) == []
