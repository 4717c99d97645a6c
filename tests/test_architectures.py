"""Every decoder-only architecture: tiny random GPT-2, GPT-NeoX, Gemma 2, Gemma 3, OLMo 2, Qwen3, Llama and Qwen2
(norm weights and biases random too) through `info`, Stage I at two layers, `features`, one SAE-Tuning step, and
the TransformerLens view against the HF forward pass at every layer; encoders and seq2seq models are refused.

The texts are longer than the Gemma sliding windows (8 tokens), so local attention is exercised."""

from __future__ import annotations

import json

import pytest
import torch

from resa_interp.errors import ResaError
from resa_interp.features import FeatureConfig, run_features
from resa_interp.model.harvest import Harvester
from resa_interp.model.hooks import HOOKS, SPLICE_HOOKS, Z_HOOK, hf_point, hook_name
from resa_interp.model.splice import spliced
from resa_interp.model.subject import load_subject
from resa_interp.model.tiny import ARCHITECTURES, build_tiny_model
from resa_interp.sae import train_saes
from resa_interp.sae.folders import load_sae, sae_dir
from resa_interp.tuning import SAETuner, TuneConfig

VIEWS = {
    "qwen2": "HookedTransformer",
    "llama": "HookedTransformer",
    "qwen3": "HookedTransformer",
    "gpt_neox": "HookedTransformer",
    "gpt2": "TransformerBridge",
    "gemma2": "TransformerBridge",
    "gemma3": "TransformerBridge",
    "olmo2": "TransformerBridge",
}
PROMPT = "Problem: What is 12 * 7? <think> 84, so the product is 84 </think> <answer> Answer: 84 </answer>"


@pytest.fixture(scope="module", params=list(ARCHITECTURES))
def arch_model(request, tmp_path_factory) -> tuple[str, str]:
    arch = request.param
    return arch, str(build_tiny_model(tmp_path_factory.mktemp("arch") / arch, arch, random_norms=True))


EXERCISED = {
    "qwen2": lambda c: not c.tie_word_embeddings and c.rope_parameters["rope_theta"] == 31000.0,
    "llama": lambda c: c.tie_word_embeddings,
    "qwen3": lambda c: c.tie_word_embeddings and c.head_dim == 16,
    "gpt2": lambda c: c.tie_word_embeddings and c.n_positions == 512,
    "gpt_neox": lambda c: c.use_parallel_residual and not c.tie_word_embeddings,
    "gemma2": lambda c: (c.final_logit_softcapping, c.attn_logit_softcapping, c.sliding_window) == (30.0, 50.0, 8),
    "gemma3": lambda c: c.final_logit_softcapping == 30.0 and "full_attention" in c.layer_types,
    "olmo2": lambda c: not c.tie_word_embeddings,
}
"""What each tiny config switches on that the agreement test below must see."""


def test_the_tiny_config_exercises_what_changes_activations(arch_model):
    from transformers import AutoConfig

    arch, path = arch_model
    assert EXERCISED[arch](AutoConfig.from_pretrained(path))


def test_info_names_the_view(cli, arch_model):
    arch, path = arch_model
    code, out, err = cli(["info", "--model", path, "--json"])
    assert code == 0, err
    facts = json.loads(out)
    assert facts["view"] == VIEWS[arch] and facts["n_layers"] == 4 and facts["d_model"] == 64
    code, out, _ = cli(["info", "--model", path])
    assert code == 0 and f"TransformerLens view  {VIEWS[arch]}" in out


NO_HF_POINT = {"gpt_neox": {"resid_mid"}}
"""Hooks an architecture computes nowhere in its HF modules (GPT-NeoX runs attention and MLP in parallel: TL has
no resid_mid either)."""
TOLERANCE = 1e-4
"""Largest |HF - TransformerLens| allowed on these float32 tiny models (measured: at most 7.7e-6)."""


def test_the_view_agrees_with_hf_and_takes_saes(arch_model):
    """Every hook with an HF fast path (resid_pre/mid/post, attn_out, mlp_out, hook_z) gives the TransformerLens
    view's activation at every layer, the logits equal HF's (soft-capping, embedding scaling, tying), and an SAE
    SAELens attaches to the view changes the logits exactly as the same SAE spliced into the HF model does, at
    every hook Stage II splices at."""
    from sae_lens import TopKSAE, TopKSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    arch, path = arch_model
    subject = load_subject(path)
    ids = torch.tensor([subject.tokenizer(PROMPT)["input_ids"]])
    assert ids.shape[1] > 16  # longer than the sliding windows
    view = subject.hooked
    with torch.no_grad():
        logits, cache = view.run_with_cache(ids)
        hf_logits = subject.hf(ids).logits
        assert (logits - hf_logits).abs().max().item() < TOLERANCE
        fast = [hook for hook in (*HOOKS, Z_HOOK) if hf_point(subject.hf, hook, 0) is not None]
        assert {*HOOKS, Z_HOOK} - set(fast) == NO_HF_POINT.get(arch, set())
        for layer in range(subject.facts.n_layers):
            for hook in fast:
                harvester = Harvester(subject.hf, hook, [layer], stop_early=False)
                assert harvester.points is not None  # the HF fast path, not the view
                hf_act = harvester(ids)[layer]
                assert (cache[hook_name(hook, layer)].flatten(2) - hf_act).abs().max().item() < TOLERANCE, (hook, layer)
        for hook in SPLICE_HOOKS:
            torch.manual_seed(0)
            width = cache[hook_name(hook, 2)].flatten(2).shape[-1]
            sae = TopKSAE(TopKSAEConfig(d_in=width, d_sae=2 * width, k=8,
                                        metadata=SAEMetadata(hook_name=hook_name(hook, 2))))
            for param in sae.parameters():
                param.normal_(0, 0.2)
            if hook == Z_HOOK:  # SAELens attaches to [pos, heads, d_head]; our splice passes heads flattened
                sae.turn_on_forward_pass_hook_z_reshaping()
            view.add_sae(sae)
            try:
                attached = view(ids)
            finally:
                view.reset_saes()
            sae.turn_off_forward_pass_hook_z_reshaping()
            with spliced(subject.hf, {(hook, 2): sae}, keep_first=0):
                hf_spliced = subject.hf(ids).logits
            assert (attached - hf_logits).abs().max().item() > 1e-2, hook  # the SAE does change the output
            assert (attached - hf_spliced).abs().max().item() < TOLERANCE, hook


@pytest.mark.slow
def test_every_stage_runs(arch_model, tiny_train_config, tmp_path):
    """Stage I at layers 1 and 2, `features` on those SAEs, and one SAE-Tuning step with the layer-1 SAE."""
    _, path = arch_model
    run = tmp_path / "run"
    subject = load_subject(path)
    result = train_saes(tiny_train_config(model=path, expansion_factor=2, k=4, tokens=1024, buffer_tokens=512,
                                          heldout=2, n_examples=30), run, subject=subject)
    assert sorted(result.sae_dirs) == [1, 2]
    assert all(m["explained_variance"] > 0 for m in result.metrics), result.metrics
    features = run_features(FeatureConfig(prompts=(PROMPT,), layers="1,2"), run, subject=subject)
    assert [f.layer for f in features.layers] == [1, 2]
    assert features.paths and all(p.exists() for p in features.paths.values())

    sae = str(sae_dir(run, "resid_post", 1))
    assert load_sae(sae).cfg.metadata.hook_name == hook_name("resid_post", 1)
    tuner = SAETuner(TuneConfig(model=path, sae=sae, dataset="synthetic", limit=4, steps=1, lr=1e-3,
                                save_every=None, device="cpu", seed=0))
    before = {n: p.detach().clone() for n, p in tuner.model.named_parameters() if p.requires_grad}
    record = tuner.train_step(0)
    assert before and record.kl > 0 and torch.isfinite(torch.tensor(record.grad_norm))
    after = dict(tuner.model.named_parameters())
    assert any(not torch.equal(before[n], after[n]) for n in before)


def _save(model, path, tokenizer_from: str) -> str:
    from transformers import AutoTokenizer

    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(tokenizer_from).save_pretrained(path)
    return str(path)


def test_encoders_and_seq2seq_models_are_refused(cli, tmp_path, tiny_qwen2):
    from transformers import BertConfig, BertForMaskedLM, T5Config, T5ForConditionalGeneration

    small = dict(vocab_size=512, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    bert = BertForMaskedLM(BertConfig(hidden_size=32, **small))
    t5 = T5ForConditionalGeneration(T5Config(vocab_size=512, d_model=32, d_kv=16, d_ff=32, num_layers=1, num_heads=2))
    cases = [(_save(bert, tmp_path / "bert", tiny_qwen2), "BertForMaskedLM is not a decoder-only causal LM"),
             (_save(t5, tmp_path / "t5", tiny_qwen2), "is an encoder-decoder (seq2seq) model")]
    for path, needle in cases:
        with pytest.raises(ResaError, match=needle.replace("(", r"\(").replace(")", r"\)")):
            load_subject(path)
        code, _, err = cli(["info", "--model", path])
        assert code == 2 and needle in err and err.count("\n") == 1, err


def test_an_architecture_without_a_view_runs_on_hf(tmp_path, tiny_qwen2):
    """Helium has no HookedTransformer or TransformerBridge: it loads, its hookpoints work, the view is refused
    in one line."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.for_model("helium", vocab_size=512, hidden_size=32, intermediate_size=64,
                                  num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2, head_dim=16)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(tiny_qwen2).save_pretrained(tmp_path)
    subject = load_subject(str(tmp_path))
    assert (subject.facts.architecture, subject.facts.view) == ("HeliumForCausalLM", "none")
    ids = torch.tensor([subject.tokenizer(PROMPT)["input_ids"]])
    with torch.no_grad():
        hidden = subject.hf(ids, output_hidden_states=True).hidden_states
        assert torch.equal(Harvester(subject.hf, "resid_post", [0])(ids)[0], hidden[1])
    with pytest.raises(ResaError, match="TransformerLens has no view of HeliumForCausalLM"):
        _ = subject.hooked
