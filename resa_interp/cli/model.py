"""`info` (what a model looks like to the toolkit) and `attach` (a tuned adapter on another model of the family)."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from resa_interp.cli.fields import field_option, given
from resa_interp.cli.options import Out

COMMAND_CONFIGS = {"info": [("model.config", "InfoConfig")], "attach": [("model.config", "AttachConfig")]}
"""The configs each command of this module builds: its options named like their fields come from them."""


def _info(name: str, *flags: str) -> Any:
    return field_option("model.config", "InfoConfig", name, *flags)


def _attach(name: str, *flags: str) -> Any:
    return field_option("model.config", "AttachConfig", name, *flags)


def info(
    model: _info("model", "--model", "-m") = None,
    adapter: _info("adapter") = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the facts as JSON.")] = False,
    device: _info("device") = None,
    dtype: _info("dtype") = None,
) -> None:
    """Print a model's facts: layers, width, hook names, the TransformerLens view it gets, and how <think> and
    </think> tokenize.

    --adapter merges a peft LoRA adapter into the model on load.

    Example: resa-interp info --model smollm2-135m
    """
    from resa_interp.model import InfoConfig, load_subject

    cfg = InfoConfig(**given(model=model, adapter=adapter, device=device, dtype=dtype))
    subject = load_subject(cfg.model, adapter=cfg.adapter, dtype=cfg.dtype, device=cfg.device)
    facts = subject.facts.to_dict()
    if as_json:
        typer.echo(json.dumps({"model": subject.spec, "model_path": str(subject.path), **facts}, indent=2))
        return
    n = facts["n_layers"]
    rows = [
        ("model", subject.spec),
        ("model_path", str(subject.path)),
        ("architecture", facts["architecture"]),
        ("layers", str(n)),
        ("d_model", str(facts["d_model"])),
        ("vocab", str(facts["d_vocab"])),
        ("tied embeddings", str(facts["tied_embeddings"])),
        ("rope theta", str(facts["rope_theta"])),
        ("tokenizer adds BOS", str(facts["adds_bos"])),
        ("hooks", f"{facts['hook_names']['resid_post'][0]} .. blocks.{n - 1}.hook_resid_post; hook_mlp_out alike"),
        ("TransformerLens view", facts["view"]),
    ]
    for marker, tokens in facts["markers"].items():
        rows.append((marker, f"{len(tokens)} token(s): {tokens}"))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        typer.echo(f"{key:<{width}}  {value}")


def attach(
    adapter: _attach("adapter"),
    out: Out,
    model: _attach("model", "--model", "-m") = None,
    dtype: _attach("dtype") = None,
) -> None:
    """Attach an adapter trained on one model to another of the same architecture and write the merged model.

    Writes the merged HF model (with its tokenizer) to OUT; the merge itself is float32.

    Example: resa-interp attach --adapter runs/tuned/adapter --model deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B -o merged
    """
    from resa_interp.model import AttachConfig, quiet_transformers
    from resa_interp.model import attach as run_attach

    quiet_transformers()
    cfg = AttachConfig(**given(adapter=adapter, model=model, dtype=dtype))
    typer.echo(f"merged model written to {run_attach(cfg.adapter, cfg.model, out, dtype=cfg.dtype)}")

