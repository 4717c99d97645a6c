"""Shared fixtures: tiny random models (built once per session), one tiny Stage I run on them (trained once per
session) with the factory of its config, and the embedded model (loaded once)."""

from __future__ import annotations

import io
import os
import shutil

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch

from resa_interp.model.tiny import build_tiny_model
from resa_interp.sae import SAETrainConfig, StageIResult, train_saes

TINY_TRAIN = dict(
    expansion_factor=4, k=8, tokens=3072, batch_tokens=256, buffer_tokens=1024, seq_batch=8, heldout=4,
    n_examples=60, lr=3e-3, layers="1,2",
)
"""The shared tiny run's settings (on tiny_qwen2): 3,072 tokens per SAE of 256 latents (top 8) at layers 1 and 2, in
seconds on a CPU, explained variance above 0.5. A test that needs other settings overrides some of these."""


@pytest.fixture(scope="session")
def tiny_qwen2(tmp_path_factory) -> str:
    """Tiny Qwen2 (untied embeddings, rope theta 31000) with single-token <think>/</think>."""
    return str(build_tiny_model(tmp_path_factory.mktemp("tiny") / "qwen2", "qwen2"))


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> str:
    """Tiny Llama (tied embeddings)."""
    return str(build_tiny_model(tmp_path_factory.mktemp("tiny") / "llama", "llama"))


@pytest.fixture(scope="session")
def tiny_train_settings(tiny_qwen2):
    """settings(**overrides) -> the keyword arguments of a tiny Stage I config (TINY_TRAIN on tiny_qwen2, then
    `overrides`), JSON-ready for runs in a subprocess."""

    def settings(**overrides) -> dict:
        return {**TINY_TRAIN, "model": tiny_qwen2, **overrides}

    return settings


@pytest.fixture(scope="session")
def tiny_train_config(tiny_train_settings):
    """config(**overrides) -> a tiny SAETrainConfig: TINY_TRAIN on tiny_qwen2 with `overrides`; `config()` is the
    shared run's (`tiny_stage1`)."""

    def config(**overrides) -> SAETrainConfig:
        return SAETrainConfig(**tiny_train_settings(**overrides))

    return config


@pytest.fixture(scope="session")
def tiny_stage1(tiny_train_config, tmp_path_factory) -> StageIResult:
    """The shared tiny Stage I run of `tiny_train_config()` (SAEs at layers 1, 2 of tiny_qwen2), trained once per
    session. Read it, never write into it: a test that adds to a run copies it first (`tiny_stage1_copy`)."""
    return train_saes(tiny_train_config(), tmp_path_factory.mktemp("tiny-stage1") / "run")


@pytest.fixture(scope="session")
def tiny_stage1_copy(tiny_stage1):
    """copy(dest) -> a copy of the shared tiny run at `dest` (a path that does not exist yet), for a test that
    writes into its run."""

    def copy(dest):
        return shutil.copytree(tiny_stage1.run, dest)

    return copy


@pytest.fixture(scope="session")
def plotly_traces():
    """traces(html_path) -> the traces (dicts with plain-list x, y) of the plotly figure a `save_figure` page holds,
    read back from the page itself."""
    import base64
    import json
    import re

    import numpy as np

    def plain(value):
        if isinstance(value, dict) and "bdata" in value:  # plotly's typed-array encoding
            return np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"])).tolist()
        return value

    def traces(path) -> list[dict]:
        page = open(path, encoding="utf-8").read()
        start = re.search(r'Plotly\.newPlot\(\s*"[^"]+",\s*', page)
        assert start, f"{path} holds no plotly figure"
        data, _ = json.JSONDecoder().raw_decode(page, start.end())
        return [{key: plain(value) for key, value in trace.items()} for trace in data]

    return traces


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
