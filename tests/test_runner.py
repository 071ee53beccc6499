import asyncio

from conftest import write_config, write_seeds

from factory import api
from factory.store import Store
from factory.teachers.scripted import ScriptedTeacher


def _cfg(tmp_path, seeds_file, extra=""):
    return write_config(
        tmp_path,
        f"name: t\nrecipe: rationales\ncuration: {{recipe_filters: false}}\nseeds: {seeds_file}\nstore: {tmp_path / 's.duckdb'}\n"
        f"teacher: scripted:x\nparams: {{k: 3}}\nrunner: {{commit_interval_s: 0.05}}\n{extra}",
    )


def _teacher(fn=None):
    return ScriptedTeacher(
        "scripted:x", "x", {"fn": fn or (lambda r: f"Some steps. The answer is {r.sample_index}.")}
    )


def _run(cfg, teacher):
    return asyncio.run(api.run_async(api.prepare(cfg), teacher=teacher))


def test_run_stores_records_and_rerun_is_free(tmp_path, seeds_file):
    cfg = _cfg(tmp_path, seeds_file)
    t1 = _teacher()
    res = _run(cfg, t1)
    assert res.status == "done"
    assert len(t1.calls) == 8 * 3 and res.progress.records == 24
    with Store(tmp_path / "s.duckdb", read_only=True) as st:
        s = st.run_summary(res.run_id)
        first = st.records_table(res.run_id).to_pylist()
    assert s["records_total"] == 24 and s["requests_sent"] == 24 and s["seeds_done"] == 8
    # same command again: nothing to do
    t2 = _teacher()
    res2 = _run(cfg, t2)
    assert res2.run_id == res.run_id and t2.calls == []
    # a new run name but the same requests: every answer comes from the cache
    cfg3 = _cfg(tmp_path, seeds_file).with_name("c3.yaml")
    cfg3.write_text(cfg.read_text().replace("name: t", "name: t3"))
    t3 = _teacher()
    res3 = _run(cfg3, t3)
    assert t3.calls == [] and res3.progress.cache_hits == 24 and res3.progress.records == 24
    with Store(tmp_path / "s.duckdb", read_only=True) as st:
        third = st.records_table(res3.run_id).to_pylist()
    assert [r["payload"] for r in third] == [r["payload"] for r in first]


def test_identical_requests_in_one_run_are_paid_once(tmp_path):
    seeds = tmp_path / "dup.jsonl"
    seeds.write_text(
        "".join(f'{{"id": "s{i}", "question": "same question", "answer": "1"}}\n' for i in range(5))
    )
    cfg = _cfg(tmp_path, seeds)
    t = _teacher()
    res = _run(cfg, t)
    assert res.progress.records == 15
    assert len(t.calls) == 3  # k distinct requests, shared by the five seeds


def test_budget_caps_requests_and_resume_continues(tmp_path, seeds_file):
    cfg = _cfg(tmp_path, seeds_file, "budget: {max_requests: 7}\n")
    t = _teacher()
    res = _run(cfg, t)
    assert res.status == "budget"
    assert len(t.calls) <= 7
    done_first = res.progress.seeds_done
    assert done_first < 8
    cfg.write_text(cfg.read_text().replace("budget: {max_requests: 7}\n", ""))
    t2 = _teacher()
    res2 = _run(cfg, t2)
    assert res2.status == "done" and res2.progress.seeds_done == 8
    assert len(t.calls) + len(t2.calls) == 24  # nothing paid twice across the two invocations


def test_output_token_budget_is_a_hard_cap(tmp_path, seeds_file):
    cfg = _cfg(tmp_path, seeds_file, "budget: {max_output_tokens: 1000}\n")
    t = _teacher(lambda r: "word " * 100 + "The answer is 3.")  # 104 tokens per answer
    res = _run(cfg, t)
    assert res.status == "budget"
    assert res.progress.completion_tokens <= 1000
    assert len(t.calls) < 24


def test_unparsed_answers_are_kept_with_a_verdict(tmp_path, seeds_file):
    cfg = _cfg(tmp_path, seeds_file)
    res = _run(cfg, _teacher(lambda r: "I cannot say." if r.sample_index == 0 else "x. The answer is 28."))
    with Store(tmp_path / "s.duckdb", read_only=True) as st:
        curated = st.curated_table(res.run_id).num_rows
        everything = st.curated_table(res.run_id, include_rejected=True)
        drops = st.verdict_counts(res.run_id)
    assert everything.num_rows == 24 and curated == 16
    assert drops == [("rationales.parse", "no answer found in the completion", 8)]


def test_an_api_refusal_is_not_cached_and_a_rerun_asks_again(tmp_path, seeds_file):
    from factory.errors import TeacherRejected

    cfg = _cfg(tmp_path, seeds_file)
    refusal = TeacherRejected("HTTP 400: the server refused it", kind="http_400")
    t = _teacher(lambda r: refusal if "Maya" in r.messages[-1]["content"] else "ok. The answer is 1.")
    res = _run(cfg, t)
    assert res.status == "incomplete" and res.progress.seeds_failed == 1
    with Store(tmp_path / "s.duckdb", read_only=True) as st:
        assert st.con.execute("SELECT count(*) FROM cache WHERE status <> 'ok'").fetchone()[0] == 0
    healed = _teacher(lambda r: "ok. The answer is 1.")
    res2 = _run(cfg, healed)
    assert res2.status == "done" and res2.progress.requests_sent == 3 == len(healed.calls)


def test_rejections_are_cached_and_transient_failures_are_not(tmp_path, seeds_file):
    cfg = _cfg(tmp_path, seeds_file)
    t = _teacher(lambda r: None if "Maya" in r.messages[-1]["content"] else "ok. The answer is 1.")
    res = _run(cfg, t)
    assert res.status == "incomplete" and res.progress.seeds_failed == 1
    calls = len(t.calls)
    res2 = _run(cfg, _teacher(lambda r: "should not be called"))
    assert res2.progress.cache_hits == 3 and res2.progress.requests_sent == 0
    assert calls == 24
    with Store(tmp_path / "s.duckdb", read_only=True) as st:
        s = st.run_summary(res.run_id)
    assert s["final_failures"] >= 1


def test_recipe_bug_is_recorded_not_fatal(tmp_path, seeds_file, monkeypatch):
    import recipes.rationales as r

    real = r.parse_completion

    def boom(text):
        if "boom" in text:
            raise ValueError("parser bug")
        return real(text)

    monkeypatch.setattr(r, "parse_completion", boom)
    cfg = _cfg(tmp_path, seeds_file)
    res = _run(
        cfg, _teacher(lambda req: "boom" if "Maya" in req.messages[-1]["content"] else "x. The answer is 2.")
    )
    assert res.status == "incomplete" and res.progress.seeds_done == 7 and res.progress.seeds_failed == 1


def test_an_engine_that_cannot_start_stops_the_run_with_its_error(tmp_path, seeds_file):
    from factory.errors import ConfigError

    class Broken(ScriptedTeacher):
        async def complete(self, requests):
            raise ConfigError("the engine cannot start: no such model folder")

    cfg = _cfg(tmp_path, seeds_file)
    res = _run(cfg, Broken("scripted:x", "x", {}))
    assert res.status == "failed" and res.exit_code == 2
    assert "no such model folder" in (res.error or "")
    assert res.progress.seeds_done == 0


def test_run_id_follows_resolved_params(tmp_path, seeds_file):
    a = api.prepare(_cfg(tmp_path, seeds_file)).run_id
    explicit = (
        _cfg(tmp_path, seeds_file).read_text().replace("params: {k: 3}", "params: {k: 3, temperature: 0.7}")
    )
    (tmp_path / "b.yaml").write_text(explicit)
    (tmp_path / "c.yaml").write_text(explicit.replace("k: 3", "k: 2"))
    assert api.prepare(tmp_path / "b.yaml").run_id == a  # writing out a default changes nothing
    assert api.prepare(tmp_path / "c.yaml").run_id != a


def test_eta_counts_only_this_invocations_pace():
    from factory.runner import Progress

    p = Progress(seeds_total=100, seeds_done=60, seeds_failed=0, records=0, requests_sent=0, cache_hits=0,
                 in_flight=0, prompt_tokens=0, completion_tokens=0, failures={}, elapsed_s=10.0, seeds_resumed=50)  # fmt: skip
    assert p.eta_s == 40 * 10.0 / 10  # 10 seeds in 10 s now; the 50 resumed ones took no time
    assert Progress(100, 50, 0, 0, 0, 0, 0, 0, 0, {}, 5.0, seeds_resumed=50).eta_s is None


def _roles_cfg(tmp_path, seeds_file, teachers, role):
    return write_config(
        tmp_path,
        f"name: roles\nrecipe: prompt\nseeds: {seeds_file}\nstore: {tmp_path / 's.duckdb'}\n"
        f"teacher: scripted:main\nteachers: {teachers}\n"
        f"params: {{template: '{{{{ question }}}}', required: [question], teacher: {role}}}\n",
    )


def test_a_recipe_sends_to_the_teacher_role_it_names(tmp_path, seeds_file):
    cfg = _roles_cfg(tmp_path, seeds_file, "{strong: 'scripted:big'}", "strong")
    prep = api.prepare(cfg)
    main = ScriptedTeacher("scripted:main", "main", {"default": "from main"})
    strong = ScriptedTeacher("scripted:big", "big", {"default": "from big"})
    res = asyncio.run(api.run_async(prep, teachers={"default": main, "strong": strong}))
    assert res.status == "done" and len(strong.calls) == 8 and not main.calls
    with Store(tmp_path / "s.duckdb", read_only=True) as st:
        texts = {r["text"] for r in st.records_table(res.run_id).to_pylist()}
        paid = (st.count_cache("scripted:big"), st.count_cache("scripted:main"))
    assert texts == {"from big"} and paid == (8, 0)
    # the same requests to another role are other requests: another teacher identity, another key
    again = ScriptedTeacher("scripted:big", "big", {"default": "from big"})
    asyncio.run(api.run_async(api.prepare(cfg), teachers={"default": main, "strong": again}))
    assert not again.calls


def test_a_role_missing_from_the_config_is_a_config_error(tmp_path, seeds_file):
    import pytest

    from factory.errors import ConfigError

    cfg = _roles_cfg(tmp_path, seeds_file, "{other: 'scripted:big'}", "strong")
    with pytest.raises(ConfigError, match=r"teacher role 'strong'.*teachers:"):
        api.prepare(cfg)
    bad = _roles_cfg(tmp_path, seeds_file, "{Default: 'scripted:big'}", "default")
    with pytest.raises(ConfigError, match="snake_case"):
        api.prepare(bad)


def test_roles_configured_alike_share_one_teacher(tmp_path, seeds_file):
    cfg = _roles_cfg(tmp_path, seeds_file, "{a: 'scripted:main', b: 'scripted:other'}", "a")
    roles = api.make_teachers(api.prepare(cfg))
    assert roles["a"] is roles["default"] and roles["b"] is not roles["a"]


def test_a_commit_in_progress_when_the_run_ends_is_not_lost(tmp_path, seeds_file, monkeypatch):
    """The periodic commit may be queued behind a cache look-up on the store thread when the last seed
    finishes; the end of the run must wait for it, not cancel it."""
    import time as _time

    def cfg(name):
        return write_config(
            tmp_path,
            f"name: {name}\nrecipe: rationales\ncuration: {{recipe_filters: false}}\nseeds: {seeds_file}\nstore: {tmp_path / 's.duckdb'}\n"
            f"teacher: scripted:x\nparams: {{k: 3}}\nrunner: {{commit_interval_s: 0.01, max_seeds_in_flight: 1}}\n",
            name=f"{name}.yaml",
        )

    _run(cfg("first"), _teacher())  # fills the cache: later runs look every request up
    real_lookup = Store.lookup

    def slow_lookup(self, keys):
        _time.sleep(0.02)
        return real_lookup(self, keys)

    monkeypatch.setattr(Store, "lookup", slow_lookup)
    for attempt in range(6):
        res = _run(cfg(f"again{attempt}"), _teacher())
        with Store(tmp_path / "s.duckdb", read_only=True) as st:
            stored = st.run_summary(res.run_id)
        assert res.progress.records == 24 and res.progress.cache_hits == 24
        assert (stored["records_total"], stored["seeds_done"]) == (24, 8), attempt


class _EngineLike(ScriptedTeacher):
    """A scripted teacher that, like a local engine, sizes the run's window: 2 seeds until it has answered
    4 requests (its engine "started"), 5 after."""

    def __init__(self):
        super().__init__("scripted:x", "x", {"fn": lambda r: "Some steps. The answer is 1."})
        self.now = self.most = 0
        self.early_most = 0

    def suggested_in_flight(self):
        return 2 if len(self.calls) < 4 else 5

    async def complete(self, requests):
        self.now += 1
        self.most = max(self.most, self.now)
        if len(self.calls) < 4:
            self.early_most = max(self.early_most, self.now)
        await asyncio.sleep(0.01)
        self.now -= 1
        return await super().complete(requests)


def test_seeds_in_flight_follow_the_teachers_suggestion_unless_the_config_sets_them(tmp_path):
    from factory.runner import seeds_in_flight

    seeds = write_seeds(tmp_path / "seeds.jsonl", 16)
    cfg = write_config(tmp_path, _cfg(tmp_path, seeds).read_text().replace("{k: 3}", "{k: 1}"))
    t = _EngineLike()
    res = _run(cfg, t)
    assert res.status == "done" and len(t.calls) == 16
    assert t.early_most <= 2 and t.most == 5  # grew when the teacher said so, never past it
    assert seeds_in_flight(None, t, 64) is None  # sized by the teacher as the run goes
    assert seeds_in_flight(None, _teacher(), 8) == 16  # a teacher with no suggestion: from max_in_flight
    # the config's number wins
    assert seeds_in_flight(3, t, 64) == 3
    fixed = cfg.read_text().replace("s.duckdb", "s3.duckdb").replace("0.05}", "0.05, max_seeds_in_flight: 3}")
    t3 = _EngineLike()
    res3 = _run(write_config(tmp_path, fixed, "c3.yaml"), t3)
    assert res3.status == "done" and t3.most == 3
