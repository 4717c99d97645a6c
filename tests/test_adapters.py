"""Adapters: attaching an adapter trained on one model to another of the same architecture gives the same
logits as peft's own PeftModel on that model; adapters that do not fit are refused in one line."""

from __future__ import annotations

import pytest
import torch

from resa_interp.errors import ResaError
from resa_interp.model.adapters import adapter_shapes, attach, check_adapter_fits, write_adapter_facts
from resa_interp.model.tiny import build_tiny_model

IDS = torch.tensor([[3, 14, 15, 92, 65, 35, 89]])


def random_adapter(model_dir: str, out, targets=("q_proj", "v_proj", "down_proj"), facts: bool = True) -> str:
    """A peft LoRA adapter with random (non-zero) A and B, saved as it would be after training."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(model_dir)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=list(targets), init_lora_weights=False))
    model.save_pretrained(out)
    if facts:
        write_adapter_facts(out, base, model_dir)
    return str(out)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("attach")
    return {
        "other_qwen2": str(build_tiny_model(root / "other", "qwen2", seed=1)),
        "two_layers": str(build_tiny_model(root / "two", "qwen2", n_layers=2)),
        "narrow": str(build_tiny_model(root / "narrow", "qwen2", d_model=32)),
    }


def test_attach_gives_the_same_logits_as_peft_on_the_second_model(tiny_qwen2, models, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    adapter = random_adapter(tiny_qwen2, tmp_path / "adapter")
    merged_dir = attach(adapter, models["other_qwen2"], tmp_path / "merged")
    merged = AutoModelForCausalLM.from_pretrained(merged_dir).eval()
    second = AutoModelForCausalLM.from_pretrained(models["other_qwen2"])
    reference = PeftModel.from_pretrained(second, adapter).eval()
    with torch.no_grad():
        got, want = merged(IDS).logits, reference(IDS).logits
        plain = AutoModelForCausalLM.from_pretrained(models["other_qwen2"])(IDS).logits
    assert torch.allclose(got, want, atol=1e-5)
    assert (got - plain).abs().max() > 1e-3  # the adapter changed something
    assert (merged_dir / "tokenizer.json").is_file()
    assert set(merged.state_dict()) == set(AutoModelForCausalLM.from_pretrained(models["other_qwen2"]).state_dict())


def test_attach_keeps_the_checkpoint_dtype_unless_asked(tiny_qwen2, tmp_path):
    from transformers import AutoModelForCausalLM

    adapter = random_adapter(tiny_qwen2, tmp_path / "adapter")
    half = attach(adapter, tiny_qwen2, tmp_path / "bf16", dtype="bfloat16")
    assert AutoModelForCausalLM.from_pretrained(half, dtype="auto").dtype == torch.bfloat16
    same = attach(adapter, tiny_qwen2, tmp_path / "auto")
    assert AutoModelForCausalLM.from_pretrained(same, dtype="auto").dtype == torch.float32


def test_adapter_shapes_reads_the_weight_file(tiny_qwen2, tmp_path):
    shapes = adapter_shapes(random_adapter(tiny_qwen2, tmp_path / "adapter"))
    assert shapes["model.layers.0.self_attn.q_proj"] == {"lora_A": (4, 64), "lora_B": (64, 4)}
    assert shapes["model.layers.3.mlp.down_proj"] == {"lora_A": (4, 128), "lora_B": (64, 4)}
    assert len(shapes) == 3 * 4


def test_adapters_that_do_not_fit_are_refused(tiny_qwen2, tiny_llama, models, tmp_path):
    from transformers import AutoModelForCausalLM

    adapter = random_adapter(tiny_qwen2, tmp_path / "adapter")
    for target, needle in [
        (tiny_llama, "was trained on Qwen2ForCausalLM"),
        (models["two_layers"], "adapts module model.layers.2.mlp.down_proj, which the model does not have (2 layers)"),
        (models["narrow"], "model.layers.0.mlp.down_proj was 128->64 where it was trained, but is 64->32"),
    ]:
        with pytest.raises(ResaError) as info:
            check_adapter_fits(AutoModelForCausalLM.from_pretrained(target), adapter)
        assert needle in str(info.value) and "\n" not in str(info.value)
    plain = random_adapter(tiny_qwen2, tmp_path / "plain", facts=False)  # from elsewhere: names and shapes decide
    check_adapter_fits(AutoModelForCausalLM.from_pretrained(tiny_llama), plain)
    with pytest.raises(ResaError, match="does not have"):
        check_adapter_fits(AutoModelForCausalLM.from_pretrained(models["two_layers"]), plain)


def test_cli_attach(cli, tiny_qwen2, tiny_llama, models, tmp_path):
    adapter = random_adapter(tiny_qwen2, tmp_path / "adapter")
    args = ["attach", "--adapter", adapter, "--model", models["other_qwen2"], "--out", str(tmp_path / "m")]
    code, out, err = cli(args)
    assert code == 0, err
    assert (tmp_path / "m" / "config.json").is_file() and "merged model written" in out
    for args, needle in [
        (["--adapter", adapter, "--model", tiny_llama], "attach needs a model of the same architecture"),
        (["--adapter", str(tmp_path), "--model", tiny_llama], "not a peft adapter folder"),
    ]:
        code, _, err = cli(["attach", *args, "--out", str(tmp_path / "x")])
        assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and needle in err, err
    assert not (tmp_path / "x").exists()
