"""`factory push` through the real CLI against a local fake Hub (factory/testing/hub_server.py) that speaks
the endpoints huggingface_hub uses: repo create and info, tree listing, preupload, LFS batch + upload, commit,
resolve."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import SEEDS, write_config

from factory import api
from factory.teachers.scripted import ScriptedTeacher
from factory.testing.hub_server import serve_in_thread

TOKEN = "hf_testtoken_8c1f2a9d7e"
LICENSED = "ex"
UNLICENSED = "nolic"


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> dict[str, Path]:
    """One store with two runs of 16 records from 8 seeds (scripted teacher): `ex`, licensed and exported the
    real way (`factory export`) to a folder with a train and a test split, and `nolic`, without a license."""
    tmp = tmp_path_factory.mktemp("made")
    seeds = tmp / "seeds.jsonl"
    seeds.write_text("\n".join(SEEDS.read_text(encoding="utf-8").splitlines()[:8]) + "\n", encoding="utf-8")
    store = tmp / "s.duckdb"
    for name, extra in ((LICENSED, "license: cc-by-4.0\n"), (UNLICENSED, "")):
        cfg = write_config(
            tmp,
            f"name: {name}\nrecipe: rationales\nseeds: {seeds}\nstore: {store}\nteacher: scripted:x\n"
            f"params: {{k: 2}}\ncuration: {{recipe_filters: false}}\nexport: {{splits: {{train: 0.5, test: 0.5}}}}\n"
            f"{extra}",
            name=f"{name}.yaml",
        )
        teacher = ScriptedTeacher(
            "scripted:x", "x", {"fn": lambda r: f"Steps {r.sample_index}. The answer is 28."}
        )
        asyncio.run(api.run_async(api.prepare(cfg), teacher=teacher))
    out = subprocess.run(
        [sys.executable, "-m", "factory.cli", "export", LICENSED, "--store", str(store), "--out", str(tmp / "hf")],
        capture_output=True, text=True, cwd=tmp, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    return {"store": store, "export": tmp / "hf"}


@pytest.fixture
def hub():
    with serve_in_thread(token=TOKEN, user="me") as h:
        yield h


@pytest.fixture
def export(made, tmp_path) -> Path:
    """A fresh copy of the exported folder for one test."""
    return Path(shutil.copytree(made["export"], tmp_path / "export"))


def _env(tmp_path: Path, endpoint: str, token: str | None = TOKEN) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    home = tmp_path / "hf-home"
    home.mkdir(exist_ok=True)
    # The fake Hub speaks LFS, not Xet; HF_HUB_OFFLINE=0 overrides the TRANSFORMERS_OFFLINE set by conftest.
    env.update(HF_ENDPOINT=endpoint, HF_HOME=str(home), HF_HUB_DISABLE_XET="1", HF_HUB_OFFLINE="0")
    if token is not None:
        env["HF_TOKEN"] = token
    return env


def _cli(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "factory.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=120,
    )


def _files(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for name, data in _files(folder).items():
        h.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
    return h.hexdigest()


def _no_token_anywhere(*texts: str, folders: tuple[Path, ...]) -> None:
    for text in texts:
        assert TOKEN not in text
    for folder in folders:
        for name, data in _files(folder).items():
            assert TOKEN.encode() not in data, f"the token was written to {folder / name}"


def test_push_sends_the_export_byte_identical_in_one_commit(export, hub, tmp_path):
    before = _digest(export)
    res = _cli("push", str(export), "--repo-id", "me/demo", env=_env(tmp_path, hub.endpoint), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "pushed 4 files to me/demo (public)" in res.stdout and "/datasets/me/demo/commit/" in res.stdout
    repo = hub.repo("me/demo")
    assert repo is not None and not repo.private
    local = _files(export)
    assert set(local) == {
        "README.md",
        "funnel.svg",
        "data/train-00000-of-00001.parquet",
        "data/test-00000-of-00001.parquet",
    }
    assert {p: repo.files[p] for p in local} == local  # byte-identical
    assert set(repo.files) == set(local) | {".gitattributes"}  # the repo's own file is left alone
    assert repo.lfs_paths == {p for p in local if p.endswith(".parquet")}  # the parquet went the LFS way
    assert len(repo.commits) == 2  # the repo's initial commit, then one for the whole export

    from huggingface_hub import DatasetCard

    card = DatasetCard(repo.files["README.md"].decode())
    assert card.data.license == "cc-by-4.0"
    assert {f["split"] for f in card.data.configs[0]["data_files"]} == {"train", "test"}
    assert _digest(export) == before
    _no_token_anywhere(res.stdout, res.stderr, folders=(export, tmp_path / "hf-home"))


def test_pushing_again_makes_no_commit_and_changes_go_in_one(export, tmp_path):
    with serve_in_thread(token=TOKEN, page_size=1) as hub:  # the tree listing comes in pages of one
        env = _env(tmp_path, hub.endpoint)
        assert _cli("push", str(export), "--repo-id", "me/demo", env=env, cwd=tmp_path).returncode == 0
        commits = len(hub.repo("me/demo").commits)
        calls = len(hub.requests)

        again = _cli("push", str(export), "--repo-id", "me/demo", env=env, cwd=tmp_path)
        assert again.returncode == 0, again.stderr
        assert "already holds this export; no commit made" in again.stdout
        assert len(hub.repo("me/demo").commits) == commits
        sent = [path for _, path in hub.requests[calls:]]
        assert not [p for p in sent if "/commit/" in p or "/preupload/" in p or "/lfs/" in p]

        # A changed card and a split that is gone: one commit uploads the card and deletes the stale shard.
        card = export / "README.md"
        card.write_text(card.read_text(encoding="utf-8") + "\nEdited.\n", encoding="utf-8")
        (export / "data" / "test-00000-of-00001.parquet").unlink()
        changed = _cli("push", str(export), "--repo-id", "me/demo", env=env, cwd=tmp_path)
        assert changed.returncode == 0, changed.stderr
        assert "pushed 1 file, deleted 1 to me/demo" in changed.stdout
        repo = hub.repo("me/demo")
        assert len(repo.commits) == commits + 1
        assert set(repo.files) == {
            ".gitattributes",
            "README.md",
            "funnel.svg",
            "data/train-00000-of-00001.parquet",
        }
        assert repo.files["README.md"] == card.read_bytes()


def test_private_is_passed_through_and_never_published(export, hub, tmp_path):
    env = _env(tmp_path, hub.endpoint)
    res = _cli("push", str(export), "--repo-id", "me/secret", "--private", env=env, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "(private)" in res.stdout and hub.repo("me/secret").private

    assert _cli("push", str(export), "--repo-id", "me/open", env=env, cwd=tmp_path).returncode == 0
    (export / "README.md").write_text("---\nlicense: mit\n---\nnew\n", encoding="utf-8")
    refused = _cli("push", str(export), "--repo-id", "me/open", "--private", env=env, cwd=tmp_path)
    assert refused.returncode == 2
    assert "already exists and is public" in refused.stderr
    assert len(hub.repo("me/open").commits) == 2


def test_missing_token_is_one_clear_error_and_creates_nothing(export, hub, tmp_path):
    res = _cli(
        "push",
        str(export),
        "--repo-id",
        "me/demo",
        env=_env(tmp_path, hub.endpoint, token=None),
        cwd=tmp_path,
    )
    assert res.returncode == 2
    assert res.stderr.startswith("error: no Hugging Face token found") and res.stderr.count("\n") == 1
    assert "HF_TOKEN" in res.stderr and "huggingface-cli login" in res.stderr
    assert hub.requests == [] and hub.repo("me/demo") is None


def test_a_rejected_token_is_a_config_error(export, hub, tmp_path):
    wrong = "hf_wrong_0123456789"
    res = _cli(
        "push",
        str(export),
        "--repo-id",
        "me/demo",
        env=_env(tmp_path, hub.endpoint, token=wrong),
        cwd=tmp_path,
    )
    assert res.returncode == 2
    assert "rejected the token (HTTP 401)" in res.stderr and wrong not in res.stderr + res.stdout
    assert hub.repo("me/demo") is None


def test_missing_license_changes_nothing(export, hub, tmp_path):
    card = export / "README.md"
    card.write_text(card.read_text(encoding="utf-8").replace("license: cc-by-4.0\n", ""), encoding="utf-8")
    res = _cli("push", str(export), "--repo-id", "me/demo", env=_env(tmp_path, hub.endpoint), cwd=tmp_path)
    assert res.returncode == 2
    assert "no `license:`; set `license:` in the run config and export again" in res.stderr
    assert hub.requests == []


@pytest.mark.parametrize(
    "repo_id, message",
    [
        ("demo", "--repo-id 'demo' is not a Hub dataset id: write OWNER/NAME"),
        ("me/demo/x", "is not a Hub dataset id"),
        ("me/de..mo", "is not a Hub dataset id"),
        ("someone-else/demo", "--repo-id someone-else/demo: the Hub refused the write (HTTP 403"),
    ],
)
def test_bad_repo_id(export, hub, tmp_path, repo_id, message):
    res = _cli("push", str(export), "--repo-id", repo_id, env=_env(tmp_path, hub.endpoint), cwd=tmp_path)
    assert res.returncode == 2 and message in res.stderr, res.stderr
    if "someone-else" in repo_id:
        assert hub.repo(repo_id) is None
    else:
        assert hub.requests == []  # refused before anything is sent


def test_not_an_export_folder(tmp_path, hub):
    empty = tmp_path / "empty"
    empty.mkdir()
    env = _env(tmp_path, hub.endpoint)
    res = _cli("push", str(empty), "--repo-id", "me/demo", env=env, cwd=tmp_path)
    assert res.returncode == 2 and "README.md: missing" in res.stderr
    res = _cli("push", str(empty), "--repo-id", "me/demo", "--out", "x", env=env, cwd=tmp_path)
    assert res.returncode == 2 and "--out: only with a run" in res.stderr
    assert hub.requests == []


def test_failed_commit_keeps_the_export_and_names_the_command_to_rerun(export, tmp_path):
    with serve_in_thread(token=TOKEN, fail_commits=True) as hub:
        env = _env(tmp_path, hub.endpoint)
        before = _digest(export)
        res = _cli("-vv", "push", str(export), "--repo-id", "me/demo", env=env, cwd=tmp_path)
        assert res.returncode != 0 and res.returncode != 2
        [err] = [line for line in res.stderr.splitlines() if line.startswith("error: ")]
        assert "HTTP 500" in err and "injected fault" in err
        rerun = f"factory push {export} --repo-id me/demo"
        assert f"The local export at {export} is intact; to retry, run: {rerun}" in err
        assert _digest(export) == before
        assert len(hub.repo("me/demo").commits) == 1  # only the repo's initial commit
        _no_token_anywhere(res.stdout, res.stderr, folders=(tmp_path,))  # the export, HF_HOME, all

        hub.set_faults(fail_commits=False)
        argv = shlex.split(err.split("to retry, run: ", 1)[1])
        assert argv[:2] == ["factory", "push"]
        retry = _cli(*argv[1:], env=env, cwd=tmp_path)
        assert retry.returncode == 0, retry.stderr
        assert {p: hub.repo("me/demo").files[p] for p in _files(export)} == _files(export)


def test_unreachable_hub(export, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again before the push: nothing listens there
    res = _cli(
        "push",
        str(export),
        "--repo-id",
        "me/demo",
        env=_env(tmp_path, f"http://127.0.0.1:{port}"),
        cwd=tmp_path,
    )
    assert res.returncode not in (0, 2)
    assert f"could not talk to the Hub at http://127.0.0.1:{port}" in res.stderr
    assert f"The local export at {export} is intact" in res.stderr


def test_what_arrives_downloads_back_and_loads_with_datasets(export, hub, tmp_path):
    env = _env(tmp_path, hub.endpoint)
    assert (
        _cli("push", str(export), "--repo-id", "me/demo", "--private", env=env, cwd=tmp_path).returncode == 0
    )
    script = (
        "import json, sys\n"
        "import datasets\n"
        "from huggingface_hub import snapshot_download\n"
        "path = snapshot_download('me/demo', repo_type='dataset', local_dir=sys.argv[1])\n"
        "ds = datasets.load_dataset(path, cache_dir=sys.argv[1] + '-cache')\n"
        "print(json.dumps({split: list(ds[split]['record_id']) for split in ds}))\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "down")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout.strip().splitlines()[-1])
    want = {
        p.name.split("-")[0]: pq.read_table(p).column("record_id").to_pylist()
        for p in sorted((export / "data").glob("*.parquet"))
    }
    assert got == want and sum(map(len, got.values())) == 16
    downloaded = {p: b for p, b in _files(tmp_path / "down").items() if not p.startswith(".")}
    assert downloaded == _files(export)


def test_push_a_run_exports_it_first(made, hub, tmp_path):
    env = _env(tmp_path, hub.endpoint)
    store = str(made["store"])
    res = _cli("push", LICENSED, "--repo-id", "me/demo", "--store", store, env=env, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    out = tmp_path / "out" / LICENSED  # no export.out in the config: out/<run name>
    assert f"exported 16 records to {out}" in res.stdout
    assert {p: hub.repo("me/demo").files[p] for p in _files(out)} == _files(out)
    assert _files(out) == _files(made["export"])  # the same export as `factory export` wrote

    elsewhere = tmp_path / "elsewhere"
    res = _cli(
        "push",
        LICENSED,
        "--repo-id",
        "me/demo",
        "--store",
        store,
        "--out",
        str(elsewhere),
        env=env,
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr
    assert "no commit made" in res.stdout and (elsewhere / "README.md").is_file()


def test_push_a_run_without_license_exports_nothing(made, hub, tmp_path):
    env = _env(tmp_path, hub.endpoint)
    res = _cli(
        "push", UNLICENSED, "--repo-id", "me/demo", "--store", str(made["store"]), env=env, cwd=tmp_path
    )
    assert res.returncode == 2
    assert "set `license:` in the run config and export again" in res.stderr
    assert not (tmp_path / "out").exists() and hub.requests == []


def test_the_fake_hub_answers_the_clients_other_calls(export, tmp_path):
    """Inline (non-LFS) uploads, paths-info, a one-level tree listing and a download at a commit id."""
    with serve_in_thread(token=TOKEN, lfs=False) as hub:
        env = _env(tmp_path, hub.endpoint)
        res = _cli("push", str(export), "--repo-id", "me/demo", env=env, cwd=tmp_path)
        assert res.returncode == 0, res.stderr
        repo = hub.repo("me/demo")
        assert (
            repo.lfs_paths == frozenset() and repo.files["README.md"] == (export / "README.md").read_bytes()
        )
        script = (
            "import json, sys\n"
            "from huggingface_hub import HfApi, hf_hub_download\n"
            "api = HfApi()\n"
            "info = api.get_paths_info('me/demo', ['README.md', 'data', 'nope'], repo_type='dataset')\n"
            "top = sorted(e.path for e in api.list_repo_tree('me/demo', repo_type='dataset'))\n"
            "sha = api.dataset_info('me/demo').sha\n"
            "card = hf_hub_download('me/demo', 'README.md', repo_type='dataset', revision=sha,\n"
            "                       cache_dir=sys.argv[1])\n"
            "print(json.dumps({'info': sorted(type(e).__name__ + ':' + e.path for e in info), 'top': top,\n"
            "                  'card': open(card).read()}))\n"
        )
        out = subprocess.run(
            [sys.executable, "-c", script, str(tmp_path / "cache")],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        got = json.loads(out.stdout.strip().splitlines()[-1])
        assert got["info"] == ["RepoFile:README.md", "RepoFolder:data"]
        assert got["top"] == [".gitattributes", "README.md", "data", "funnel.svg"]
        assert got["card"] == (export / "README.md").read_text(encoding="utf-8")


def test_a_run_config_names_the_run_and_its_store(made, hub, tmp_path):
    """`--config` (or the config file as RUN) finds the store the config names, from any folder."""
    cfg = made["store"].parent / f"{LICENSED}.yaml"
    env = _env(tmp_path, hub.endpoint)
    res = _cli("push", "--config", str(cfg), "--repo-id", "me/bycfg", "--out", "o1", env=env, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert f"exported 16 records to {tmp_path / 'o1'}" in res.stdout and "pushed " in res.stdout
    res = _cli("push", str(cfg), "--repo-id", "me/bycfg", "--out", "o2", env=env, cwd=tmp_path)
    assert res.returncode == 0 and "already holds this export; no commit made" in res.stdout, res.stderr
    res = _cli("push", "--repo-id", "me/bycfg", env=env, cwd=tmp_path)
    assert res.returncode == 2 and "RUN|DIR: give an export folder, a run, or --config" in res.stderr
