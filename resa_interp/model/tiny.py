"""Tiny random-weight causal LMs of several architectures (Qwen2, Llama, Qwen3, GPT-2, GPT-NeoX, Gemma 2,
Gemma 3, OLMo 2; see `ARCHITECTURES`) saved as local HF directories, with a small BPE tokenizer in which
`<think>` and `</think>` are single tokens.

For fast tests, smoke checks on a GPU and benchmarks; never for results. `build_random_model` writes a
random-weight model of any config's shape (a real model's, say) with the same small tokenizer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from resa_interp.data import END_THINK, R1_SYSTEM_PROMPT, THINK, format_trigger, synthetic_qa

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", THINK, END_THINK, "<answer>", "</answer>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _tokenizer(vocab_size: int, special_markers: bool = True):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = [R1_SYSTEM_PROMPT] + [format_trigger(e.problem, e.answer) for e in synthetic_qa(200, seed=0)]
    specials = SPECIALS if special_markers else [t for t in SPECIALS if t not in (THINK, END_THINK)]
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=specials[1:],
        chat_template=CHAT_TEMPLATE,
    )


ARCHITECTURES: dict[str, tuple[str, dict[str, Any]]] = {
    "qwen2": ("qwen2", {"tie_word_embeddings": False, "rope_theta": 31000.0, "rms_norm_eps": 1e-6}),
    "llama": ("llama", {"tie_word_embeddings": True, "rope_theta": 100000.0, "rms_norm_eps": 1e-5}),
    "qwen3": ("qwen3", {"tie_word_embeddings": True, "head_dim": 16}),
    "gpt2": ("gpt2", {"num_key_value_heads": None, "intermediate_size": None}),
    "gpt_neox": (
        "gpt_neox",
        {"use_parallel_residual": True, "num_key_value_heads": None,
         "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25}},
    ),
    "gemma2": (
        "gemma2",
        {"head_dim": 16, "query_pre_attn_scalar": 16, "sliding_window": 8,
         "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0},
    ),
    "gemma3": (
        "gemma3_text",
        {"head_dim": 16, "query_pre_attn_scalar": 16, "sliding_window": 8, "final_logit_softcapping": 30.0,
         "layer_types": ["sliding_attention"] * 3 + ["full_attention"]},
    ),
    "olmo2": ("olmo2", {"tie_word_embeddings": False}),
}
"""Tiny architectures: name -> (transformers model type, config settings beyond the common ones; None drops a
common one). What each exercises: qwen2 untied embeddings and its own rope theta; llama tied; qwen3 q/k norms;
gpt2 learned positions, LayerNorm and tied embeddings; gpt_neox parallel attention/MLP and partial rotary;
gemma2 embedding scaling, sandwich norms, attention and final soft-capping, alternating sliding windows;
gemma3 (text-only) sandwich and q/k norms, final soft-capping, local/global rope; olmo2 post-norms only."""


def build_tiny_model(
    out: str | Path,
    arch: str = "qwen2",
    *,
    n_layers: int = 4,
    d_model: int = 64,
    vocab_size: int = 512,
    seed: int = 0,
    special_markers: bool = True,
    random_norms: bool = False,
) -> Path:
    """Write a tiny random causal LM of one of `ARCHITECTURES` into `out`.

    With `special_markers` False, `<think>`/`</think>` are ordinary text split into several tokens. With
    `random_norms`, norm weights and biases are drawn at random too (not left at their constant init), so a
    view that drops one of them disagrees with the HF model."""
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    if arch not in ARCHITECTURES:
        raise ValueError(f"arch {arch!r}: accepted {', '.join(ARCHITECTURES)}")
    hf_logging.disable_progress_bar()
    out = Path(out)
    tokenizer = _tokenizer(vocab_size, special_markers)
    model_type, settings = ARCHITECTURES[arch]
    common = dict(
        vocab_size=len(tokenizer),
        hidden_size=d_model,
        intermediate_size=2 * d_model,
        num_hidden_layers=n_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    kwargs = {k: v for k, v in {**common, **settings}.items() if k not in settings or v is not None}
    if model_type == "gpt2":
        kwargs["n_inner"] = 2 * d_model  # GPT-2's name for the MLP width
    config = AutoConfig.for_model(model_type, **kwargs)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():  # random init is small; scale it up so layers do visible work
        for param in model.parameters():
            if param.ndim == 2:
                param.normal_(0.0, 0.08)
            elif random_norms:
                param.add_(0.1 * torch.randn_like(param))
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def build_random_model(out: str | Path, config: dict[str, Any], *, seed: int = 0, device: str = "cpu",
                       dtype: torch.dtype = torch.bfloat16) -> Path:
    """Write into `out` a causal LM of the HF `config` (config.json's fields, `model_type` among them) with random
    weights at transformers' own initialisation, built on `device` in `dtype`, and the tiny models' small BPE
    tokenizer (its ids lie below any real vocabulary, so `vocab_size` may stay the real model's; its end-of-text
    token replaces the config's eos, pad and bos ids). A real model's shape without its weights or the hub."""
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    tokenizer = _tokenizer(512)
    if config["vocab_size"] < len(tokenizer):
        raise ValueError(f"vocab_size {config['vocab_size']}: below the tokenizer's {len(tokenizer)} tokens")
    settings = {key: value for key, value in config.items() if key != "model_type"}
    settings.update(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None)
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(config["model_type"], **settings), dtype=dtype)
    out = Path(out)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
