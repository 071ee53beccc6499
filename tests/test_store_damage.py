"""A damaged store or journal: one message (exit 3) naming the file and `factory doctor`, nothing changed;
`factory doctor --repair` recovers the journal's good answers and sets the bad lines aside.

Real DuckDB files made by the CLI, damaged with real bytes; real journal segments in the store's format."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import orjson
import pytest
from test_bad_input_corpus import SCRIPTED, factory_cli, store_state

from factory.store import CACHE_COLUMNS

BLOCK, HEADER = 262_144, 3 * 4096  # DuckDB's block size and file headers


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> Path:
    """A folder with a config and a store holding one finished run (`dmg`), made by the CLI."""
    d = tmp_path_factory.mktemp("damage")
    (d / "seeds.jsonl").write_text("".join(f'{{"id": "s{i}", "text": "topic {i}"}}\n' for i in range(5)))
    (d / "c.yaml").write_text(
        f"name: dmg\nrecipe: prompt\nseeds: seeds.jsonl\nstore: store.duckdb\nteacher: {SCRIPTED}\n"
        "params: {template: 'Write about {{ text }}'}\n"
    )
    out = factory_cli("run", "c.yaml", cwd=d)
    assert out.returncode == 0, out.stderr
    return d


@pytest.fixture
def work(made: Path, tmp_path: Path) -> Path:
    for name in ("seeds.jsonl", "c.yaml", "store.duckdb"):
        shutil.copy(made / name, tmp_path / name)
    return tmp_path


def truncate_1mb(store: Path) -> None:
    with open(store, "r+b") as f:
        f.truncate(store.stat().st_size - 1_000_000)


def corrupt_blocks(store: Path) -> None:
    """Overwrite 64 bytes inside every data block: each block's stored checksum no longer matches."""
    size = store.stat().st_size
    with open(store, "r+b") as f:
        for start in range(HEADER, size, BLOCK):
            f.seek(start + 4096)
            f.write(b"\xde\xad\xbe\xef" * 16)


def one_message(out: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in out.stderr, out.stderr
    lines = [x for x in out.stderr.splitlines() if x.strip() and not x.startswith("WARNING")]
    assert len(lines) == 1, out.stderr
    return lines[0]


@pytest.mark.parametrize("damage", [truncate_1mb, corrupt_blocks], ids=["truncated-1mb", "corrupt-blocks"])
@pytest.mark.parametrize(
    "argv",
    [
        ("status",),
        ("export", "--out", "o"),
        ("run", "c.yaml"),
        ("report", "--out", "r.html", "--map-points", "0"),
    ],
    ids=["status", "export", "run", "report"],
)
def test_a_damaged_store_is_one_message_and_left_alone(work: Path, damage, argv):
    store = work / "store.duckdb"
    damage(store)
    before = store_state(store)
    args = argv if argv[0] == "run" else (*argv, "--store", "store.duckdb")

    out = factory_cli(*args, cwd=work)

    assert out.returncode == 3, (out.returncode, out.stderr[-2000:])
    msg = one_message(out)
    assert msg.startswith("error: the store ") and "store.duckdb is damaged" in msg, msg
    assert "factory doctor --store" in msg and "nothing was changed" in msg, msg
    assert store_state(store) == before
    assert not (work / "o").exists() and not (work / "r.html").exists()


def test_doctor_reports_which_tables_read_and_changes_nothing(work: Path):
    store = work / "store.duckdb"
    out = factory_cli("doctor", "--store", "store.duckdb", cwd=work)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "FAIL" not in out.stdout and "table cache: 5 rows" in out.stdout

    truncate_1mb(store)
    before = store_state(store)
    out = factory_cli("doctor", "--store", "store.duckdb", "--json", cwd=work)
    assert out.returncode == 3
    report = orjson.loads(out.stdout)
    failed = [c["what"] for c in report["checks"] if not c["ok"]]
    assert failed and all(w.startswith(("table ", "migrations")) for w in failed), report
    assert any(c["ok"] for c in report["checks"] if c["what"].startswith("table ")), report  # some still read
    assert "restore" in out.stderr and "Traceback" not in out.stderr
    assert store_state(store) == before


def _row(key: str | None, **change) -> bytes:
    row = dict(zip(CACHE_COLUMNS, [key, "scripted:x", "ok", "{}", f"answer {key}", "stop", 3, 4, 5.0, None, "r", None, None],
                   strict=True))  # fmt: skip
    row.update(change)
    return orjson.dumps([row[c] for c in CACHE_COLUMNS]) + b"\n"


BAD_LINES = [
    _row("kbad1", prompt_tokens="many"),  # a wrong type: today's replay fails on every open
    _row(None),  # a damaged line: the key is gone (NOT NULL)
    b'{"key": "half\n',  # not JSON
    orjson.dumps(["too", "short"]) + b"\n",
]


def test_journal_with_bad_lines_stops_resume_then_doctor_repair_recovers_the_rest(work: Path):
    store = work / "store.duckdb"
    jdir = work / "store.duckdb.journal"
    jdir.mkdir(exist_ok=True)
    good = [_row("kgood1"), _row("kgood2"), _row("kgood3")]
    (jdir / "seg-111-00000001.jsonl").write_bytes(good[0] + BAD_LINES[0] + good[1] + BAD_LINES[1])
    (jdir / "seg-222-00000001.jsonl").write_bytes(BAD_LINES[2] + good[2] + BAD_LINES[3] + b'["torn, in fl')
    before = store_state(store)

    out = factory_cli("run", "c.yaml", cwd=work)
    assert out.returncode == 3, out.stderr
    msg = one_message(out)
    assert "holds 4 unreadable line(s)" in msg and "3 good answer(s)" in msg, msg
    assert "prompt_tokens is str" in msg and "factory doctor --store" in msg and "--repair" in msg, msg
    assert store_state(store) == before  # nothing replayed, nothing written

    out = factory_cli("doctor", "--store", "store.duckdb", cwd=work)
    assert out.returncode == 3 and "4 unreadable line(s)" in out.stdout and "key is missing" in out.stdout
    assert store_state(store) == before

    out = factory_cli("doctor", "--store", "store.duckdb", "--repair", cwd=work)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "set 4 unreadable line(s) aside" in out.stdout and "committed 3 answer(s)" in out.stdout
    rejected = (work / "store.duckdb.journal.rejected").read_bytes()
    # byte for byte; the torn last line was in flight and is not among them
    assert sorted(rejected.splitlines(keepends=True)) == sorted(BAD_LINES)
    assert not list(jdir.glob("seg-*"))
    con = duckdb.connect(str(store), read_only=True)
    try:
        keys = {r[0] for r in con.execute("SELECT key FROM cache WHERE key LIKE 'kgood%'").fetchall()}
        assert keys == {"kgood1", "kgood2", "kgood3"}
        assert con.execute("SELECT count(*) FROM cache WHERE key = 'kbad1'").fetchone() == (0,)
    finally:
        con.close()
    out = factory_cli("run", "c.yaml", cwd=work)  # resumes again
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize("kind", ["journal-is-a-file", "segment-is-a-folder"])
def test_a_journal_path_of_the_wrong_kind_is_one_message(work: Path, kind: str):
    jdir = work / "store.duckdb.journal"
    shutil.rmtree(jdir, ignore_errors=True)
    if kind == "journal-is-a-file":
        jdir.write_text("not a folder")
    else:
        (jdir / "seg-1-00000001.jsonl").mkdir(parents=True)
    before = store_state(work / "store.duckdb")
    out = factory_cli("run", "c.yaml", cwd=work)
    assert out.returncode == 3, out.stderr
    msg = one_message(out)
    assert "store.duckdb.journal" in msg and "nothing was changed" in msg and "Move it" in msg, msg
    assert store_state(work / "store.duckdb") == before


def _read_only_run(work: Path) -> subprocess.CompletedProcess[str] | None:
    """`factory run` with the store's folder read-only: chmod for a normal user; for root, whom permissions
    do not stop, a read-only bind mount in a private mount namespace (None when the system allows none)."""
    cmd = [sys.executable, "-m", "factory.cli", "run", "c.yaml"]
    if os.geteuid() != 0:
        work.chmod(0o555)
        try:
            return subprocess.run(cmd, capture_output=True, text=True, cwd=work, timeout=120)
        finally:
            work.chmod(0o755)
    unshare = shutil.which("unshare")
    if unshare is None:
        return None
    script = 'mount --bind "$1" "$1" && mount -o remount,ro,bind "$1" && shift && exec "$@"'
    out = subprocess.run([unshare, "-m", "sh", "-c", script, "sh", str(work), *cmd],
                         capture_output=True, text=True, cwd=work, timeout=120)  # fmt: skip
    if "mount:" in out.stderr or "unshare:" in out.stderr:
        return None
    return out


def test_a_read_only_store_folder_is_one_message(work: Path):
    before = store_state(work / "store.duckdb")
    out = _read_only_run(work)
    if out is None:
        pytest.skip("running as root without mount namespaces: no way to make a folder read-only for root")
    assert out.returncode == 3, out.stderr
    msg = one_message(out)
    assert "cannot write to the store" in msg and "is read-only" in msg and "--store" in msg, msg
    assert store_state(work / "store.duckdb") == before
