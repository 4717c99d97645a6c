"""Shared fixtures: tiny random models (built once per session) and the embedded model (loaded once)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch

from resa_interp.model.tiny import build_tiny_model


@pytest.fixture(scope="session")
def tiny_qwen2(tmp_path_factory) -> str:
    """Tiny Qwen2 (untied embeddings, rope theta 31000) with single-token <think>/</think>."""
    return str(build_tiny_model(tmp_path_factory.mktemp("tiny") / "qwen2", "qwen2"))


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> str:
    """Tiny Llama (tied embeddings)."""
    return str(build_tiny_model(tmp_path_factory.mktemp("tiny") / "llama", "llama"))


@pytest.fixture(scope="session")
def embedded():
    """The embedded SmolLM2-135M-Instruct, loaded once for the whole session."""
    from resa_interp.model.subject import load_subject

    torch.manual_seed(0)
    return load_subject()


@pytest.fixture
def cli(capsys, monkeypatch):
    """Run the console entry point in-process: cli([...]) -> (exit code, stdout, stderr)."""
    import sys

    from resa_interp import cli as cli_module

    def run(args: list[str]) -> tuple[int, str, str]:
        capsys.readouterr()
        monkeypatch.setattr(sys, "argv", ["resa-interp", *args])
        try:
            cli_module.main()
            code = 0
        except SystemExit as exc:
            code = int(exc.code or 0)
        out = capsys.readouterr()
        return code, out.out, out.err

    return run
