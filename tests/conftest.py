"""Shared fixtures: tiny random models (built once per session) and the embedded model (loaded once)."""

from __future__ import annotations

import io
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


class _Payload:
    """Unpickling this runs `code`: what a malicious checkpoint does to a reader that unpickles it."""

    def __init__(self, code: str):
        self.code = code

    def __reduce__(self):
        return exec, (self.code,)


@pytest.fixture
def pickle_payload(tmp_path):
    """payload(marker) -> the bytes of a torch checkpoint whose unpickling creates the file `marker`; the fixture
    checks that the payload is live (torch.load(..., weights_only=False) on it does create the marker)."""

    def make(marker) -> bytes:
        buffer = io.BytesIO()
        torch.save({"state": _Payload(f"open({str(marker)!r}, 'w').write('pwned')")}, buffer)
        probe = tmp_path / "probe.pt"
        probe.write_bytes(buffer.getvalue())
        torch.load(probe, weights_only=False)
        assert os.path.exists(marker), "the payload did not run: the test below would prove nothing"
        os.remove(marker)
        return buffer.getvalue()

    return make
