"""A synthetic dataset factory for LLM distillation.

``import factory`` stays light: no torch, vllm or transformers until a local engine is used.
"""

__version__ = "0.1.0"
