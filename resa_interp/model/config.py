"""What `info` and `attach` take: which model, which adapter, in which precision (a docstring under every field,
which is also its `--help`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class InfoConfig:
    """Which model `info` describes, and how it is loaded to find out."""

    model: str | None = None
    """Model spec: HF directory, .gguf file, hub id (org/name), or smollm2-135m; unset: the embedded default
    (SmolLM2-135M-Instruct)."""
    adapter: str | None = None
    """peft LoRA adapter folder merged into the model on load (tune writes OUT/adapter/)."""
    device: str = "cpu"
    """Device to load the model on: cpu, cuda, cuda:N or auto (CUDA when present)."""
    dtype: str = "float32"
    """Model dtype: float32, bfloat16 or float16 (bfloat16 wants a GPU)."""


@dataclass(frozen=True)
class AttachConfig:
    """Which adapter `attach` merges into which model, and the merged model's dtype."""

    adapter: str
    """peft LoRA adapter folder (tune writes OUT/adapter/), trained on a model of the same architecture."""
    model: str | None = None
    """Model to attach it to: HF directory, .gguf file, hub id (org/name), or smollm2-135m; unset: the embedded
    default (SmolLM2-135M-Instruct)."""
    dtype: str = "auto"
    """dtype the merged model is saved in: float32, bfloat16 or float16, or auto (the checkpoint's own dtype); the
    merge itself is float32."""
