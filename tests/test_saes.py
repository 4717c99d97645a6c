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
from resa_interp.sae import LayerSAE, SAETrainConfig, plan_stage1, train_saes
from resa_interp.sae.topk_kernel import reconstruction_loss


def _dense_reference(x, enc, b_enc, dec, b_dec, indices):
    """Plain autograd TopK SAE on a given support (the independent computation)."""
    pre = (x - b_dec) @ enc.T + b_enc
    values = pre.gather(-1, indices).relu()
    z = torch.zeros_like(pre).scatter(-1, indices, values)
    recon = z @ dec + b_dec
    return (recon - x).pow(2).sum(-1).mean()


@pytest.mark.parametrize("select_dtype", [None, torch.bfloat16])
@pytest.mark.parametrize("x_grad", [False, True], ids=["x-fixed", "x-grad"])
def test_kernel_gradients_match_dense_autograd(select_dtype, x_grad):
    """Loss and every gradient against plain autograd on the same support; with `x_grad` also the input's
    gradient (training leaves x without one, and b_dec's gradient then takes the kernel's shortcut)."""
    torch.manual_seed(0)
    n, d, m, k = 300, 24, 96, 6
    x = torch.randn(n, d).requires_grad_(x_grad)
    params = [torch.randn(m, d), torch.randn(m) * 0.1, torch.nn.functional.normalize(torch.randn(m, d), dim=-1),
              torch.randn(d) * 0.1]
    params = [p.requires_grad_() for p in params]
    leaves = params + [x] * x_grad
    loss, values, indices, _ = reconstruction_loss(x, *params[:2], *params[2:], k, select_dtype)
    loss.backward()
    ours = [p.grad.clone() for p in leaves]
    for p in leaves:
        p.grad = None
    reference = _dense_reference(x, *params, indices)
    reference.backward()
    assert loss.item() == pytest.approx(reference.item(), rel=1e-5)
    for mine, theirs in zip(ours, (p.grad for p in leaves)):
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


def test_train_writes_saelens_folders_and_metrics(tiny_qwen2, tiny_stage1, plotly_traces):
    from sae_lens import SAE

    result = tiny_stage1
    run = result.run
    assert sorted(result.sae_dirs) == [1, 2]
    for layer, path in result.sae_dirs.items():
        assert path == run / "saes" / f"blocks.{layer}.hook_resid_post"
        sae = SAE.load_from_disk(str(path))
        meta = sae.cfg.metadata
        assert meta.hook_name == f"blocks.{layer}.hook_resid_post"
        assert meta.training_tokens == 3072 and meta.mode == "scratch" and meta.dataset_path == "synthetic"
        assert len(meta.dataset_fingerprint) == 64 and meta.model_path == tiny_qwen2
        assert (sae.cfg.d_in, sae.cfg.d_sae, sae.cfg.k) == (64, 256, 8)
    metrics = json.loads((run / "saes" / "metrics.json").read_text())
    assert [row["layer"] for row in metrics] == [1, 2]
    assert metrics == result.metrics
    for row in metrics:
        assert 0.5 < row["explained_variance"] <= 1.0
        assert row["l0"] <= 8 and row["kl_spliced"] >= 0 and row["heldout_tokens_qa"] < row["heldout_tokens"]
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["stages"]["train-saes"]["layers"] == [1, 2]
    # the figure plots metrics.json's numbers over the layers: each curve is one column of the rows
    curves = {trace["name"]: trace for trace in plotly_traces(run / "saes" / "metrics.html")}
    columns = {"explained variance": "explained_variance", "explained variance (q/a)": "explained_variance_qa",
               "explained variance (novel question kinds)": "explained_variance_novel",
               "spliced KL (q/a)": "kl_spliced_qa"}
    assert set(curves) == set(columns)
    for name, key in columns.items():
        assert list(curves[name]["x"]) == [1, 2], name
        assert list(curves[name]["y"]) == pytest.approx([row[key] for row in metrics], abs=1e-12), name


def test_metrics_recomputed_independently(tiny_qwen2, tiny_train_config, tiny_stage1):
    """Explained variance from raw HF hidden states and a plain sae_lens forward, outside our metric code."""
    from sae_lens import SAE

    from resa_interp.model.harvest import make_batch
    from resa_interp.model.subject import load_subject
    from resa_interp.sae import trigger_data

    cfg = tiny_train_config()
    result = tiny_stage1
    subject = load_subject(tiny_qwen2)
    data = trigger_data(cfg, subject)
    sae = SAE.load_from_disk(str(result.sae_dirs[2]))
    batch = make_batch(data.heldout, subject.tokenizer.pad_token_id, exclude_first=1)
    with torch.no_grad():
        hidden = subject.hf(batch.input_ids, attention_mask=batch.attention_mask, output_hidden_states=True)
        x = hidden.hidden_states[3][batch.train_mask].double()
        recon = sae(x.float()).double()
    ev = 1 - (x - recon).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
    assert result.metrics[1]["layer"] == 2
    assert result.metrics[1]["explained_variance"] == pytest.approx(ev.item(), abs=1e-4)


def test_deterministic(tiny_train_config, tiny_stage1, tmp_path):
    """The same config trains the same SAE again (here: the shared run's config, trained a second time)."""
    from safetensors.torch import load_file

    a = tiny_stage1.sae_dirs[1]
    b = train_saes(tiny_train_config(), tmp_path / "b").sae_dirs[1]
    wa, wb = load_file(a / "sae_weights.safetensors"), load_file(b / "sae_weights.safetensors")
    assert all(torch.equal(wa[key], wb[key]) for key in wa)


_RUNNER = "import json, sys; from resa_interp.sae import SAETrainConfig, train_saes; " \
    "train_saes(SAETrainConfig(**json.loads(sys.argv[1])), sys.argv[2], resume=sys.argv[3] == 'resume')"


def _run(cfg: dict, out: Path, mode: str = "fresh") -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", _RUNNER, json.dumps(cfg), str(out), mode],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@pytest.mark.slow
@pytest.mark.parametrize("variant", [{"seeds": [5]}, {"trainer": "saelens", "architecture": "batchtopk", "lr": 1e-3}],
                         ids=["fused-two-seeds", "saelens"])
def test_resume_after_a_real_interruption_equals_an_uninterrupted_run(tiny_train_settings, tmp_path, variant):
    """A separate process is killed (SIGKILL) after its first checkpoint, then resumed (the fused kernel with two
    seeds, and SAELens' trainer with its optimizer, scheduler, scale factor and batch top-k threshold in the
    checkpoint)."""
    from safetensors.torch import load_file

    seeds = variant.get("seeds", [])
    cfg = tiny_train_settings(layers="1,3", tokens=6144, n_examples=90, checkpoint_every=1, **variant)
    proc = _run(cfg, tmp_path / "cut")
    saes = tmp_path / "cut" / "saes"
    deadline = time.time() + 240
    while not list(saes.glob(".checkpoint-*")) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert list(saes.glob(".checkpoint-*")), "no checkpoint was written before the run ended"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "cut" / "saes" / "blocks.1.hook_resid_post").exists()
    assert _run(cfg, tmp_path / "cut", "resume").wait() == 0
    assert _run(cfg, tmp_path / "whole").wait() == 0
    for layer in (1, 3):
        for folder in ["", *(f"seed-{s}/" for s in seeds)]:
            name = f"{folder}blocks.{layer}.hook_resid_post/sae_weights.safetensors"
            cut, whole = load_file(tmp_path / "cut" / "saes" / name), load_file(tmp_path / "whole" / "saes" / name)
            assert all(torch.equal(cut[key], whole[key]) for key in whole)
    assert not list(saes.glob(".checkpoint*"))


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(folder / "sae_weights.safetensors")


@pytest.mark.slow
def test_seeds_train_on_the_same_batches_and_differ_only_in_their_initialisation(tiny_train_config, tiny_stage1,
                                                                                  tmp_path):
    """Each seed's SAE is exactly what it would be without the others: the primary equals a one-seed run, a
    further seed is unchanged when another seed is dropped, and two seeds give different SAEs."""
    from resa_interp.sae import read_metrics, run_sae_dirs, run_seeds

    three = train_saes(tiny_train_config(seeds=(1, 2)), tmp_path / "three")
    one = tiny_stage1
    two = train_saes(tiny_train_config(seeds=(2,)), tmp_path / "two")
    assert run_seeds(three.run) == [1, 2] and run_seeds(one.run) == []
    for layer in (1, 2):
        primary, seed1, seed2 = (_weights(three.sae_dirs[layer]), _weights(three.seed_dirs[1][layer]),
                                 _weights(three.seed_dirs[2][layer]))
        assert all(torch.equal(primary[key], _weights(one.sae_dirs[layer])[key]) for key in primary)
        assert all(torch.equal(seed2[key], _weights(two.seed_dirs[2][layer])[key]) for key in seed2)
        assert not torch.equal(seed1["W_dec"], primary["W_dec"])
        assert three.seed_dirs[1][layer] == three.run / "saes" / "seed-1" / f"blocks.{layer}.hook_resid_post"
        recorded = json.loads((three.seed_dirs[1][layer] / "cfg.json").read_text())["metadata"]
        assert recorded["seed"] == 1 and recorded["training_tokens"] == three.tokens_per_layer
    assert run_sae_dirs(three.run, seed=2) == three.seed_dirs[2]
    assert [row["layer"] for row in three.seed_metrics[1]] == [1, 2]
    assert read_metrics(three.run, seed=1)[2]["explained_variance"] == three.seed_metrics[1][1]["explained_variance"]
    assert read_metrics(three.run)[2] == read_metrics(one.run)[2]
    manifest = json.loads((three.run / "manifest.json").read_text())
    assert manifest["stages"]["train-saes"]["seeds"] == [0, 1, 2]


def test_parse_seeds():
    from resa_interp.sae import parse_seeds

    assert parse_seeds(None, "3,1,2", None) == (3, (1, 2))
    assert parse_seeds(4, None, 3) == (4, (5, 6))
    assert parse_seeds(None, None, 1) == (0, ())
    assert parse_seeds(7, None, None) == (7, None)
    for args, message in [((None, "0,x", None), "--seeds '0,x'"), ((None, "1", 2), "give one of them"),
                          ((2, "1,3", None), "--seeds starts with the run's seed"), ((None, None, 0), "--n-seeds 0")]:
        with pytest.raises(ResaError, match=message):
            parse_seeds(*args)


def _sparsify_folder(root: Path, layer: int, d_in: int, latents: int, k: int, seed: int = 0,
                     mlp: bool = False) -> dict:
    """A sparsify hookpoint folder `layers.N/` (decoder layer output) or `layers.N.mlp/` (its MLP's output)."""
    torch.manual_seed(seed)
    weights = {
        "encoder.weight": torch.randn(latents, d_in) / d_in**0.5,
        "encoder.bias": torch.randn(latents) * 0.05,
        "W_dec": torch.nn.functional.normalize(torch.randn(latents, d_in), dim=-1),
        "b_dec": torch.randn(d_in) * 0.3,
    }
    folder = root / (f"layers.{layer}.mlp" if mlp else f"layers.{layer}")
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
    sae = load_source_sae(str(tmp_path / "sparsify"), 5, "resid_post")
    x = torch.randn(50, 32) * 2
    latents_ref, recon_ref = _sparsify_maths(weights, x, 7)
    latents = sae.encode(x)
    torch.testing.assert_close(latents, latents_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sae.decode(latents), recon_ref, rtol=1e-5, atol=1e-5)
    assert sae.cfg.metadata.hook_name == "blocks.5.hook_resid_post"


@pytest.mark.slow
def test_pretrained_and_finetune_modes(tiny_train_config, tmp_path):
    from sae_lens import SAE

    weights = _sparsify_folder(tmp_path / "sparsify", layer=2, d_in=64, latents=192, k=8)
    imported = train_saes(tiny_train_config(layers="2", mode="pretrained", source=str(tmp_path / "sparsify")),
                          tmp_path / "pre")
    sae = SAE.load_from_disk(str(imported.sae_dirs[2]))
    assert torch.equal(sae.W_dec, weights["W_dec"]) and sae.cfg.metadata.mode == "pretrained"
    before = imported.metrics[0]["explained_variance"]

    tuned = train_saes(tiny_train_config(layers="2", mode="finetune", source=str(tmp_path / "sparsify")),
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
        ({"hook": "attn"}, "--hook 'attn' is not a hook; accepted: resid_pre, resid_mid, resid_post, attn_out"),
        ({"hook": "blocks.3.hook_resid_post"}, "with the layer as {l}"),
        ({"hook": "blocks.{l}.attn.hook_pattern"}, "not one vector per position"),
        ({"tokens": 100}, "smaller than one batch"),
        ({"mode": "finetune"}, "needs --from"),
        ({"source_hook": "mlp_out"}, "--from-hook mlp_out: only meaningful with --mode finetune or pretrained"),
        ({"source_hook": "attn", "mode": "finetune", "source": "x"}, "--from-hook 'attn' is not a hook"),
        ({"latents": 4}, "--latents 4: needs a positive number of latents, at least --k 8"),
        ({"latents": 0, "k": 0}, "--latents 0: needs a positive number"),
        ({"seeds": (1, 0)}, "--seeds 0,1,0: every seed must be different"),
        ({"seeds": (1,), "mode": "finetune", "source": "x"}, "--seeds with --mode finetune"),
    ],
)
def test_bad_configs(tiny_train_config, tmp_path, overrides, message):
    with pytest.raises(ResaError, match=message):
        train_saes(tiny_train_config(**overrides), tmp_path)


def test_source_errors(tiny_train_config, tmp_path):
    _sparsify_folder(tmp_path / "wide", layer=1, d_in=32, latents=64, k=4)
    with pytest.raises(ResaError, match="d_in 32 does not match the model's d_model 64"):
        train_saes(tiny_train_config(layers="1", mode="pretrained", source=str(tmp_path / "wide")), tmp_path / "r")
    corrupt = tmp_path / "corrupt" / "blocks.1.hook_resid_post"
    corrupt.mkdir(parents=True)
    (corrupt / "cfg.json").write_text("{}")
    (corrupt / "sae_weights.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ResaError, match="could not be loaded"):
        train_saes(tiny_train_config(layers="1", mode="pretrained", source=str(tmp_path / "corrupt")),
                   tmp_path / "r2")


def test_cli_errors_are_one_line(cli, tiny_qwen2, tmp_path):
    code, _, err = cli(["train-saes", "--model", tiny_qwen2, "--layers", "2-7", "--out", str(tmp_path)])
    assert code == 2 and err.strip() == "error: --layers '2-7': layer 4 is outside the model (0..3)"


def test_paper_preset_is_appendix_a():
    from resa_interp.presets import with_preset
    from resa_interp.sae import PRESETS, R1_DISTILL, plan_memory

    cfg = with_preset(SAETrainConfig, PRESETS, "paper", layers="10-14", k=None)
    assert (cfg.model, cfg.dataset, cfg.hook) == (R1_DISTILL, "still", "resid_post")
    assert (cfg.k, cfg.optimizer, cfg.lr, cfg.tokens) == (32, "signum", 2.5e-4, None)
    # Appendix A: "Number of features 65536" at R1-Distill-Qwen-1.5B's d_model 1536 (not 64 x 1536 = 98,304)
    assert cfg.latents_for(1536) == 65_536
    plan = plan_memory(cfg, d_in=1536, n_layers=26, device=torch.device("cpu"))
    assert plan.per_layer_sae == 4 * (2 * 65_536 * 1536 + 65_536 + 1536) * 3  # weights, grads, Signum momentum
    assert cfg.layers == "10-14"  # what the user gave wins over the preset
    with pytest.raises(ResaError, match="--preset 'fast' is unknown"):
        with_preset(SAETrainConfig, PRESETS, "fast")


def test_memory_plan_groups_layers_when_they_do_not_fit():
    from resa_interp.sae import plan_memory

    cfg = SAETrainConfig(expansion_factor=64, optimizer="signum", buffer_tokens=131_072, batch_tokens=32_768)
    plan = plan_memory(cfg, d_in=1536, n_layers=28, device=torch.device("cpu"))
    assert plan.per_layer_sae == 4 * (2 * 98_304 * 1536 + 98_304 + 1536) * 3
    if plan.available is not None:
        used = plan.group_size * (plan.per_layer_sae + plan.per_layer_buffer) + plan.step
        assert used <= 0.8 * plan.available or plan.group_size == 1
        assert plan.group_size < 28  # 65k-latent SAEs at 28 layers of a 1.5B model do not fit in 24 GiB
    assert "per SAE" in plan.describe(28)


def test_layer_groups_train_the_same_saes(tiny_train_config, tiny_stage1, tmp_path):
    """Grouping only changes how many layers share a forward pass, not what each SAE sees."""
    from safetensors.torch import load_file

    together = tiny_stage1.sae_dirs
    apart = train_saes(tiny_train_config(group_size=1), tmp_path / "apart").sae_dirs
    assert sorted(together) == sorted(apart) == [1, 2]
    for layer in (1, 2):
        a = load_file(together[layer] / "sae_weights.safetensors")
        b = load_file(apart[layer] / "sae_weights.safetensors")
        assert all(torch.equal(a[key], b[key]) for key in a)


def test_latents_override_the_expansion_factor(tiny_train_config):
    from resa_interp.sae import plan_memory

    by_factor, by_number = tiny_train_config(model="m"), tiny_train_config(model="m", latents=100)
    assert (by_factor.latents_for(64), by_number.latents_for(64), by_number.latents_for(4096)) == (256, 100, 100)
    plans = [plan_memory(c, d_in=64, n_layers=2, device=torch.device("cpu")) for c in (by_factor, by_number)]
    assert [p.per_layer_sae for p in plans] == [4 * (2 * n * 64 + n + 64) * 4 for n in (256, 100)]  # Adam: 2 copies
    assert [p.step for p in plans] == [4 * 256 * n * 2 for n in (256, 100)]
    with pytest.raises(ResaError, match="--expansion-factor 1: 4 latents for d_model 4, fewer than --k 8"):
        tiny_train_config(model="m", expansion_factor=1).latents_for(4)


@pytest.mark.slow
def test_cli_latents_and_expansion_factor(cli, tiny_qwen2, tmp_path):
    small = ["--model", tiny_qwen2, "--layers", "1", "--k", "8", "--tokens", "512", "--batch-tokens", "256"]
    code, out, err = cli(["train-saes", *small, "--latents", "96", "--out", str(tmp_path / "n")])
    assert code == 0, err
    assert json.loads((tmp_path / "n" / "saes" / "blocks.1.hook_resid_post" / "cfg.json").read_text())["d_sae"] == 96
    # under --preset paper (65,536 latents) an --expansion-factor given alone is what counts: 2 x d_model 64
    paper = ["--preset", "paper", "--dataset", "synthetic", "--device", "cpu", "--dtype", "float32", "--no-pack"]
    code, out, err = cli(["train-saes", *small, *paper, "--expansion-factor", "2", "--out", str(tmp_path / "x")])
    assert code == 0, err
    assert json.loads((tmp_path / "x" / "saes" / "blocks.1.hook_resid_post" / "cfg.json").read_text())["d_sae"] == 128
    code, _, err = cli(["train-saes", *small, "--latents", "4", "--out", str(tmp_path / "bad")])
    assert code == 2 and err.strip() == "error: --latents 4: needs a positive number of latents, at least --k 8"


@pytest.mark.slow
def test_from_hook_starts_from_the_mlp_sae_and_says_so(tiny_train_config, tmp_path, capsys):
    """The EleutherAI R1-Distill release holds only layers.N.mlp/: the authors fine-tune those at the residual
    stream (scripts/train/finetune.py rename_layer). Without --from-hook that is refused, naming what is there."""
    from sae_lens import SAE

    source = tmp_path / "eleuther"
    weights = {layer: _sparsify_folder(source, layer, d_in=64, latents=192, k=8, seed=layer, mlp=True)
               for layer in (1, 2)}
    with pytest.raises(ResaError, match=r"no resid_post SAE for layer 2 there; it holds mlp_out SAEs for layers 1,2; "
                                        r"to start from its mlp_out SAE pass --from-hook mlp_out"):
        train_saes(tiny_train_config(layers="2", mode="finetune", source=str(source)), tmp_path / "refused")
    assert not (tmp_path / "refused" / "saes").exists()

    cfg = tiny_train_config(layers="2", mode="finetune", source=str(source), source_hook="mlp_out")
    assert "the mlp_out SAEs (--from-hook), fine-tuned at resid_post" in plan_stage1(cfg, tmp_path / "ft").format()
    tuned = train_saes(cfg, tmp_path / "ft")
    sae = SAE.load_from_disk(str(tuned.sae_dirs[2]))
    meta = sae.cfg.metadata
    assert (meta.hook_name, meta.source_hook, meta.mode) == ("blocks.2.hook_resid_post", "mlp_out", "finetune")
    assert tuned.sae_dirs[2].name == "blocks.2.hook_resid_post"
    # it started from layer 2's MLP SAE (seed 2), not layer 1's: the decoder stays closest to that one
    cos = {layer: torch.nn.functional.cosine_similarity(sae.W_dec, w["W_dec"], dim=-1).mean().item()
           for layer, w in weights.items()}
    assert cos[2] > 0.5 > cos[1]

    imported = train_saes(tiny_train_config(layers="1", mode="pretrained", source=str(source),
                                    source_hook="mlp_out"), tmp_path / "pre")
    meta = SAE.load_from_disk(str(imported.sae_dirs[1])).cfg.metadata
    assert (meta.hook_name, meta.source_hook, meta.source_format) == ("blocks.1.hook_resid_post", "mlp_out", "sparsify")
    assert meta.source_path == str(source / "layers.1.mlp")


def _saelens_source(folder: Path, *, rescale: bool, apply_b_dec: bool, norms: torch.Tensor, normalize: str = "none",
                    d_in: int = 16, d_sae: int = 64, k: int = 5) -> None:
    """A SAELens TopK SAE folder trained at blocks.1.hook_resid_post with the given maths options."""
    from sae_lens import TopKSAE, TopKSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    g = torch.Generator().manual_seed(7)
    sae = TopKSAE(TopKSAEConfig(d_in=d_in, d_sae=d_sae, k=k, apply_b_dec_to_input=apply_b_dec,
                                normalize_activations=normalize, rescale_acts_by_decoder_norm=rescale,
                                metadata=SAEMetadata(hook_name="blocks.1.hook_resid_post")))
    with torch.no_grad():
        sae.W_dec.copy_(torch.nn.functional.normalize(torch.randn(d_sae, d_in, generator=g), dim=-1) * norms[:, None])
        sae.W_enc.copy_(torch.randn(d_in, d_sae, generator=g) / d_in**0.5)
        sae.b_enc.copy_(torch.randn(d_sae, generator=g) * 0.3)
        sae.b_dec.copy_(torch.randn(d_in, generator=g))
    sae.save_model(folder)


NON_UNIT = torch.linspace(0.3, 3.0, 64)


@pytest.mark.parametrize(
    ("options", "scaler"),
    [
        ({"rescale": True, "apply_b_dec": True, "norms": NON_UNIT}, None),
        ({"rescale": False, "apply_b_dec": False, "norms": torch.full((64,), 2.5)}, None),
        ({"rescale": True, "apply_b_dec": False, "norms": NON_UNIT, "normalize": "expected_average_only_in"},
         {"scaling_factor": 0.3}),
        ({"rescale": False, "apply_b_dec": True, "norms": torch.ones(64), "normalize": "covariance_whitening"},
         {"whitening": "rotation"}),
    ],
    ids=["rescaled-nonunit-norms", "no-b_dec-on-input", "expected-average", "whitening"],
)
def test_finetune_at_step_zero_is_the_source_sae(tmp_path, options, scaler):
    """Loading for fine-tuning, the input-scale step and the export keep SAELens' own encode/decode of the source
    (with its activation scaler, as SAELens' trainer applies it) — 0 training steps reproduce the source."""
    from sae_lens import SAE
    from sae_lens.training.activation_scaler import ActivationScaler, ActivationWhitening

    from resa_interp.sae.pretrained import load_source_sae

    folder = tmp_path / "src" / "blocks.1.hook_resid_post"
    _saelens_source(folder, **options)
    if scaler is not None:
        if "whitening" in scaler:
            q = torch.linalg.qr(torch.randn(16, 16, generator=torch.Generator().manual_seed(3)))[0]
            scaler = {"whitening": ActivationWhitening(mean=torch.randn(16) * 4, matrix=q, inverse_matrix=q.T)}
        ActivationScaler(**scaler).save(str(folder / "activation_scaler.json"))
    reference = SAE.load_from_disk(str(folder))
    scale = ActivationScaler()
    if scaler is not None:
        scale.load(folder / "activation_scaler.json")

    source = load_source_sae(str(tmp_path / "src"), 1, "resid_post")
    trainer = LayerSAE.from_source(source, "src", seed=0)
    x = torch.randn(400, 16) * 9.0 + 3.0  # raw units far from unit norm: data_init's scale is not 1
    trainer.data_init(x, from_pretrained=True)
    assert abs(trainer.scale.item() - 1.0) > 0.5
    exported = trainer.export({"hook_name": "blocks.1.hook_resid_post"})

    with torch.no_grad():
        ref_latents = reference.encode(scale.scale(x))
        ref_recon = scale.unscale(reference.decode(ref_latents))
        latents = exported.encode(x)
        recon = exported.decode(latents)
        # what one unit of each source latent adds to the raw reconstruction, by SAELens' own decode
        unit = scale.unscale(reference.decode(torch.eye(64)))
        directions = unit - scale.unscale(reference.decode(torch.zeros(1, 64)))
    assert torch.equal(latents != 0, ref_latents != 0)  # the same latents fire
    # with unit-norm decoder rows in raw units, each latent is the source's times its raw direction's length
    torch.testing.assert_close(latents, ref_latents * directions.norm(dim=-1), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(recon, ref_recon, rtol=1e-4, atol=1e-4)
    assert torch.allclose(exported.W_dec.norm(dim=-1), torch.ones(64), atol=1e-5)
    assert ref_recon.sub(x).norm() > 0.1 * x.norm()  # a random SAE: reconstruction differs from x, so this can fail


def test_finetune_refuses_what_cannot_be_folded_and_notes_what_changes(tmp_path):
    from resa_interp.sae.pretrained import load_source_sae

    for normalize in ("constant_norm_rescale", "expected_average_only_in"):
        _saelens_source(tmp_path / normalize / "blocks.1.hook_resid_post", rescale=False, apply_b_dec=True,
                        norms=torch.ones(64), normalize=normalize)
        source = load_source_sae(str(tmp_path / normalize), 1, "resid_post")
        message = "rescales every token" if normalize == "constant_norm_rescale" else "statistics are not recorded"
        with pytest.raises(ResaError, match=f"normalize_activations='{normalize}'.*{message}"):
            LayerSAE.from_source(source, normalize, seed=0)
    _saelens_source(tmp_path / "spread" / "blocks.1.hook_resid_post", rescale=False, apply_b_dec=True, norms=NON_UNIT)
    trainer = LayerSAE.from_source(load_source_sae(str(tmp_path / "spread"), 1, "resid_post"), "spread", seed=0)
    assert trainer.source_notes == [
        "decoder row norms 0.3..3 folded into the encoder (reconstruction from the same latents unchanged, but the "
        "source ranked latents before scaling by these norms, so top-k can pick differently where pre-activations "
        "are within that spread)"
    ]


def test_packed_training_reads_full_chunks_of_the_training_texts(tiny_qwen2, tiny_train_config, tmp_path):
    from sae_lens import SAE

    from resa_interp.model.subject import load_subject
    from resa_interp.sae import trigger_data

    cfg = tiny_train_config(layers="1", pack=True, max_seq_len=128, tokens=512)
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


@pytest.mark.slow
def test_folders_hold_what_saelens_runner_records(tiny_qwen2, tiny_train_config, tiny_stage1, tmp_path):
    """cfg.json carries SAELens' runner fields with true values, sparsity.safetensors holds log10 firing rates
    that an independent count on the held-out texts reproduces, and SAELens' fold_W_dec_norm runs as a no-op."""
    from sae_lens import SAE
    from sae_lens.constants import SPARSITY_FILENAME
    from safetensors import safe_open

    from resa_interp.model.subject import load_subject
    from resa_interp.sae import trigger_data

    subject = load_subject(tiny_qwen2)
    for keep_first in (False, True):
        # without keep_first: the shared run; with it, a run of its own
        cfg = tiny_train_config(layers="1", keep_first=True) if keep_first else tiny_train_config()
        path = (train_saes(cfg, tmp_path / "run", subject=subject) if keep_first else tiny_stage1).sae_dirs[1]
        meta = json.loads((path / "cfg.json").read_text())["metadata"]
        ids = subject.tokenizer("a")["input_ids"]
        bos = subject.tokenizer.bos_token_id
        assert meta["prepend_bos"] == (bos is not None and ids[0] == bos)
        assert meta["seqpos_slice"] == ([None] if keep_first else [1, None])
        assert (meta["context_size"], meta["model_class_name"], meta["exclude_special_tokens"]) == (
            cfg.max_seq_len, "HookedTransformer", False)
        assert meta["model_name"] == tiny_qwen2 and meta["model_path"] == tiny_qwen2

        sae = SAE.load_from_disk(str(path))
        with safe_open(str(path / SPARSITY_FILENAME), framework="pt") as f:
            log_rate = f.get_tensor("sparsity")
        # independent count: the model's own hidden states of every held-out text, encoded by the loaded SAE
        counts, n = torch.zeros(sae.cfg.d_sae), 0
        with torch.no_grad():
            for text in trigger_data(cfg, subject).heldout:
                states = subject.hf(torch.tensor([text.ids]), output_hidden_states=True).hidden_states[2]
                x = states[0, 0 if keep_first else 1 :]
                counts += (sae.encode(x) > 0).sum(0)
                n += x.shape[0]
        assert n > 0 and 0 < (counts > 0).sum() < sae.cfg.d_sae
        assert torch.allclose(log_rate, torch.log10(counts / n + 1e-10), atol=1e-5)
        assert meta["num_dead_features"] == int((counts == 0).sum())
        assert meta["l0"] == pytest.approx(counts.sum().item() / n)

        # the decoder rows are unit norm, so SAELens' fold (refused without rescale_acts_by_decoder_norm) is a no-op
        assert sae.cfg.rescale_acts_by_decoder_norm
        assert torch.allclose(sae.W_dec.norm(dim=-1), torch.ones(sae.cfg.d_sae), atol=1e-6)
        x = torch.randn(32, sae.cfg.d_in) * 3
        before = (sae.encode(x), sae.decode(sae.encode(x)))
        sae.fold_W_dec_norm()
        assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(before, (sae.encode(x), sae.decode(sae.encode(x)))))

        # SAELens' save/load round trip keeps every weight
        sae = SAE.load_from_disk(str(path))
        sae.save_model(tmp_path / "again")
        again = SAE.load_from_disk(str(tmp_path / "again"))
        assert all(torch.equal(getattr(sae, k), getattr(again, k)) for k in ("W_enc", "b_enc", "W_dec", "b_dec"))
        assert again.cfg.metadata.seqpos_slice == meta["seqpos_slice"]
