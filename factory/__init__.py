"""A synthetic dataset factory for LLM distillation.

``import factory`` stays light: no torch, vllm or transformers until a local engine is used.
``factory.run(config, seeds=...)`` runs from a notebook or a script (see factory.notebook).
"""

from typing import Any

__version__ = "0.1.0"


def run(config: Any, seeds: Any = None, **kwargs: Any) -> Any:
    """Run (or resume) a config with seeds given as Python objects; see :func:`factory.notebook.run`."""
    from factory.notebook import run as _run

    return _run(config, seeds, **kwargs)
