"""Any TransformerLens hook: names and their errors, the TransformerLens path of the harvester against an
independent HF computation, and Stage I, `features` and `dashboard` end to end on a hook the HF model has no
module for (blocks.{l}.mlp.hook_post, the MLP's hidden activation)."""

from __future__ import annotations

import json

import pytest
import torch

from resa_interp.dashboard import DashboardConfig, build_dashboards, write_dashboard
from resa_interp.errors import ResaError
from resa_interp.features import FeatureConfig, run_features
from resa_interp.model.harvest import encode_texts, make_batch, shared_prefix_length
from resa_interp.model.hooks import HOOKS, canonical_hook, hook_name, parse_hook_name
from resa_interp.model.subject import load_subject
from resa_interp.sae import train_saes
from resa_interp.sae.folders import load_sae, run_sae_dirs

MLP_POST = "blocks.{l}.mlp.hook_post"
PROMPT = "Problem: What is 12 * 7? <think> 84, so the product is 84 </think> <answer> Answer: 84 </answer>"


def test_hook_names_round_trip_in_saelens_form():
    """Short names and patterns name the same hook; the folder name is SAELens' hook_name and parses back."""
    for pattern in ("blocks.{l}.hook_resid_post", "blocks.{layer}.hook_resid_post", "resid_post"):
        assert canonical_hook(pattern) == "resid_post"
    assert {hook_name(h, 7) for h in HOOKS} == {f"blocks.7.hook_{h}" for h in HOOKS}
    for hook in (*HOOKS, MLP_POST, "blocks.{l}.attn.hook_z", "blocks.{l}.ln2.hook_normalized"):
        name = hook_name(hook, 12)
        assert name.startswith("blocks.12.") and parse_hook_name(name) == (canonical_hook(hook), 12)
    assert hook_name(MLP_POST, 3) == "blocks.3.mlp.hook_post"


def _down_proj_inputs(subject, ids: torch.Tensor, layer: int) -> torch.Tensor:
    """The independent computation: what the HF MLP's down projection receives (act(gate(x)) * up(x))."""
    seen = []
    mlp = subject.layers()[layer].mlp
    handle = mlp.down_proj.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    try:
        with torch.no_grad():
            subject.hf(ids)
    finally:
        handle.remove()
    return seen[0]


def test_the_view_path_gives_the_hf_models_activations(tiny_qwen2):
    """The harvester reads mlp.hook_post from the TransformerLens view (no HF module outputs it), with and
    without a shared prefix, in the shapes of the HF path; the values are the HF MLP's own."""
    subject = load_subject(tiny_qwen2)
    texts = encode_texts(subject.tokenizer, [PROMPT, PROMPT.replace("12 * 7", "3 + 4 + 5"), PROMPT + " ok"])
    harvest = subject.harvester(MLP_POST, [1, 2])
    assert harvest.points is None and harvest.view is not None
    assert subject.hook_width(MLP_POST) == subject.hf.config.intermediate_size
    batch = make_batch(texts, 0, exclude_first=0)
    acts = harvest(batch.input_ids, batch.attention_mask)
    n_prefix = shared_prefix_length(texts)
    assert n_prefix > 5
    prefix = harvest.run_prefix(texts[0].ids[:n_prefix])
    suffixes = make_batch(texts, 0, exclude_first=0, prefix_len=n_prefix)
    full, _ = harvest.capture_full(suffixes, prefix)
    for row, text in enumerate(texts):
        ids = torch.tensor([text.ids])
        for layer in (1, 2):
            expected = _down_proj_inputs(subject, ids, layer)[0]
            n = len(text.ids)
            assert acts[layer].shape[-1] == subject.hf.config.intermediate_size
            torch.testing.assert_close(acts[layer][row, :n], expected, atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(full[layer][row, :n], expected, atol=1e-5, rtol=1e-4)


@pytest.mark.slow
def test_stage_one_features_and_dashboard_on_a_view_only_hook(tiny_qwen2, tiny_train_config, tmp_path):
    """Stage I trains SAEs at blocks.{l}.mlp.hook_post into SAELens folders named by the hook, measures them
    (no spliced KL: the HF model has no module to splice at), and `features` and `dashboard` run on them."""
    subject = load_subject(tiny_qwen2)
    run = tmp_path / "run"
    result = train_saes(tiny_train_config(hook=MLP_POST, expansion_factor=2, tokens=2048, buffer_tokens=512,
                                          n_examples=40), run, subject=subject)
    assert {layer: path.name for layer, path in result.sae_dirs.items()} == {1: "blocks.1.mlp.hook_post",
                                                                            2: "blocks.2.mlp.hook_post"}
    assert run_sae_dirs(run, MLP_POST) == result.sae_dirs and run_sae_dirs(run, "resid_post") == {}
    d_mlp = subject.hf.config.intermediate_size
    for row in result.metrics:
        sae = load_sae(result.sae_dirs[row["layer"]])
        assert (sae.cfg.d_in, sae.cfg.d_sae) == (d_mlp, 2 * d_mlp)
        assert sae.cfg.metadata.hook_name == hook_name(MLP_POST, row["layer"])
        assert 0.2 < row["explained_variance"] <= 1 and row["kl_spliced"] is None, row

    features = run_features(FeatureConfig(prompts=(PROMPT,), layers="1,2", hook=MLP_POST), run, subject=subject)
    assert [f.layer for f in features.layers] == [1, 2]
    doc = json.loads((run / "features.json").read_text())
    assert [layer["hook_name"] for layer in doc["layers"]] == ["blocks.1.mlp.hook_post", "blocks.2.mlp.hook_post"]

    dashboards = build_dashboards(run, 1, "0,1", DashboardConfig(texts=6), subject=subject, hook=MLP_POST,
                                  progress=False)
    assert [(f.hook_name, f.feature) for f in dashboards.features] == [("blocks.1.mlp.hook_post", 0),
                                                                       ("blocks.1.mlp.hook_post", 1)]
    assert dashboards.logit_rule.startswith("none") and not dashboards.features[0].logits_positive
    assert write_dashboard(dashboards, tmp_path / "dash.html").stat().st_size > 0


def test_bad_hooks_are_one_line(cli, tiny_qwen2, tmp_path):
    """A malformed hook is refused before anything loads; a well-formed one the model lacks names the hooks it
    has; a hook Stage II cannot splice at names the ones it can."""
    cases = [
        (["train-saes", "--hook", "mlp_post"], "--hook 'mlp_post' is not a hook; accepted: resid_pre"),
        (["train-saes", "--hook", "blocks.{l}.hook_nope", "--layers", "1"],
         "hook 'blocks.{l}.hook_nope' is not a hook of the TransformerLens view of this model; its block hooks: "
         "attn.hook_k, "),
        (["features", "--hook", "blocks.2.hook_resid_post"], "with the layer as {l}"),
        (["tune", "--hook", MLP_POST, "--saes", str(tmp_path), "--layer", "1"],
         f"--hook '{MLP_POST}': SAEs are spliced into the HF model, which has no module for it; accepted: "),
    ]
    for args, needle in cases:
        code, out, err = cli([*args, "--model", tiny_qwen2, "--out", str(tmp_path / "out")])
        assert code == 2 and err.count("\n") == 1 and needle in err, (args, err)


def test_hooks_the_view_lacks_are_refused(tmp_path, tiny_qwen2):
    """GPT-NeoX runs attention and MLP side by side: neither HF nor TransformerLens has resid_mid. A hook point the
    view has but never calls (hook_attn_in without split q/k/v inputs) is refused too, not read as empty."""
    from resa_interp.model.tiny import build_tiny_model

    neox = load_subject(str(build_tiny_model(tmp_path / "neox", "gpt_neox", n_layers=2)))
    with pytest.raises(ResaError, match=r"hook 'resid_mid' is not a hook of the TransformerLens view of this model; "
                                        r"its block hooks: .*hook_resid_post, hook_resid_pre"):
        neox.harvester("resid_mid", [1])
    qwen = load_subject(tiny_qwen2)
    with pytest.raises(ResaError, match="'blocks.1.hook_attn_in': the TransformerLens view of this model never "
                                        "computes it"):
        qwen.harvester("blocks.{l}.hook_attn_in", [1])(torch.tensor([[1, 2, 3]]))


@pytest.mark.parametrize("detach", [False, True])
def test_stage_one_and_tuning_at_hook_z(tiny_qwen2, tiny_train_config, tmp_path, detach):
    """hook_z (heads flattened, read from the input of o_proj): Stage I trains there with spliced-in metrics, and
    SAE-Tuning splices the SAE in with a pre-hook on o_proj; with --detach-sae the gradient stops at the SAE's
    input, so the layer's q/k/v LoRA weights (upstream of hook_z only) get none."""
    from resa_interp.tuning import SAETuner, TuneConfig

    z_hook = "blocks.{l}.attn.hook_z"
    subject = load_subject(tiny_qwen2)
    run = tmp_path / "run"
    result = train_saes(tiny_train_config(layers="1", hook=z_hook, expansion_factor=2, tokens=1024,
                                          buffer_tokens=512, heldout=2, n_examples=30), run, subject=subject)
    assert result.sae_dirs[1].name == "blocks.1.attn.hook_z"
    assert result.metrics[0]["kl_spliced"] > 0 and result.metrics[0]["explained_variance"] > 0
    tuner = SAETuner(TuneConfig(model=tiny_qwen2, saes_run=str(run), layer=1, hook=z_hook, dataset="synthetic",
                                limit=4, steps=1, lr=1e-3, save_every=None, device="cpu", seed=0, detach_sae=detach))
    before = {n: p.detach().clone() for n, p in tuner.model.named_parameters() if p.requires_grad}
    record = tuner.train_step(0)
    assert record.kl > 0
    after = dict(tuner.model.named_parameters())
    moved = {n for n in before if not torch.equal(before[n], after[n])}
    # the residual stream bypasses layer 1's attention, so only its q/k/v reach the loss through hook_z alone
    upstream = {n for n in before if any(f".layers.1.self_attn.{p}_proj." in n for p in "qkv")}
    assert moved and (moved.isdisjoint(upstream) if detach else moved & upstream)


def test_an_activation_cache_at_a_view_only_hook(tiny_qwen2, tiny_train_config, tmp_path):
    """cache-activations harvests mlp.hook_post (d_mlp wide) and Stage I trains from that cache."""
    from resa_interp.sae.activations import ActivationCache
    from resa_interp.sae.cache import cache_activations

    cfg = dict(layers="1", hook=MLP_POST, expansion_factor=2, tokens=512, buffer_tokens=512, heldout=2, n_examples=30)
    cache_activations(tiny_train_config(**cfg), tmp_path / "cache", dtype="float32")
    manifest = ActivationCache(tmp_path / "cache").manifest
    d_mlp = load_subject(tiny_qwen2).hf.config.intermediate_size
    assert (manifest["d_model"], manifest["hook_names"]) == (d_mlp, ["blocks.1.mlp.hook_post"])
    result = train_saes(tiny_train_config(**cfg, activations=str(tmp_path / "cache")), tmp_path / "run")
    assert load_sae(result.sae_dirs[1]).cfg.d_in == d_mlp and result.metrics[0]["explained_variance"] > 0
