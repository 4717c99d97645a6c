"""Tiny random-weight causal LMs (Qwen2 with untied embeddings and its own rope theta, or Llama) saved as
local HF directories, with a small BPE tokenizer in which `<think>` and `</think>` are single tokens.

For fast tests, smoke checks on a GPU and benchmarks; never for results.
"""

from __future__ import annotations

from pathlib import Path

import torch

from resa_interp.data.synthetic import synthetic_qa
from resa_interp.data.templates import END_THINK, R1_SYSTEM_PROMPT, THINK, format_trigger

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


def build_tiny_model(
    out: str | Path,
    arch: str = "qwen2",
    *,
    n_layers: int = 4,
    d_model: int = 64,
    vocab_size: int = 512,
    seed: int = 0,
    special_markers: bool = True,
) -> Path:
    """Write a tiny random causal LM ('qwen2' untied, rope theta 31000; 'llama' tied) into `out`.

    With `special_markers` False, `<think>`/`</think>` are ordinary text split into several tokens."""
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    out = Path(out)
    tokenizer = _tokenizer(vocab_size, special_markers)
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
    if arch == "qwen2":
        config = Qwen2Config(**common, tie_word_embeddings=False, rope_theta=31000.0, rms_norm_eps=1e-6)
    elif arch == "llama":
        config = LlamaConfig(**common, tie_word_embeddings=True, rope_theta=100000.0, rms_norm_eps=1e-5)
    else:
        raise ValueError(f"arch {arch!r}: accepted qwen2, llama")
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():  # random init is small; scale it up so layers do visible work
        for param in model.parameters():
            if param.ndim == 2:
                param.normal_(0.0, 0.08)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
