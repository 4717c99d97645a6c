"""`train-saes --trainer saelens`: every SAELens architecture learns from the harvested activations, is deterministic,
is saved as an SAELens folder whose encode is the architecture's rule on the trained weights (recomputed by hand),
and `features` runs on the SAEs it writes."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from resa_interp.data.templates import marker_spans
from resa_interp.errors import ResaError
from resa_interp.features import FeatureConfig, extract_features, run_features
from resa_interp.model.subject import load_subject
from resa_interp.sae import DEAD_WINDOW, train_saes, trigger_data
from resa_interp.sae.activations import ModelFeed
from resa_interp.sae.cache import cache_activations
from resa_interp.sae.folders import load_sae
from resa_interp.sae.saelens_trainer import ARCHITECTURES, SAELensLayer

SMALL = dict(tokens=1536, batch_tokens=128, n_examples=40, lr=1e-3, layers="1", trainer="saelens")
"""SAELens' trainer on the shared tiny settings: smaller batches of fewer texts, its Adam's learning rate."""
LAYER = 1


@pytest.fixture(scope="module")
def rows(tiny_qwen2, tiny_train_config) -> tuple[torch.Tensor, torch.Tensor]:
    """Layer-1 training activations of the tiny model as Stage I harvests them, split into train and held-out rows."""
    cfg = tiny_train_config(**SMALL)
    subject = load_subject(tiny_qwen2)
    data = trigger_data(cfg, subject)
    feed = ModelFeed(subject, cfg.hook, [LAYER], data.train, data.prefix_len, cfg.seq_batch, 1)
    x = torch.cat([chunk for _, chunks, _ in feed.batches(0) for chunk in chunks[LAYER]]).float()
    x = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(0))]
    return x[:1536], x[1536:2048]


def _trained(config, architecture: str, rows, seed: int = 0) -> tuple[SAELensLayer, float, float]:
    """A layer trained on the training rows; with the held-out explained variance of its SAE at step 0 and at the
    end (computed here from the saved form's encode/decode)."""
    cfg = config(**SMALL, architecture=architecture)
    train, heldout = rows
    layer = SAELensLayer(cfg, 64, 256, seed, torch.device("cpu"), DEAD_WINDOW)
    layer.make_optimizer(cfg.optimizer, cfg.lr)
    layer.data_init(train, from_pretrained=False)
    before = _explained_variance(layer.export({}), heldout)
    for batch in train.split(cfg.batch_tokens):
        layer.step(batch)
    return layer, before, _explained_variance(layer.export({}), heldout)


def _explained_variance(sae, x: torch.Tensor) -> float:
    with torch.no_grad():
        recon = sae.decode(sae.encode(x)).double()
    x = x.double()
    return 1 - ((x - recon).pow(2).sum() / (x - x.mean(0)).pow(2).sum()).item()


@pytest.mark.parametrize("architecture", list(ARCHITECTURES))
def test_every_architecture_learns_and_is_deterministic(tiny_train_config, rows, architecture):
    layer, before, after = _trained(tiny_train_config, architecture, rows)
    assert after > before + 0.1, (before, after)
    assert int(layer.tokens_seen) == 1536
    again, _, _ = _trained(tiny_train_config, architecture, rows)
    other, _, _ = _trained(tiny_train_config, architecture, rows, seed=1)
    state, same, different = layer.sae.state_dict(), again.sae.state_dict(), other.sae.state_dict()
    assert all(torch.equal(state[key], same[key]) for key in state)
    assert not torch.equal(state["W_enc"], different["W_enc"])


def _encode_by_hand(layer: SAELensLayer, x: torch.Tensor, architecture: str) -> torch.Tensor:
    """The architecture's encode from the training weights (scaled units) and SAELens' input scale factor, in the
    units of the saved SAE: what the saved folder must compute on raw activations."""
    weights = {key: value.detach().double() for key, value in layer.sae.state_dict().items()}
    cfg, s = layer.sae.cfg, layer.trainer.activation_scaler.scaling_factor
    centred = x.double() * s - weights["b_dec"]
    if architecture == "gated":
        gate = centred @ weights["W_enc"] + weights["b_gate"] > 0
        return gate * (centred @ (weights["W_enc"] * weights["r_mag"].exp()) + weights["b_mag"]).relu()
    pre = centred @ weights["W_enc"] + weights["b_enc"]
    if architecture == "standard":
        return pre.relu()
    if architecture == "jumprelu":
        return pre.relu() * (pre > weights["threshold"])
    pre = pre * weights["W_dec"].norm(dim=-1) if cfg.rescale_acts_by_decoder_norm else pre
    if architecture == "topk":  # per token: its k largest, relu'd
        top = pre.topk(cfg.k, dim=-1)
        return torch.zeros_like(pre).scatter(-1, top.indices, top.values.relu()) / s
    # batchtopk and matryoshka are saved as JumpReLU SAEs at the batch top-k threshold they learned
    return pre.relu() * (pre > weights["topk_threshold"]) / s


@pytest.mark.parametrize("architecture", list(ARCHITECTURES))
def test_saved_folder_encodes_by_the_architectures_rule(tiny_train_config, rows, tmp_path, architecture):
    from sae_lens import SAE

    layer, _, _ = _trained(tiny_train_config, architecture, rows)
    layer.export({"hook_name": "blocks.1.hook_resid_post"}).save_model(tmp_path)
    saved = SAE.load_from_disk(str(tmp_path))
    x = rows[1]
    by_hand = _encode_by_hand(layer, x, architecture)
    with torch.no_grad():
        encoded = saved.encode(x).double()
    torch.testing.assert_close(encoded, by_hand, rtol=1e-4, atol=1e-4)
    assert (by_hand > 0).any(dim=-1).float().mean() > 0.5  # the rule fires: the comparison is not of zeros
    assert saved.cfg.metadata.hook_name == "blocks.1.hook_resid_post"


@pytest.mark.slow
@pytest.mark.parametrize("architecture", ["jumprelu", "gated"])
def test_features_run_on_saelens_trained_saes(tiny_qwen2, tmp_path, architecture, tiny_train_config):
    """Stage I with SAELens' trainer writes a folder `features` reads; its reasoning features equal a recount by
    hand from a plain SAELens encode of the raw hidden states."""
    import sae_lens

    cfg = tiny_train_config(**{**SMALL, "layers": "2"}, architecture=architecture)
    result = train_saes(cfg, tmp_path / "run")
    sae = load_sae(result.sae_dirs[2])
    meta = sae.cfg.metadata
    assert meta.trainer == f"sae_lens {sae_lens.__version__} {architecture}"
    assert (meta.hook_name, meta.training_tokens, meta.seqpos_slice, meta.model_path) == (
        "blocks.2.hook_resid_post", 1536, [1, None], tiny_qwen2)
    assert meta.l0 == pytest.approx(result.metrics[0]["l0"]) and (result.sae_dirs[2] / "sparsity.safetensors").is_file()
    assert sae.cfg.architecture() == ("jumprelu" if architecture == "jumprelu" else "gated")
    assert result.metrics[0]["explained_variance"] > 0.2
    prompt = "<think></think> <think></think>"
    subject = load_subject(tiny_qwen2)
    _, (layer,) = extract_features(subject, {2: sae}, "resid_post", [prompt], FeatureConfig())
    spans = marker_spans(prompt, subject.tokenizer)
    with torch.no_grad():
        x = subject.hf(torch.tensor([spans.token_ids]), output_hidden_states=True).hidden_states[3][0]
        active = sae.encode(x) > 0
    markers = [set(range(s, e)) for found in spans.spans.values() for s, e in found]
    elsewhere = [p for p in range(len(spans.token_ids)) if not any(p in occ for occ in markers)]
    at_markers = [fid for fid in range(active.shape[1]) if all(active[sorted(occ), fid].any() for occ in markers)]
    by_hand = [fid for fid in at_markers if not active[elsewhere, fid].any()]
    assert at_markers and elsewhere  # the recount selects among latents that do fire at the markers
    assert layer.features == by_hand
    written = run_features(FeatureConfig(layers="2", prompts=(prompt,), saes=str(tmp_path / "run")),
                           tmp_path / "features", subject=subject)
    assert written.layers[0].features == by_hand


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"trainer": "sklearn"}, "--trainer 'sklearn' is unknown; accepted: fused, saelens"),
        ({"architecture": "relu"}, "--architecture 'relu' is unknown; accepted: topk, batchtopk"),
        ({"trainer": "fused", "architecture": "gated"}, "the fused trainer is topk only; add --trainer saelens"),
        ({"optimizer": "signum"}, "--trainer saelens trains from scratch with SAELens' Adam"),
        ({"mode": "finetune", "source": "x"}, "not --mode finetune"),
        ({"sparsity_coefficient": 5.0}, "--architecture topk is sparse by --k; the coefficient is for jumprelu"),
    ],
)
def test_bad_trainer_settings_are_one_line(tiny_train_config, tmp_path, overrides, message):
    with pytest.raises(ResaError, match=message):
        train_saes(tiny_train_config(**{**SMALL, **overrides}), tmp_path)


def test_cli_plans_and_refuses_in_one_line(cli, tiny_qwen2, tmp_path):
    args = ["train-saes", "--model", tiny_qwen2, "--layers", "1", "--out", str(tmp_path), "--dry-run"]
    code, out, err = cli([*args, "--trainer", "saelens", "--architecture", "jumprelu", "--sparsity-coefficient", "3"])
    assert code == 0, err
    assert "1 SAELens jumprelu SAE(s), 512 latents, sparsity by its penalty" in out
    code, out, _ = cli(args)
    assert "1 fused TopK SAE(s), 512 latents, k 32" in out
    code, _, err = cli([*args, "--architecture", "gated"])
    assert code == 2 and err.strip() == ("error: --architecture gated: the fused trainer is topk only; add --trainer "
                                         "saelens")


@pytest.mark.slow
def test_saelens_trains_the_same_saes_from_a_float32_cache_as_from_forward_passes(tiny_train_config, tmp_path):
    from safetensors.torch import load_file

    cfg = tiny_train_config(**SMALL, architecture="batchtopk")
    cache = cache_activations(cfg, tmp_path / "cache", "float32")
    direct = train_saes(cfg, tmp_path / "direct").sae_dirs[LAYER]
    cached = train_saes(dataclasses.replace(cfg, activations=str(cache.path)), tmp_path / "cached").sae_dirs[LAYER]
    a, b = load_file(direct / "sae_weights.safetensors"), load_file(cached / "sae_weights.safetensors")
    assert a.keys() == b.keys() == {"W_enc", "b_enc", "W_dec", "b_dec", "threshold"}
    assert all(torch.equal(a[key], b[key]) for key in a)
