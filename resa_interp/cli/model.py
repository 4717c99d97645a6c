"""`info` (what a model looks like to the toolkit) and `attach` (a tuned adapter on another model of the family)."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from resa_interp.cli.options import Adapter, Device, Dtype, Model, Out


def info(
    model: Model = None,
    adapter: Adapter = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the facts as JSON.")] = False,
    device: Device = "cpu",
    dtype: Dtype = "float32",
) -> None:
    """Print a model's facts: layers, width, hook names, the TransformerLens view it gets, and how <think> and
    </think> tokenize.

    --adapter merges a peft LoRA adapter into the model on load.

    Example: resa-interp info --model smollm2-135m
    """
    from resa_interp.model import load_subject

    subject = load_subject(model, adapter=adapter, dtype=dtype, device=device)
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
    adapter: Adapter,
    out: Out,
    model: Model = None,
    dtype: Dtype = "auto",
) -> None:
    """Attach an adapter trained on one model to another of the same architecture and write the merged model.

    Writes the merged HF model (with its tokenizer) to OUT; the merge itself is float32.

    Example: resa-interp attach --adapter runs/tuned/adapter --model deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B -o merged
    """
    from resa_interp.model import attach as run_attach
    from resa_interp.model.loading import quiet_transformers

    quiet_transformers()
    typer.echo(f"merged model written to {run_attach(adapter, model, out, dtype=dtype)}")

