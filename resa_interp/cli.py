"""`resa-interp`: one command per stage, each a thin shell over a library function.

Bad input prints one line (`error: ...`) and exits with code 2; `--debug` shows the traceback instead.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
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


PAPER_TASK_LIST = "aime24,aime25,amc23,math_500,minerva,gpqa:diamond"


@app.command("eval")
def eval_command(
    out: Annotated[str, typer.Option("--out", "-o", help="Output folder: scores.json, samples.jsonl.")],
    model: Annotated[
        Optional[str],
        typer.Option(
            "--model",
            "-m",
            help="Model spec (HF directory, .gguf, hub id, 'smollm2-135m') or a tuning output folder (its merged/ "
            "model is evaluated).",
        ),
    ] = None,
    tasks: Annotated[
        str,
        typer.Option(
            "--tasks",
            help="Comma-separated: the paper's aime24, aime25, amc23, math_500, minerva, gpqa:diamond (from the "
            "hub), 'synthetic' (built-in held-out set), or local .jsonl files (problem, answer[, choices]).",
        ),
    ] = PAPER_TASK_LIST,
    backend: Annotated[
        str, typer.Option("--backend", help="vllm (lighteval on vLLM, GPU), transformers (local, CPU), or auto.")
    ] = "auto",
    samples: Annotated[int, typer.Option("--samples", help="Generations per problem; Pass@1 averages them.")] = 1,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", help="Generation budget (paper: 32768).")] = 32768,
    temperature: Annotated[float, typer.Option("--temperature", help="Sampling temperature (paper: 0.6).")] = 0.6,
    top_p: Annotated[float, typer.Option("--top-p", help="Nucleus sampling (paper: 0.95).")] = 0.95,
    limit: Annotated[Optional[int], typer.Option("--limit", help="Only the first N problems of each task.")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of sampling and of GPQA's option order.")] = 0,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Sequences per batch (transformers).")] = 8,
    device: Annotated[str, typer.Option("--device", help="transformers backend: cpu, cuda, cuda:N or auto.")] = "auto",
    dtype: Annotated[
        Optional[str],
        typer.Option("--dtype", help="float32, bfloat16 or float16 (default: bfloat16 on GPU, float32 on CPU)."),
    ] = None,
    gpu_memory_utilization: Annotated[
        float, typer.Option("--gpu-memory-utilization", help="vLLM's share of GPU memory (paper: 0.7).")
    ] = 0.7,
    data_parallel_size: Annotated[
        Optional[int], typer.Option("--data-parallel-size", help="vLLM replicas, one per GPU (default: all GPUs).")
    ] = None,
) -> None:
    """Evaluate a model: zero-shot Pass@1 on the paper's tasks (lighteval + vLLM on GPU) or locally (transformers).

    Writes OUT/scores.json and OUT/samples.jsonl and prints a table in the paper's column order with Avg.

    Example: resa-interp eval --tasks synthetic --backend transformers --limit 20 --max-new-tokens 256 --out runs/eval
    """
    from resa_interp.eval_tasks import parse_task_list
    from resa_interp.evaluation import EvalConfig, evaluate, format_table

    config = EvalConfig(
        backend=backend,
        samples=samples,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        limit=limit,
        seed=seed,
        batch_size=batch_size,
        device=device,
        dtype=dtype,
        gpu_memory_utilization=gpu_memory_utilization,
        data_parallel_size=data_parallel_size,
    )
    result = evaluate(model, parse_task_list(tasks), out, config)
    typer.echo(format_table(result))
    typer.echo(f"wrote {out}/scores.json and {out}/samples.jsonl")


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
