"""`resa-interp`: one command per stage, each a thin shell over a library function.

Bad input prints one line (`error: ...`) and exits with code 2; `--debug` shows the traceback instead.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path
from typing import Annotated, Optional

import typer

from resa_interp.errors import ResaError

app = typer.Typer(
    name="resa-interp",
    help=(
        "SAE feature analysis of reasoning models (the Resa method).\n\n"
        "Stages: info (what a model looks like) -> train-saes -> features -> select-layers -> tune -> eval. "
        "Every command works offline on the embedded default model (SmolLM2-135M-Instruct) when --model is "
        "not given."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
_STATE = {"debug": False}
# Typer vendors click in recent releases and uses click itself in older ones: take its exception classes
# from wherever typer's own BadParameter lives.
_CLICK_ERRORS = sys.modules[typer.BadParameter.__module__]

ModelOpt = Annotated[
    Optional[str],
    typer.Option(
        "--model",
        "-m",
        help="Model spec: HF directory, .gguf file, hub id (org/name), or 'smollm2-135m' (the embedded default).",
    ),
]
AdapterOpt = Annotated[
    Optional[str], typer.Option("--adapter", help="peft LoRA adapter folder merged into the model on load.")
]
DeviceOpt = Annotated[str, typer.Option("--device", help="cpu, cuda, cuda:N or auto.")]
DtypeOpt = Annotated[str, typer.Option("--dtype", help="float32, bfloat16 or float16 (bfloat16 wants a GPU).")]


@app.callback()
def _main(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks instead of one-line errors.")] = False,
) -> None:
    _STATE["debug"] = debug


@app.command()
def info(
    model: ModelOpt = None,
    adapter: AdapterOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the facts as JSON.")] = False,
    device: DeviceOpt = "cpu",
    dtype: DtypeOpt = "float32",
) -> None:
    """Print a model's facts: layers, width, hook names, and how <think> and </think> tokenize.

    Example: resa-interp info --model smollm2-135m
    """
    from resa_interp.models import load_subject

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
    ]
    for marker, tokens in facts["markers"].items():
        rows.append((marker, f"{len(tokens)} token(s): {tokens}"))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        typer.echo(f"{key:<{width}}  {value}")


@app.command("select-layers")
def select_layers_command(
    counts: Annotated[
        Path, typer.Option("--counts", help="Per-layer reasoning-feature counts: counts.csv or features.json.")
    ],
    out: Annotated[Path, typer.Option("--out", help="Output folder: layers.json, layer_report.html, figures.")],
    scores: Annotated[
        Optional[Path], typer.Option("--scores", help="CSV with a 'layer' column and score columns (a sweep's output).")
    ] = None,
    score_column: Annotated[
        Optional[str], typer.Option("--score-column", help="Score column to use (default: 'avg', else the only one).")
    ] = None,
    components: Annotated[int, typer.Option("--components", help="Mixture components (the paper fits 3).")] = 3,
    score_transform: Annotated[
        str, typer.Option("--score-transform", help="Scores -> layer weights: shift-min, softmax or raw.")
    ] = "shift-min",
    temperature: Annotated[float, typer.Option("--temperature", help="Softmax temperature in score units.")] = 1.0,
    top: Annotated[int, typer.Option("--top", help="Hookpoints to recommend.")] = 3,
    max_components: Annotated[int, typer.Option("--max-components", help="BIC for 1..N components.")] = 5,
    bootstrap: Annotated[int, typer.Option("--bootstrap", help="Bootstrap replicates for 95% intervals.")] = 1000,
    permutations: Annotated[int, typer.Option("--permutations", help="Score shuffles for the p-value.")] = 1000,
    likelihood: Annotated[
        str, typer.Option("--likelihood", help="binned (layers as unit bins) or continuous (GaussianMixture's).")
    ] = "binned",
    min_std: Annotated[float, typer.Option("--min-std", help="Binned: smallest component std, in layers.")] = 0.5,
    restarts: Annotated[int, typer.Option("--restarts", help="EM starts for each fit to the data.")] = 200,
    resample_restarts: Annotated[
        int, typer.Option("--resample-restarts", help="EM starts for each bootstrap/permutation refit.")
    ] = 20,
    seed: Annotated[int, typer.Option("--seed", help="Seed for EM starts, bootstrap and permutations.")] = 0,
) -> None:
    """Fit Gaussian mixtures over layers to feature counts (and per-layer scores), compare them, pick hookpoints.

    Prints a Markdown summary; writes OUT/layers.json, OUT/layers.md, OUT/layer_report.html and the figures
    OUT/layers_{gmm,bic,null}.html/.png.

    Example: resa-interp select-layers --counts analysis/paper_table6.csv --scores analysis/paper_table6.csv --out t6
    """
    from resa_interp.layer_report import markdown_summary
    from resa_interp.layers import LayerConfig, select_layers

    config = LayerConfig(
        components=components, score_transform=score_transform, temperature=temperature, likelihood=likelihood,
        min_std=min_std, restarts=restarts, resample_restarts=resample_restarts, bootstrap=bootstrap,
        permutations=permutations, max_components=max_components, top=top, seed=seed,
    )
    analysis = select_layers(counts, out, scores, score_column, config)
    typer.echo(markdown_summary(analysis))

def main() -> None:
    """Console entry point: run the Typer app, turning bad input into one line and exit code 2."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    command = typer.main.get_command(app)
    try:
        command.main(args=sys.argv[1:], prog_name="resa-interp", standalone_mode=False)
    except ResaError as exc:
        if _STATE["debug"]:
            traceback.print_exc()
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except _CLICK_ERRORS.UsageError as exc:
        if type(exc).__name__ == "NoArgsIsHelpError" and exc.ctx is not None:
            typer.echo(exc.ctx.get_help())
            sys.exit(0)
        typer.echo(f"error: {exc.format_message()} (see resa-interp {_command_path(exc)}--help)", err=True)
        sys.exit(2)
    except _CLICK_ERRORS.Abort:
        typer.echo("aborted", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        typer.echo("interrupted: finished work is saved; rerun the same command with --resume to continue", err=True)
        sys.exit(130)


def _command_path(exc: Exception) -> str:
    if exc.ctx is None or exc.ctx.parent is None:
        return ""
    return f"{exc.ctx.info_name} "
