"""Stage I: the fused kernel's maths, the trainer (determinism, resume, modes), sparsify import, errors."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from resa_interp.errors import ResaError
from resa_interp.sae.topk_kernel import reconstruction_loss
from resa_interp.sae.train import LayerSAE, SAETrainConfig, train_saes

SMALL = dict(
    expansion_factor=4, k=8, tokens=3072, batch_tokens=256, buffer_tokens=1024, seq_batch=8, heldout=4,
    n_examples=60, lr=3e-3,
)


def small_cfg(model: str, **overrides) -> SAETrainConfig:
    return SAETrainConfig(model=model, **{**SMALL, **overrides})


def _dense_reference(x, enc, b_enc, dec, b_dec, indices):
    """Plain autograd TopK SAE on a given support (the independent computation)."""
    pre = (x - b_dec) @ enc.T + b_enc
    values = pre.gather(-1, indices).relu()
    z = torch.zeros_like(pre).scatter(-1, indices, values)
    recon = z @ dec + b_dec
    return (recon - x).pow(2).sum(-1).mean()


@pytest.mark.parametrize("select_dtype", [None, torch.bfloat16])
def test_kernel_gradients_match_dense_autograd(select_dtype):
    torch.manual_seed(0)
    n, d, m, k = 300, 24, 96, 6
    x = torch.randn(n, d)
    params = [torch.randn(m, d), torch.randn(m) * 0.1, torch.nn.functional.normalize(torch.randn(m, d), dim=-1),
              torch.randn(d) * 0.1]
    params = [p.requires_grad_() for p in params]
    loss, values, indices, _ = reconstruction_loss(x, *params[:2], *params[2:], k, select_dtype)
    loss.backward()
    ours = [p.grad.clone() for p in params]
    for p in params:
        p.grad = None
    reference = _dense_reference(x, *params, indices)
    reference.backward()
    assert loss.item() == pytest.approx(reference.item(), rel=1e-5)
    for mine, theirs in zip(ours, (p.grad for p in params)):
        torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-5)
    exact = ((x - params[3]) @ params[0].T + params[1]).topk(k, -1).indices.sort(-1).values
    agreement = (exact == indices).float().mean().item()
    assert agreement == 1.0 if select_dtype is None else agreement > 0.9


def test_export_folds_the_scale_and_matches_saelens_maths():
    torch.manual_seed(1)
    sae = LayerSAE(d_in=16, d_sae=64, k=4, seed=3)
    raw = torch.randn(200, 16) * 37.0 + 5.0
    sae.data_init(raw, from_pretrained=False)
    sae.make_optimizer("adam", 1e-2)
    for _ in range(20):
        sae.step(raw)
    _, values, indices, recon_scaled = reconstruction_loss(
        raw * sae.scale, sae.enc, sae.b_enc, sae.dec, sae.b_dec, sae.k
    )
    exported = sae.export({"hook_name": "blocks.0.hook_resid_post"})
    latents = exported.encode(raw)
    # same support, latents in raw units (scaled values / scale), reconstruction in raw units
    expected = torch.zeros(200, 64).scatter(-1, indices, values.detach() / sae.scale)
    torch.testing.assert_close(latents, expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(exported.decode(latents), recon_scaled.detach() / sae.scale, rtol=1e-4, atol=1e-3)
    assert torch.allclose(exported.W_dec.norm(dim=-1), torch.ones(64), atol=1e-5)


def test_train_writes_saelens_folders_and_metrics(tiny_qwen2, tmp_path):
    from sae_lens import SAE

    result = train_saes(small_cfg(tiny_qwen2, layers="1,2"), tmp_path / "run")
    assert sorted(result.sae_dirs) == [1, 2]
    for layer, path in result.sae_dirs.items():
        assert path == tmp_path / "run" / "saes" / f"blocks.{layer}.hook_resid_post"
        sae = SAE.load_from_disk(str(path))
        meta = sae.cfg.metadata
        assert meta.hook_name == f"blocks.{layer}.hook_resid_post"
        assert meta.training_tokens == 3072 and meta.mode == "scratch" and meta.dataset_path == "synthetic"
        assert len(meta.dataset_fingerprint) == 64 and meta.model_path == tiny_qwen2
        assert (sae.cfg.d_in, sae.cfg.d_sae, sae.cfg.k) == (64, 256, 8)
    metrics = json.loads((tmp_path / "run" / "saes" / "metrics.json").read_text())
    assert [row["layer"] for row in metrics] == [1, 2]
    for row in metrics:
        assert 0.5 < row["explained_variance"] <= 1.0
        assert row["l0"] <= 8 and row["kl_spliced"] >= 0 and row["heldout_tokens_qa"] < row["heldout_tokens"]
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["stages"]["train-saes"]["layers"] == [1, 2]
    assert (tmp_path / "run" / "saes" / "metrics.html").exists()


def test_metrics_recomputed_independently(tiny_qwen2, tmp_path):
    """Explained variance from raw HF hidden states and a plain sae_lens forward, outside our metric code."""
    from sae_lens import SAE

    from resa_interp.model.harvest import make_batch
    from resa_interp.model.subject import load_subject
    from resa_interp.sae.train import trigger_data

    cfg = small_cfg(tiny_qwen2, layers="2")
    result = train_saes(cfg, tmp_path / "run")
    subject = load_subject(tiny_qwen2)
    data = trigger_data(cfg, subject)
    sae = SAE.load_from_disk(str(result.sae_dirs[2]))
    batch = make_batch(data.heldout, subject.tokenizer.pad_token_id, exclude_first=1)
    with torch.no_grad():
        hidden = subject.hf(batch.input_ids, attention_mask=batch.attention_mask, output_hidden_states=True)
        x = hidden.hidden_states[3][batch.train_mask].double()
        recon = sae(x.float()).double()
    ev = 1 - (x - recon).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
    assert result.metrics[0]["explained_variance"] == pytest.approx(ev.item(), abs=1e-4)


def test_deterministic(tiny_qwen2, tmp_path):
    from safetensors.torch import load_file

    cfg = small_cfg(tiny_qwen2, layers="1")
    a = train_saes(cfg, tmp_path / "a").sae_dirs[1]
    b = train_saes(cfg, tmp_path / "b").sae_dirs[1]
    wa, wb = load_file(a / "sae_weights.safetensors"), load_file(b / "sae_weights.safetensors")
    assert all(torch.equal(wa[key], wb[key]) for key in wa)


_RUNNER = "import json, sys; from resa_interp.sae import SAETrainConfig, train_saes; " \
    "train_saes(SAETrainConfig(**json.loads(sys.argv[1])), sys.argv[2], resume=sys.argv[3] == 'resume')"


def _run(cfg: dict, out: Path, mode: str = "fresh") -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", _RUNNER, json.dumps(cfg), str(out), mode],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_resume_after_a_real_interruption_equals_an_uninterrupted_run(tiny_qwen2, tmp_path):
    """A separate process is killed (SIGKILL) after its first checkpoint, then resumed."""
    from safetensors.torch import load_file

    cfg = {**SMALL, "model": tiny_qwen2, "layers": "1,3", "tokens": 6144, "n_examples": 90, "checkpoint_every": 1}
    proc = _run(cfg, tmp_path / "cut")
    checkpoint = tmp_path / "cut" / "saes" / ".checkpoint.pt"
    deadline = time.time() + 240
    while not checkpoint.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert checkpoint.exists(), "no checkpoint was written before the run ended"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "cut" / "saes" / "blocks.1.hook_resid_post").exists()
    assert _run(cfg, tmp_path / "cut", "resume").wait() == 0
    assert _run(cfg, tmp_path / "whole").wait() == 0
    for layer in (1, 3):
        name = f"blocks.{layer}.hook_resid_post/sae_weights.safetensors"
        cut, whole = load_file(tmp_path / "cut" / "saes" / name), load_file(tmp_path / "whole" / "saes" / name)
        assert all(torch.equal(cut[key], whole[key]) for key in whole)
    assert not checkpoint.exists()


def _sparsify_folder(root: Path, layer: int, d_in: int, latents: int, k: int, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    weights = {
        "encoder.weight": torch.randn(latents, d_in) / d_in**0.5,
        "encoder.bias": torch.randn(latents) * 0.05,
        "W_dec": torch.nn.functional.normalize(torch.randn(latents, d_in), dim=-1),
        "b_dec": torch.randn(d_in) * 0.3,
    }
    folder = root / f"layers.{layer}"
    folder.mkdir(parents=True)
    save_file(weights, str(folder / "sae.safetensors"))
    (folder / "cfg.json").write_text(json.dumps({"k": k, "num_latents": latents, "d_in": d_in, "multi_topk": False}))
    return weights


def _sparsify_maths(weights: dict, x: torch.Tensor, k: int):
    """sparsify's own encode/decode: topk(relu(encoder(x - b_dec))), then top_acts @ W_dec[top_idx] + b_dec."""
    pre = torch.relu((x - weights["b_dec"]) @ weights["encoder.weight"].T + weights["encoder.bias"])
    top_acts, top_idx = pre.topk(k, dim=-1)
    recon = torch.einsum("nk,nkd->nd", top_acts, weights["W_dec"][top_idx]) + weights["b_dec"]
    dense = torch.zeros_like(pre).scatter(-1, top_idx, top_acts)
    return dense, recon


def test_sparsify_import_matches_sparsify_maths(tmp_path):
    from resa_interp.sae.pretrained import load_source_sae

    weights = _sparsify_folder(tmp_path / "sparsify", layer=5, d_in=32, latents=128, k=7)
    sae = load_source_sae(str(tmp_path / "sparsify"), 5, "resid_post", "blocks.5.hook_resid_post")
    x = torch.randn(50, 32) * 2
    latents_ref, recon_ref = _sparsify_maths(weights, x, 7)
    latents = sae.encode(x)
    torch.testing.assert_close(latents, latents_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sae.decode(latents), recon_ref, rtol=1e-5, atol=1e-5)
    assert sae.cfg.metadata.hook_name == "blocks.5.hook_resid_post"


def test_pretrained_and_finetune_modes(tiny_qwen2, tmp_path):
    from sae_lens import SAE

    weights = _sparsify_folder(tmp_path / "sparsify", layer=2, d_in=64, latents=192, k=8)
    imported = train_saes(small_cfg(tiny_qwen2, layers="2", mode="pretrained", source=str(tmp_path / "sparsify")),
                          tmp_path / "pre")
    sae = SAE.load_from_disk(str(imported.sae_dirs[2]))
    assert torch.equal(sae.W_dec, weights["W_dec"]) and sae.cfg.metadata.mode == "pretrained"
    before = imported.metrics[0]["explained_variance"]

    tuned = train_saes(small_cfg(tiny_qwen2, layers="2", mode="finetune", source=str(tmp_path / "sparsify")),
                       tmp_path / "ft")
    after = SAE.load_from_disk(str(tuned.sae_dirs[2]))
    assert after.cfg.d_sae == 192 and after.cfg.k == 8  # the source's shape, not --expansion-factor
    assert tuned.metrics[0]["explained_variance"] > before + 0.05
    # started from the source: the decoder moved, but stays close to where it began
    cosine = torch.nn.functional.cosine_similarity(after.W_dec, weights["W_dec"], dim=-1)
    assert cosine.mean() > 0.5


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"layers": "9"}, "layer 9 is outside the model"),
        ({"hook": "attn_out"}, "--hook 'attn_out'"),
        ({"tokens": 100}, "smaller than one batch"),
        ({"mode": "finetune"}, "needs --from"),
    ],
)
def test_bad_configs(tiny_qwen2, tmp_path, overrides, message):
    with pytest.raises(ResaError, match=message):
        train_saes(small_cfg(tiny_qwen2, **overrides), tmp_path)


def test_source_errors(tiny_qwen2, tmp_path):
    _sparsify_folder(tmp_path / "wide", layer=1, d_in=32, latents=64, k=4)
    with pytest.raises(ResaError, match="d_in 32 does not match the model's d_model 64"):
        train_saes(small_cfg(tiny_qwen2, layers="1", mode="pretrained", source=str(tmp_path / "wide")), tmp_path / "r")
    corrupt = tmp_path / "corrupt" / "blocks.1.hook_resid_post"
    corrupt.mkdir(parents=True)
    (corrupt / "cfg.json").write_text("{}")
    (corrupt / "sae_weights.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ResaError, match="could not be loaded"):
        train_saes(small_cfg(tiny_qwen2, layers="1", mode="pretrained", source=str(tmp_path / "corrupt")),
                   tmp_path / "r2")


def test_cli_errors_are_one_line(cli, tiny_qwen2, tmp_path):
    code, _, err = cli(["train-saes", "--model", tiny_qwen2, "--layers", "2-7", "--out", str(tmp_path)])
    assert code == 2 and err.strip() == "error: --layers '2-7': layer 4 is outside the model (0..3)"


def test_paper_preset_is_appendix_a():
    from resa_interp.presets import with_preset
    from resa_interp.sae.train import PRESETS, R1_DISTILL

    cfg = with_preset(SAETrainConfig, PRESETS, "paper", layers="10-14", k=None)
    assert (cfg.model, cfg.dataset, cfg.hook) == (R1_DISTILL, "still", "resid_post")
    assert (cfg.expansion_factor, cfg.k, cfg.optimizer, cfg.lr, cfg.tokens) == (64, 32, "signum", 2.5e-4, None)
    assert cfg.layers == "10-14"  # what the user gave wins over the preset
    with pytest.raises(ResaError, match="--preset 'fast' is unknown"):
        with_preset(SAETrainConfig, PRESETS, "fast")


def test_memory_plan_groups_layers_when_they_do_not_fit():
    from resa_interp.sae.train import plan_memory

    cfg = SAETrainConfig(expansion_factor=64, optimizer="signum", buffer_tokens=131_072, batch_tokens=32_768)
    plan = plan_memory(cfg, d_in=1536, n_layers=28, device=torch.device("cpu"))
    assert plan.per_layer_sae == 4 * (2 * 98_304 * 1536 + 98_304 + 1536) * 3
    if plan.available is not None:
        used = plan.group_size * (plan.per_layer_sae + plan.per_layer_buffer) + plan.step
        assert used <= 0.8 * plan.available or plan.group_size == 1
        assert plan.group_size < 28  # 65k-latent SAEs at 28 layers of a 1.5B model do not fit in 24 GiB
    assert "per SAE" in plan.describe(28)


def test_layer_groups_train_the_same_saes(tiny_qwen2, tmp_path):
    """Grouping only changes how many layers share a forward pass, not what each SAE sees."""
    from safetensors.torch import load_file

    together = train_saes(small_cfg(tiny_qwen2, layers="1,3", tokens=2048), tmp_path / "together").sae_dirs
    apart = train_saes(small_cfg(tiny_qwen2, layers="1,3", tokens=2048, group_size=1), tmp_path / "apart").sae_dirs
    for layer in (1, 3):
        a = load_file(together[layer] / "sae_weights.safetensors")
        b = load_file(apart[layer] / "sae_weights.safetensors")
        assert all(torch.equal(a[key], b[key]) for key in a)


def test_packed_training_reads_full_chunks_of_the_training_texts(tiny_qwen2, tmp_path):
    from sae_lens import SAE

    from resa_interp.model.subject import load_subject
    from resa_interp.sae.train import trigger_data

    cfg = small_cfg(tiny_qwen2, layers="1", pack=True, max_seq_len=128, tokens=512)
    subject = load_subject(tiny_qwen2)
    data = trigger_data(cfg, subject)
    assert data.prefix_len == 0 and {len(t.ids) for t in data.train} == {128}
    eos = subject.tokenizer.eos_token_id
    stream = [i for t in data.train for i in t.ids]
    texts = [[]]
    for token in stream[1:]:  # the stream starts with EOS; split it back into texts
        texts.append([]) if token == eos else texts[-1].append(token)
    heldout = [t.ids for t in data.heldout]
    assert len(texts) > 10 and not any(text in heldout for text in texts[:-1])  # whole texts, none held out
    result = train_saes(cfg, tmp_path / "run", subject=subject)
    assert result.tokens_per_layer == 512  # two steps of 256 counted positions, 127 per chunk
    meta = SAE.load_from_disk(str(result.sae_dirs[1])).cfg.metadata
    assert meta.packed is True and meta.context_size == 128
