"""Thin student fine-tuning on exported corpora (transformers/TRL; LoRA through peft optional)."""
