"""Outputs: temporaries of killed exports are swept by the next one (a live one is left alone); exports,
reports and converted models get the user's umask modes; a closed stdout exits quietly."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from test_store_damage import made  # noqa: F401 - the module fixture: a store with one finished run

from factory.export import export_run
from factory.outputs import _host, sweep_stale
from factory.report import write_report
from factory.store import Store


@pytest.fixture
def store(made: Path, tmp_path: Path) -> Path:  # noqa: F811
    shutil.copy(made / "store.duckdb", tmp_path / "store.duckdb")
    return tmp_path / "store.duckdb"


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def leftover(folder: Path, name: str) -> Path:
    """A temporary folder as an export killed mid-way leaves it: a parquet chunk half written."""
    d = folder / name
    (d / "data").mkdir(parents=True)
    (d / "data" / "train-00000.parquet.part").write_bytes(b"PAR1" + b"\0" * 1000)
    d.chmod(0o700)
    return d


def test_the_next_export_removes_a_killed_exports_temp_folder_and_not_a_live_one(store: Path, tmp_path: Path):
    host = _host()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        dead = leftover(tmp_path, f".o.export-{host}-{dead_pid()}-k1ll3d")
        alive = leftover(tmp_path, f".o.export-{host}-{live.pid}-busy")
        other_host = leftover(tmp_path, f".o.export-otherhost-{dead_pid()}-remote")
        other_kind = leftover(tmp_path, f".o.report-{host}-{dead_pid()}-notmine")
        other_target = leftover(tmp_path, f".o2.export-{host}-{dead_pid()}-notmine")
        users = leftover(tmp_path, ".o.backup")

        with Store(store, read_only=True) as st:
            res = export_run(st, st.resolve_run(None), tmp_path / "o")

        assert res.rows == 5 and (tmp_path / "o" / "README.md").is_file()
        assert not dead.exists()
        for kept in (alive, other_host, other_kind, other_target, users):
            assert kept.is_dir(), kept
        hidden = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".o."))
        assert hidden == sorted(
            p.name for p in (alive, other_host, other_kind, users)
        )  # its own temp is gone
    finally:
        live.kill()
        live.wait()
    assert sweep_stale(tmp_path / "o", "export") == [alive]  # once its process is gone, it goes too


def test_a_killed_reports_temp_file_is_removed_by_the_next_report(store: Path, tmp_path: Path):
    stale = tmp_path / f".r.html.report-{_host()}-{dead_pid()}-abc123"
    stale.write_text("<html>half")
    with Store(store, read_only=True) as st:
        write_report(st, st.resolve_run(None), tmp_path / "r.html", map_points=0)
    assert not stale.exists() and (tmp_path / "r.html").is_file()


def _modes(root: Path) -> set[tuple[str, int]]:
    paths = [root, *root.rglob("*")] if root.is_dir() else [root]
    return {("d" if p.is_dir() else "f", stat.S_IMODE(p.stat().st_mode)) for p in paths}


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_exports_and_reports_get_the_umask_modes(store: Path, tmp_path: Path, umask: int):
    old = os.umask(umask)
    try:
        with Store(store, read_only=True) as st:
            run_id = st.resolve_run(None)
            export_run(st, run_id, tmp_path / "hf")
            export_run(st, run_id, tmp_path / "jl", fmt="jsonl")
            export_run(st, run_id, tmp_path / "hf", overwrite=True)  # replaced in place: same modes
            write_report(st, run_id, tmp_path / "r.html", map_points=0)
    finally:
        os.umask(old)
    dirs, files = 0o777 & ~umask, 0o666 & ~umask
    for out in ("hf", "jl"):
        assert _modes(tmp_path / out) == {("d", dirs), ("f", files)}, out
    assert _modes(tmp_path / "r.html") == {("f", files)}


def test_the_converted_embedded_model_gets_the_umask_modes(tmp_path: Path, monkeypatch):
    """The conversion's temporary folder is made by mkdtemp (0700); the model folder must not stay so."""
    from factory.teachers import embedded

    monkeypatch.setattr(embedded, "gguf_path", lambda: tmp_path / "m.gguf")
    monkeypatch.setattr(embedded, "_source_stamp", lambda gguf: {"fake": 1})
    monkeypatch.setattr(embedded, "_convert", lambda gguf, out: (out / "config.json").write_text("{}"))
    old = os.umask(0o022)
    try:
        target = embedded.ensure_safetensors(tmp_path / "cache")
    finally:
        os.umask(old)
    assert _modes(target) == {("d", 0o755), ("f", 0o644)}


@pytest.mark.parametrize(
    "argv", [("status", "--store"), ("status", "--all", "--store"), ("doctor", "--store"), ("recipes", "-v")]
)
def test_a_closed_pipe_exits_quietly(store: Path, argv):
    """`factory status | head -1`: the reader goes away; no BrokenPipeError traceback, exit 0 or 141."""
    cmd = [sys.executable, "-m", "factory.cli", *argv, *([str(store)] if argv[-1] == "--store" else [])]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert p.stdout is not None and p.stderr is not None
    p.stdout.close()  # before the command has written anything: every write meets a closed pipe
    err = p.stderr.read().decode()
    assert p.wait(timeout=120) == 141
    assert err == ""

    shell = subprocess.run(
        f"{' '.join(cmd)} | head -1", shell=True, capture_output=True, text=True, timeout=120
    )
    assert shell.returncode == 0 and shell.stderr == "" and len(shell.stdout.splitlines()) == 1


def test_an_export_set_aside_by_a_killed_swap_is_moved_back_not_deleted(store: Path, tmp_path: Path):
    """Killed between the swap's two renames: the previous export sits aside as `...-old`, --out is gone.
    The next export moves it back first, so a refusal (no --overwrite) leaves the user's export in place."""
    from factory.errors import ConfigError

    aside = leftover(tmp_path, f".o.export-{_host()}-{dead_pid()}-swap-old")
    (aside / "README.md").write_text("the previous export")
    with Store(store, read_only=True) as st, pytest.raises(ConfigError, match="exists and is not empty"):
        export_run(st, st.resolve_run(None), tmp_path / "o")
    assert not aside.exists() and (tmp_path / "o" / "README.md").read_text() == "the previous export"
    with Store(store, read_only=True) as st:
        export_run(st, st.resolve_run(None), tmp_path / "o", overwrite=True)
    assert "the previous export" not in (tmp_path / "o" / "README.md").read_text()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".o.export-")]


def test_an_export_that_runs_out_of_room_is_one_message_and_replaces_nothing(store: Path, tmp_path: Path):
    """A full disk, reproduced with a file-size limit (RLIMIT_FSIZE; Python ignores SIGXFSZ, so writes fail
    with EFBIG): one message, the earlier export kept as it was, no temporary left."""
    import resource

    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "keep.txt").write_text("the earlier export")

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (2000, 2000))

    cmd = [sys.executable, "-m", "factory.cli", "export", "--store", str(store), "--out", "o", "--overwrite"]
    out = subprocess.run(cmd, cwd=tmp_path, preexec_fn=limit, capture_output=True, text=True, timeout=120)
    assert out.returncode == 1, out.stderr
    lines = [x for x in out.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    assert lines[0].startswith("error: cannot write the export to ") and "File too large" in lines[0], lines[
        0
    ]
    assert "Nothing was replaced" in lines[0] and "is as it was" in lines[0]
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["keep.txt"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".o.")]
