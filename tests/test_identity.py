"""Local teachers are identified by their files' content and the options that change answers; the digest of
each file is computed once; a store records its key format and moves it forward on open, never silently."""

from __future__ import annotations

import json
import logging
import os
import shutil

import duckdb
import numpy as np
import orjson
import pytest
from safetensors.numpy import save_file

from factory.config import TeacherConfig
from factory.errors import ConfigError, StoreError
from factory.keys import KEY_FORMAT, canonical_json, request_key
from factory.store import Batch, Store
from factory.store.keyformat import OPENAI_URL, openai_identities
from factory.store.migrations import m001_initial, m002_filter_passes
from factory.teachers import build_teacher
from factory.teachers import weights as weights_mod
from factory.teachers.openai import DEFAULT_BASE_URL
from factory.types import Request

CONFIG = {"model_type": "llama", "hidden_size": 8, "num_hidden_layers": 1, "max_position_embeddings": 64}
TEMPLATE = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"


@pytest.fixture(autouse=True)
def digest_cache(tmp_path, monkeypatch):
    path = tmp_path / "cache" / "digests.json"
    monkeypatch.setenv("FACTORY_DIGEST_CACHE", str(path))
    return path


@pytest.fixture
def reads(monkeypatch):
    """The files whose bytes were read to hash them, in order."""
    seen: list[str] = []
    real = weights_mod._sha256

    def counting(path):
        seen.append(path.name)
        return real(path)

    monkeypatch.setattr(weights_mod, "_sha256", counting)
    return seen


def make_model(folder, seed=0, *, template=TEMPLATE):
    """A model folder of the usual shape: config, tokenizer config with a chat template, two weight
    tensors written with safetensors (the same shapes and file size for every seed)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(CONFIG))
    (folder / "tokenizer_config.json").write_text(json.dumps({"chat_template": template}))
    rng = np.random.default_rng(seed)
    tensors = {
        "embed.weight": rng.standard_normal((32, 8), dtype=np.float32),
        "norm.weight": np.ones(8, np.float32),
    }
    save_file(tensors, str(folder / "model.safetensors"))
    return folder


def identity(folder, backend="vllm", **options):
    return build_teacher(f"{backend}:{folder}", options).identity()


# -- what is keyed ---------------------------------------------------------------------------------------
def test_a_retrained_checkpoint_of_the_same_shape_gets_a_new_identity(tmp_path):
    a = make_model(tmp_path / "a" / "m", seed=0)
    b = make_model(tmp_path / "b" / "m", seed=1)  # same config, same names, same sizes, other bytes
    assert (a / "model.safetensors").stat().st_size == (b / "model.safetensors").stat().st_size
    assert (a / "config.json").read_bytes() == (b / "config.json").read_bytes()
    for backend in ("vllm", "transformers"):
        assert identity(a, backend)["weights"] != identity(b, backend)["weights"]
        assert identity(a, backend) != identity(b, backend)


def test_a_moved_or_renamed_copy_keeps_its_identity(tmp_path):
    a = make_model(tmp_path / "a" / "m")
    before = identity(a)
    copy = tmp_path / "elsewhere" / "renamed"
    shutil.copytree(a, copy)
    (copy / "README.md").write_text("notes that change no answer")
    (copy / ".hidden").write_text("x")
    assert identity(copy) == before
    assert set(before) == {"backend", "weights", "options"}  # no path, no folder name


def test_config_tokenizer_and_chat_template_files_are_part_of_the_digest(tmp_path):
    base = identity(make_model(tmp_path / "base"))["weights"]
    other_template = make_model(tmp_path / "t", template="{{ messages[0]['content'] }}")
    assert identity(other_template)["weights"] != base
    jinja = make_model(tmp_path / "j")
    (jinja / "chat_template.jinja").write_text(TEMPLATE)
    assert identity(jinja)["weights"] != base
    gen = make_model(tmp_path / "g")
    (gen / "generation_config.json").write_text('{"repetition_penalty": 1.3}')
    assert identity(gen)["weights"] != base
    cfg = make_model(tmp_path / "c")
    (cfg / "config.json").write_text(json.dumps({**CONFIG, "rope_theta": 5.0}))
    assert identity(cfg)["weights"] != base


def test_vllm_options_that_change_answers_are_keyed_and_throughput_ones_are_not(tmp_path):
    folder = make_model(tmp_path / "m")
    base = identity(folder)
    keyed = [
        {"dtype": "float16"},
        {"max_model_len": 4096},
        {"seed": 1},
        {"engine_args": {"quantization": "fp8"}},
        {"engine_args": {"kv_cache_dtype": "fp8"}},
        {"engine_args": {"revision": "abc"}},
        {"engine_args": {"some_future_argument": 1}},  # unknown: keyed
    ]
    ids = [identity(folder, **o) for o in keyed]
    assert base not in ids and len({json.dumps(i, sort_keys=True) for i in ids}) == len(keyed)
    free = [
        {"gpu_memory_utilization": 0.9},
        {"enforce_eager": False},
        {
            "engine_args": {
                "tensor_parallel_size": 2,
                "max_num_seqs": 8,
                "swap_space": 1,
                "enable_prefix_caching": True,
                "max_num_batched_tokens": 512,
                "gpu_memory_utilization": 0.5,
            }
        },
    ]
    for o in free:
        assert identity(folder, **o) == base, o
    # a throughput argument next to a keyed one: only the keyed one counts
    assert identity(folder, engine_args={"quantization": "fp8", "max_num_seqs": 4}) == identity(
        folder, engine_args={"quantization": "fp8"}
    )


def test_transformers_options_that_change_answers_are_keyed_and_throughput_ones_are_not(tmp_path):
    folder = make_model(tmp_path / "m")
    base = identity(folder, "transformers")
    assert identity(folder, "transformers", dtype="bfloat16") != base
    assert identity(folder, "transformers", max_model_len=32) != base
    assert identity(folder, "transformers", batch_size=2, batch_tokens=64, device="cpu") == base
    assert base["options"]["sampler"] == 2  # per-row draws: older answers are not served


def test_a_gguf_teacher_is_keyed_by_its_gguf_file_only(tmp_path):
    folder = tmp_path / "g"
    folder.mkdir()
    (folder / "a.gguf").write_bytes(b"GGUF" + b"\1" * 64)
    (folder / "b.gguf").write_bytes(b"GGUF" + b"\2" * 64)
    ida = identity(folder / "a.gguf", "transformers")
    assert identity(folder / "b.gguf", "transformers") != ida
    (folder / "c.gguf").write_bytes(b"GGUF" + b"\3" * 64)  # another quantisation beside it: not loaded
    assert identity(folder / "a.gguf", "transformers") == ida


def test_request_keys_of_local_teachers_follow_the_identity(tmp_path):
    folder = make_model(tmp_path / "m")
    body = Request.chat("hi").body()

    def key(**o):
        return request_key(build_teacher(f"vllm:{folder}", o).identity(), body)

    assert key(max_model_len=1024) != key(max_model_len=2048)  # raising it heals a too_long rejection
    assert key(gpu_memory_utilization=0.1) == key(gpu_memory_utilization=0.8)


# -- the digest is computed once --------------------------------------------------------------------------
def test_the_digest_is_computed_once_and_cached_by_path_size_mtime_and_inode(tmp_path, reads, digest_cache):
    folder = make_model(tmp_path / "m")
    weights = folder / "model.safetensors"
    first = identity(folder)
    assert sorted(reads) == ["config.json", "model.safetensors", "tokenizer_config.json"]
    cached = json.loads(digest_cache.read_text())["files"][os.path.realpath(weights)]
    st = weights.stat()
    assert (
        cached["size"] == st.st_size and cached["mtime_ns"] == st.st_mtime_ns and cached["inode"] == st.st_ino
    )
    reads.clear()
    assert identity(folder) == first and identity(folder, "transformers")["weights"] == first["weights"]
    assert reads == []  # a second run (and a second teacher) only stats the files

    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # touched: same bytes, hashed again
    assert identity(folder) == first and reads == ["model.safetensors"]

    reads.clear()
    st = weights.stat()
    replacement = tmp_path / "replacement"
    shutil.copyfile(weights, replacement)
    os.replace(replacement, weights)  # a new inode with the same size and mtime
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert weights.stat().st_ino != st.st_ino and weights.stat().st_mtime_ns == st.st_mtime_ns
    assert identity(folder) == first and reads == ["model.safetensors"]

    reads.clear()
    save_file({"embed.weight": np.zeros((33, 8), np.float32)}, str(weights))  # resized, retrained
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert identity(folder) != first and reads == ["model.safetensors"]


def test_a_rewritten_file_with_the_same_size_and_mtime_but_new_bytes_is_caught_by_its_inode(tmp_path, reads):
    """What a training script does: write the new checkpoint beside the old one and rename it into place."""
    folder = make_model(tmp_path / "m", seed=0)
    first = identity(folder)
    weights = folder / "model.safetensors"
    st = weights.stat()
    make_model(tmp_path / "new", seed=1)
    os.replace(tmp_path / "new" / "model.safetensors", weights)
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert identity(folder)["weights"] != first["weights"]


def test_an_unreadable_digest_cache_is_rebuilt(tmp_path, reads, digest_cache, caplog):
    folder = make_model(tmp_path / "m")
    first = identity(folder)
    digest_cache.write_text("{not json")
    reads.clear()
    with caplog.at_level(logging.WARNING, logger="factory.teachers.weights"):
        assert identity(folder) == first
    assert "digest cache" in caplog.text and "model.safetensors" in reads
    assert json.loads(digest_cache.read_text())["format"] == 1


def test_big_folders_log_progress(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(weights_mod, "PROGRESS_BYTES", 1)
    folder = make_model(tmp_path / "m")
    with caplog.at_level(logging.INFO, logger="factory.teachers.weights"):
        identity(folder)
    assert "hashing 3 model file(s)" in caplog.text and "hashed model.safetensors" in caplog.text


# -- the key format in the store --------------------------------------------------------------------------
def _old_store(path, runs, cache):
    """A store as the version before key format 2 wrote it: migrations m001 and m002 only. ``runs``:
    (id, config, invocations); ``cache``: (key, teacher name, run id, request body JSON, text)."""
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE _migrations (name VARCHAR PRIMARY KEY, applied_at TIMESTAMPTZ DEFAULT now())")
    for fn in (m001_initial, m002_filter_passes):
        fn(con)
        con.execute("INSERT INTO _migrations (name) VALUES (?)", [fn.__name__])
    for run_id, config, invocations in runs:
        con.execute(
            "INSERT INTO runs (id, name, recipe, teacher, config, config_hash, status) "
            "VALUES (?, ?, 'prompt', 't', ?, 'h', 'done')",
            [run_id, run_id, orjson.dumps(config).decode()],
        )
        for i in range(1, invocations + 1):
            con.execute("INSERT INTO run_stats (run_id, invocation) VALUES (?, ?)", [run_id, i])
    for key, teacher, run_id, request, text in cache:
        con.execute(
            "INSERT INTO cache (key, teacher, status, request, text, run_id) VALUES (?, ?, 'ok', ?, ?, ?)",
            [key, teacher, request, text, run_id],
        )
    con.close()


def _role(spec, **options):
    return {"spec": spec, "base_url": None, "options": options}


def _format1_row(role, run_id, prompt, text):
    """A cache row as format 1 wrote it: the key of the request without extra_body."""
    body = Request.chat(prompt).body()
    options = {k: v for k, v in role["options"].items() if k != "extra_body"}
    old = build_teacher(role["spec"], options).identity()
    return (request_key(old, body), role["spec"].split("@")[0], run_id, canonical_json(body).decode(), text)


def _format2_key(role, prompt):
    return request_key(
        build_teacher(role["spec"], dict(role["options"])).identity(), Request.chat(prompt).body()
    )


def test_an_older_store_rekeys_or_sets_aside_answers_sent_with_extra_body(tmp_path, caplog):
    path = tmp_path / "old.duckdb"
    url = "http://127.0.0.1:9/v1"
    gpt, gpt_extra = _role(f"openai:gpt@{url}"), _role(f"openai:gpt@{url}", extra_body={"top_k": 5})
    judge = _role("openai:judge", base_url=url)
    rows = {
        "plain": _format1_row(gpt, "plain-run", "q1", "plain answer"),
        "once": _format1_row(gpt_extra, "once-run", "q2", "top_k answer"),
        "judge": _format1_row(judge, "once-run", "q3", "judge answer"),
        "twice": _format1_row(gpt_extra, "twice-run", "q4", "top_k answer, maybe"),
        "mixed": _format1_row(gpt_extra, "mixed-run", "q5", "which one?"),
        "local": ("k-local", "vllm:m", "plain-run", "{}", "local answer"),
    }
    _old_store(
        path,
        runs=[
            ("plain-run", {"teacher": gpt, "teachers": {}}, 1),
            ("once-run", {"teacher": gpt_extra, "teachers": {"judge": judge}}, 1),
            ("twice-run", {"teacher": gpt_extra, "teachers": {}}, 2),  # extra_body may have changed between
            ("mixed-run", {"teacher": gpt_extra, "teachers": {"plain": gpt}}, 1),  # same name, same endpoint
        ],
        cache=list(rows.values()),
    )
    new_once = _format2_key(gpt_extra, "q2")
    with caplog.at_level(logging.WARNING, logger="factory.store.keyformat"), Store(path) as st:
        served = st.lookup([r[0] for r in rows.values()] + [new_once])
        retired = dict(st.con.execute("SELECT key, text FROM cache_retired").fetchall())
        fmt = st.con.execute("SELECT value FROM store_meta WHERE name = 'key_format'").fetchone()
    old = {name: r[0] for name, r in rows.items()}
    # kept: a plain run's answer (same key as before), a judge without extra_body, local rows (never asked again)
    assert {k: v["text"] for k, v in served.items()} == {
        old["plain"]: "plain answer",
        old["judge"]: "judge answer",
        old["local"]: "local answer",
        new_once: "top_k answer",  # re-keyed: the request with extra_body finds its answer, not paid twice
    }
    # the old keys of answers sent with extra_body are served no more; every such answer is kept aside
    assert retired == {
        old["once"]: "top_k answer",
        old["twice"]: "top_k answer, maybe",
        old["mixed"]: "which one?",
    }
    assert fmt == (str(KEY_FORMAT),)
    text = caplog.text
    assert "format 1 to 2" in text and "1 API answer(s) sent with extra_body now have the key" in text
    assert (
        "2 API answer(s) of runs that sent extra_body cannot be told apart" in text
        and "cache_retired" in text
    )
    assert "1 cached answer(s) of local teachers" in text and "Plain API requests keep" in text
    caplog.clear()
    with caplog.at_level(logging.WARNING), Store(path):  # moved once; the next open says nothing
        pass
    assert caplog.text == ""


@pytest.mark.parametrize(
    "role",
    [
        {"spec": "openai:gpt", "options": {"extra_body": {"top_k": 5}}},
        {"spec": "openai: gpt@http://h:1/v1/ ", "options": {}},
        {
            "spec": "openai:gpt@http://h:1/v1",
            "base_url": "http://other/v1",
            "options": {"extra_body": {"a": [1]}},
        },
        {
            "spec": "openai:gpt@http://h:1/v1",
            "base_url": "http://b/v1",
            "options": {"base_url": "http://o/v1/"},
        },
    ],
)
def test_identities_rebuilt_from_a_stored_config_match_the_teachers(role):
    cfg = TeacherConfig(**role)
    name, old, new = openai_identities(cfg.model_dump(mode="json"))
    teacher = build_teacher(cfg.spec, cfg.backend_options())
    assert new == teacher.identity() and name == teacher.name
    plain_options = {k: v for k, v in cfg.backend_options().items() if k != "extra_body"}
    assert old == build_teacher(cfg.spec, plain_options).identity()
    assert OPENAI_URL == DEFAULT_BASE_URL


def test_an_empty_older_store_moves_silently(tmp_path, caplog):
    path = tmp_path / "old.duckdb"
    _old_store(path, runs=[], cache=[])
    with caplog.at_level(logging.WARNING), Store(path, read_only=True) as st:
        assert st.con.execute("SELECT value FROM store_meta").fetchone() == (str(KEY_FORMAT),)
    assert caplog.text == ""


def test_a_store_of_a_newer_key_format_is_refused_for_writing_and_left_as_it_was(tmp_path):
    path = tmp_path / "s.duckdb"
    with Store(path) as st:
        st.commit(Batch(cache=[("k", "t", "ok", "{}", "x", "stop", 1, 1, 1.0, None, "r")]))
        st.con.execute("UPDATE store_meta SET value = ? WHERE name = 'key_format'", [str(KEY_FORMAT + 1)])
    with pytest.raises(StoreError, match=f"format {KEY_FORMAT + 1}, newer"):
        Store(path)
    with Store(path, read_only=True) as st:  # reading still works
        assert st.count_cache() == 1
        assert st.con.execute("SELECT value FROM store_meta").fetchone() == (str(KEY_FORMAT + 1),)


def test_a_trainers_own_state_is_not_hashed(tmp_path, reads):
    folder = make_model(tmp_path / "checkpoint-500")
    before = identity(folder)
    for name in (
        "optimizer.pt",
        "scheduler.pt",
        "rng_state_0.pth",
        "training_args.bin",
        "trainer_state.json",
    ):
        (folder / name).write_bytes(b"state")
    reads.clear()
    assert identity(folder) == before and reads == []


def test_an_unreadable_model_file_is_a_config_error_naming_it(tmp_path, monkeypatch):
    folder = make_model(tmp_path / "m")

    real = weights_mod._sha256

    def refuse(path):
        if path.name == "model.safetensors":
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(weights_mod, "_sha256", refuse)
    with pytest.raises(ConfigError, match=r"model\.safetensors.*Permission denied.*readable"):
        identity(folder)


def test_the_digest_is_taken_when_the_teacher_is_built(tmp_path, reads):
    """So that an unreadable model stops a run before the store records it."""
    folder = make_model(tmp_path / "m")
    build_teacher(f"vllm:{folder}")
    assert "model.safetensors" in reads
