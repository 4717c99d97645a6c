"""Activation cache: a harvest on disk round-trips Stage I's activations, trains the same SAEs as the forward pass,
and refuses runs it cannot feed."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from resa_interp.errors import ResaError
from resa_interp.model.harvest import iter_batches
from resa_interp.model.subject import load_subject
from resa_interp.sae import SAETrainConfig, activations, train_saes, trigger_data
from resa_interp.sae.activations import ActivationCache
from resa_interp.sae.cache import cache_activations

CACHED = dict(tokens=2048, layers="0,2")
"""The cache tests' Stage I: the shared tiny settings at layers 0 (the first) and 2, 2,048 tokens per SAE."""


@pytest.fixture(scope="module")
def small_cfg(tiny_train_config):
    """small_cfg(**overrides) -> the cache tests' config (CACHED over the shared tiny settings) with `overrides`."""
    return lambda **overrides: tiny_train_config(**{**CACHED, **overrides})


@pytest.fixture(scope="module")
def fp32_cache(small_cfg, tmp_path_factory):
    out = tmp_path_factory.mktemp("cache") / "fp32"
    return cache_activations(small_cfg(), out, dtype="float32")


def _whole_text_activations(model: str, cfg: SAETrainConfig, layer: int) -> torch.Tensor:
    """The counted positions of every training text from plain full-text passes with output_hidden_states (no shared
    prefix, no hooks), in the cache's order: per batch, the prefix rows of every text, then each text's own rows."""
    subject = load_subject(model)
    data = trigger_data(cfg, subject)
    p = data.prefix_len
    out = []
    for _, batch in iter_batches(data.train, cfg.seq_batch, 0, exclude_first=1):
        with torch.no_grad():
            hidden = subject.hf(batch.input_ids, attention_mask=batch.attention_mask, output_hidden_states=True)
        acts = hidden.hidden_states[layer + 1]
        mask = batch.train_mask
        out += [acts[:, 1:p][mask[:, 1:p]], acts[:, p:][mask[:, p:]]]
    return torch.cat(out)


@pytest.mark.parametrize(("model_dtype", "native", "warns"), [("bfloat16", None, True),
                                                              ("bfloat16", torch.bfloat16, False),
                                                              ("float32", None, False)])
@pytest.mark.parametrize("stage", ["cache", "train"])
def test_bf16_harvest_warns_where_the_cpu_emulates_it(small_cfg, tmp_path, monkeypatch, caplog, model_dtype, native,
                                                      warns, stage):
    # a bf16 model on a CPU without AMX/AVX512-BF16 is slower than fp32 (docs: Performance, bf16 harvest): both harvests
    # say so in a warning; a CPU with native bf16, or a float32 model, harvests without one
    monkeypatch.setattr(activations, "fast_select_dtype", lambda device: native)
    cfg = small_cfg(model_dtype=model_dtype, tokens=256, layers="1")
    with caplog.at_level(logging.WARNING, logger="resa_interp.sae"):
        if stage == "cache":
            cache_activations(cfg, tmp_path / "cache", dtype="float32")
        else:
            train_saes(cfg, tmp_path / "run")
    emulated = [r for r in caplog.records if "without native bf16" in r.getMessage()]
    assert len(emulated) == warns and all(r.levelno == logging.WARNING for r in emulated)


@pytest.mark.slow
def test_round_trip_holds_the_counted_positions(tiny_qwen2, fp32_cache, tmp_path, small_cfg):
    cfg = small_cfg()
    cache = ActivationCache(fp32_cache.path)
    manifest = cache.manifest
    assert manifest["dtype"] == "float32" and manifest["layers"] == [0, 2]
    # the budget is met by whole batches, and no batch more
    sizes = manifest["batch_tokens"]
    assert sum(sizes) == fp32_cache.tokens_per_layer >= cfg.tokens > sum(sizes[:-1])
    for layer in (0, 2):
        stored = torch.from_numpy(np.array(cache.rows(layer)))
        reference = _whole_text_activations(tiny_qwen2, cfg, layer)[: stored.shape[0]]
        assert stored.shape == (sum(sizes), 64)
        torch.testing.assert_close(stored, reference, rtol=1e-4, atol=1e-4)
    # counted positions: every text's tokens but its first
    subject = load_subject(tiny_qwen2)
    texts = trigger_data(cfg, subject).train
    n_batches = len(sizes)
    counted = [sum(len(t.ids) - 1 for t in texts[i * 8 : i * 8 + 8]) for i in range(n_batches)]
    assert sizes == counted
    # a bf16 copy of the same harvest holds the fp32 values rounded to bf16
    bf16 = cache_activations(cfg, tmp_path / "bf16", dtype="bfloat16")
    rows = ActivationCache(bf16.path).rows(2)
    assert rows.nbytes == sum(sizes) * 64 * 2
    restored = torch.from_numpy(np.array(rows)).view(torch.bfloat16).float()
    exact = torch.from_numpy(np.array(cache.rows(2)))
    assert torch.equal(restored, exact.bfloat16().float())


@pytest.mark.slow
def test_training_from_an_fp32_cache_equals_the_forward_pass(tiny_qwen2, fp32_cache, tmp_path, small_cfg):
    cfg = small_cfg()
    direct = train_saes(cfg, tmp_path / "direct")
    cached = train_saes(small_cfg(activations=str(fp32_cache.path)), tmp_path / "cached")
    for layer in (0, 2):
        a = load_file(direct.sae_dirs[layer] / "sae_weights.safetensors")
        b = load_file(cached.sae_dirs[layer] / "sae_weights.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)
    assert [m["explained_variance"] for m in direct.metrics] == [m["explained_variance"] for m in cached.metrics]
    # fewer tokens than the cache holds: the same prefix of the stream as a forward pass with that budget
    fewer = train_saes(small_cfg(tokens=1024, layers="2", activations=str(fp32_cache.path)),
                       tmp_path / "fewer").sae_dirs[2]
    again = train_saes(small_cfg(tokens=1024, layers="2"), tmp_path / "again").sae_dirs[2]
    a, b = load_file(fewer / "sae_weights.safetensors"), load_file(again / "sae_weights.safetensors")
    assert all(torch.equal(a[key], b[key]) for key in a)


def test_a_bf16_cache_trains_and_says_so(tiny_qwen2, tmp_path, small_cfg):
    cfg = small_cfg(layers="1")
    result = cache_activations(cfg, tmp_path / "bf16")
    manifest = json.loads((result.path / "manifest.json").read_text())
    assert manifest["dtype"] == "bfloat16" and manifest["shards"]["1"]["bytes"] == result.tokens_per_layer * 64 * 2
    run = train_saes(small_cfg(layers="1", activations=str(result.path)), tmp_path / "run")
    assert run.tokens_per_layer == cfg.tokens
    assert run.metrics[0]["explained_variance"] > 0.5
    stage = json.loads((tmp_path / "run" / "manifest.json").read_text())["stages"]["train-saes"]
    assert stage["activations"] == str(result.path)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"hook": "mlp_out"}, "holds resid_post activations, not --hook mlp_out"),
        ({"layers": "2,3"}, "not layer 3"),
        ({"seed": 1}, "harvested with seed=0"),
        ({"tokens": 4096}, "asks for more"),
    ],
)
def test_mismatches_are_refused(tiny_qwen2, fp32_cache, tmp_path, overrides, message, small_cfg):
    with pytest.raises(ResaError, match=message):
        train_saes(small_cfg(activations=str(fp32_cache.path), **overrides), tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_another_model_is_refused(tiny_llama, fp32_cache, tmp_path, small_cfg):
    with pytest.raises(ResaError, match="was harvested from"):
        train_saes(small_cfg(model=tiny_llama, activations=str(fp32_cache.path)), tmp_path / "x")


def test_a_truncated_shard_is_refused(tiny_qwen2, tmp_path, small_cfg):
    result = cache_activations(small_cfg(layers="1", tokens=512), tmp_path / "c", dtype="float16")
    with open(result.path / "layer-1.bin", "r+b") as handle:
        handle.truncate(100)
    with pytest.raises(ResaError, match="layer-1.bin has 100 bytes"):
        ActivationCache(result.path)


def test_cli_harvests_then_trains_with_the_cache_settings_as_defaults(cli, tiny_qwen2, tmp_path):
    cache = tmp_path / "cache"
    code, out, _ = cli(["cache-activations", "--model", tiny_qwen2, "--layers", "2", "--tokens", "1024", "--dtype",
                        "float16", "--out", str(cache)])
    assert code == 0 and "float16" in out
    code, out, err = cli(["train-saes", "--model", tiny_qwen2, "--activations", str(cache), "--k", "8",
                          "--batch-tokens", "256", "--out", str(tmp_path / "run")])
    assert code == 0, err
    stage = json.loads((tmp_path / "run" / "manifest.json").read_text())["stages"]["train-saes"]
    assert stage["layers"] == [2] and stage["tokens_per_layer"] == 1024
    assert stage["config"]["n_examples"] == ActivationCache(cache).manifest["settings"]["n_examples"]
    code, _, err = cli(["train-saes", "--model", tiny_qwen2, "--activations", str(cache), "--layers", "1",
                        "--out", str(tmp_path / "bad")])
    assert code == 2 and err.count("\n") == 1 and "not layer 1" in err
