"""benchmarks/scaling_plan.py: its memory is the trainer's `plan_memory`, its counts match hand computations, and
its tables have one row per model (memory) and per model x GPU x GPU count (scaling)."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest
import torch

from resa_interp.presets import with_preset
from resa_interp.sae import PRESETS, SAETrainConfig, plan_memory

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "scaling_plan.py"


@pytest.fixture(scope="module")
def sp():
    spec = importlib.util.spec_from_file_location("scaling_plan", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["scaling_plan"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    yield module
    del sys.modules["scaling_plan"]


@pytest.fixture(scope="module")
def plan(sp):
    return sp.build_plan(sp.Assumptions())


def test_sae_memory_is_plan_memory_for_the_paper_config(sp):
    cfg = with_preset(SAETrainConfig, PRESETS, "paper")
    d, n = 1536, 65_536
    mem = sp.sae_memory(cfg, d)
    ref = plan_memory(cfg, d, 28, torch.device("cpu"))
    assert mem.params == 2 * d * n + n + d == 201_393_664
    assert (mem.weights, mem.grads, mem.optimizer) == (4 * mem.params,) * 3  # float32, Signum: one momentum buffer
    assert mem.weights + mem.grads + mem.optimizer == ref.per_layer_sae
    assert (mem.buffer, mem.step) == (ref.per_layer_buffer, ref.step)
    assert mem.buffer == 4 * d * (131_072 + 16 * 2048) and mem.step == 4 * 32_768 * n * 2
    assert mem.per_sae == 12 * mem.params + mem.buffer


def test_parameter_counts_and_flops_by_hand(sp, plan):
    facts, _ = plan
    r1 = facts[0]
    # Qwen2 by hand: untied embeddings and lm_head, q/k/v with biases (2 KV heads of 128), o, gated MLP, 2 norms
    d, ff, kv, layers, vocab = 1536, 8960, 256, 28, 151_936
    layer = (d * d + d) + 2 * (d * kv + kv) + d * d + 3 * d * ff + 2 * d
    assert r1.params.decoder_layers == layers * layer
    assert r1.params.total == layers * layer + 2 * vocab * d + d == 1_777_088_000
    assert r1.sae_flops == 2 * d * 65_536 + 12 * 32 * d + 10 * r1.sae.params / 32_768
    assert r1.forward_flops == 2 * layers * layer + 4 * layers * d * 1024
    assert [f.model for f in facts] == [m.name for m in sp.MODELS]
    assert [f.params.total // 10**8 for f in facts] == [17, 76, 705]  # 1.78 B, 7.62 B, 70.55 B


def test_rows_fit_memory_and_throughput_follows_from_flops(sp, plan):
    facts, rows = plan
    assume = sp.Assumptions()
    assert [(r.model, r.gpu, r.n_gpus) for r in rows] == [
        (m.name, g.name, n) for m in sp.MODELS for g in sp.GPUS for n in (1, 8, 64)]
    r1, _, big = facts
    one_h200 = rows[3]
    assert (one_h200.gpu, one_h200.n_gpus, one_h200.placement) == ("H200 141GB", 1, "replica")
    # SAEs per pass: as many as fit in 80% of what the model and its harvest leave, the step workspace first
    free = 141e9 - r1.model_bf16 - r1.harvest
    assert one_h200.saes_per_gpu * r1.sae.per_sae + r1.sae.step <= 0.8 * free
    assert (one_h200.saes_per_gpu + 1) * r1.sae.per_sae + r1.sae.step > 0.8 * free
    assert one_h200.passes == math.ceil(28 / one_h200.saes_per_gpu)
    expected = 0.4 * 989.4e12 / (one_h200.passes * r1.forward_flops + 28 * r1.sae_flops)
    assert one_h200.tokens_per_s == pytest.approx(expected)
    assert one_h200.hours[0] == pytest.approx(assume.budgets[0] / expected / 3600)
    # 70B: its bf16 weights alone (131 GiB) leave no room on one GPU; sharded within a node it runs
    assert big.model_bf16 == 2 * big.params.total
    assert [r.placement for r in rows if r.model == big.model and r.n_gpus == 1] == ["does not fit"] * 2
    assert all(r.placement == "HSDP/8" and r.tokens_per_s > 0 for r in rows if r.model == big.model and r.n_gpus > 1)
    # more GPUs never slow a job down, and activations cross GPUs at layers x d_model x 2 bytes per token
    for a, b in zip(rows[:-1], rows[1:], strict=True):
        if (a.model, a.gpu) == (b.model, b.gpu) and a.tokens_per_s:
            assert b.tokens_per_s > a.tokens_per_s
    assert rows[2].activation_bytes_per_token == 28 * 1536 * 2 * 63 / 64


def test_markdown_has_the_expected_rows(sp, plan):
    facts, rows = plan
    cfg = sp.paper_config()
    kernel = sp.measure_kernel(d_in=64, d_sae=256, tokens=128, repeats=1)
    assert kernel.step_flops > 0 and kernel.dense_flops > 0
    text = sp.format_markdown(facts, rows, sp.Assumptions(), cfg, kernel)
    table_rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| model")]
    assert len(table_rows) == 3 + 18
    assert table_rows[0].startswith("| R1-Distill-Qwen-1.5B | 1.78 B | 201.4 M | 0.75 GiB | 0.75 GiB | 0.75 GiB |")
    assert "| Llama-3-70B shape | H100 80GB | 1 | does not fit | 0 | 0 | - | - | - | - |" in text
    assert "fused step reaches" in text
