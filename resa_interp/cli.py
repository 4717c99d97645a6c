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
        "Stages: info (what a model looks like) -> train-saes -> features -> select-layers -> tune -> eval; "
        "sweep (tune + eval at every layer) feeds select-layers; dashboard shows what a feature does; attach puts "
        "a tuned adapter on another model of the family. "
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


@app.command("train-saes")
def train_saes_cmd(
    out: Annotated[str, typer.Option("--out", "-o", help="Run directory; SAEs go to OUT/saes/<hook_name>/.")],
    model: ModelOpt = None,
    dataset: Annotated[Optional[str], typer.Option(help="Trigger QA data: synthetic (default), still, deepscaler, a hub id, or a .json/.jsonl/.csv/.parquet file.")] = None,
    layers: Annotated[Optional[str], typer.Option(help="all (default) | A-B | L,L,...")] = None,
    hook: Annotated[Optional[str], typer.Option(help="resid_post (default: output of decoder layer l, as the authors' code) | mlp_out (the paper's text).")] = None,
    mode: Annotated[Optional[str], typer.Option(help="scratch (default) | finetune (start from --from) | pretrained (import --from as is).")] = None,
    source: Annotated[Optional[str], typer.Option("--from", help="Pretrained SAEs: SAELens folder or run, EleutherAI sparsify folder (layers.N/), or RELEASE:SAE_ID.")] = None,
    k: Annotated[Optional[int], typer.Option("--k", help="Active latents per token [default: 32].")] = None,
    expansion_factor: Annotated[Optional[int], typer.Option(help="Latents per model dimension [default: 8 on CPU; the paper: 64].")] = None,
    tokens: Annotated[Optional[int], typer.Option(help="Training tokens per SAE [default: 98304]; 0 = one epoch over the dataset.")] = None,
    batch_tokens: Annotated[Optional[int], typer.Option(help="Tokens per optimizer step [default: 1024].")] = None,
    optimizer: Annotated[Optional[str], typer.Option(help="adam (default) | signum (the paper).")] = None,
    lr: Annotated[Optional[float], typer.Option(help="Constant learning rate [default: 2e-3; paper preset 2.5e-4 with signum].")] = None,
    group_size: Annotated[Optional[int], typer.Option(help="Layers per shared forward pass [default: as many as fit in memory].")] = None,
    template: Annotated[Optional[str], typer.Option(help="r1 (default: the authors' template) | short (the paper's text).")] = None,
    problem_column: Annotated[Optional[str], typer.Option(help="Question column of --dataset.")] = None,
    answer_column: Annotated[Optional[str], typer.Option(help="Answer column of --dataset.")] = None,
    keep_first: Annotated[bool, typer.Option("--keep-first", help="Also train on the first (sink) position.")] = False,
    seed: Annotated[Optional[int], typer.Option(help="Seed [default: 0].")] = None,
    preset: Annotated[Optional[str], typer.Option(help="paper: R1-Distill-Qwen-1.5B, STILL, resid_post, x64, k=32, signum 2.5e-4, one epoch.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Require an interrupted run in OUT and continue it (a matching one is resumed anyway).")] = False,
    device: Annotated[Optional[str], typer.Option(help="cpu (default), cuda, auto.")] = None,
    dtype: Annotated[Optional[str], typer.Option("--dtype", help="Model dtype: float32 (default) | bfloat16.")] = None,
) -> None:
    """Stage I: train TopK SAEs at every selected layer from one shared forward pass per batch.

    Trigger data is CoT-free: the R1 system prompt, the question, and only the final answer between
    <think> and </think>. Prints the memory plan, shows progress with tokens/s, checkpoints and resumes,
    then writes held-out quality per layer (explained variance, L0, dead latents, spliced-in KL) to
    OUT/saes/metrics.json and prints it.

    Example: resa-interp train-saes --layers 3,12,24 --out runs/demo
    """
    from resa_interp.sae_metrics import format_table
    from resa_interp.presets import with_preset
    from resa_interp.saes import PRESETS, SAETrainConfig, train_saes

    cfg = with_preset(
        SAETrainConfig, PRESETS, preset, (),
        model=model, dataset=dataset, layers=layers, hook=hook, mode=mode, source=source, k=k,
        expansion_factor=expansion_factor, batch_tokens=batch_tokens, optimizer=optimizer, lr=lr,
        group_size=group_size, template=template, problem_column=problem_column, answer_column=answer_column,
        keep_first=keep_first or None, seed=seed, device=device, model_dtype=dtype,
    )
    if tokens is not None:
        cfg.tokens = tokens or None
    result = train_saes(cfg, out, resume=resume)
    typer.echo(format_table(result.metrics))
    typer.echo(f"SAEs: {out}/saes/  metrics: {out}/saes/metrics.json  figure: {out}/saes/metrics.html")


@app.command()
def features(
    out: Annotated[str, typer.Option("--out", "-o", help="Run directory for features.json, counts.csv, figures/.")] = "runs/default",
    model: ModelOpt = None,
    saes: Annotated[Optional[str], typer.Option("--saes", help="Stage I run whose SAEs to use [default: OUT; trained first when OUT has none].")] = None,
    source: Annotated[Optional[str], typer.Option("--from", help="Pretrained SAEs instead: SAELens folder, sparsify folder (layers.N/), or RELEASE:SAE_ID.")] = None,
    layers: Annotated[Optional[str], typer.Option(help="Layers [default: 1..L-2, the paper's cut]: A-B or L,L,...")] = None,
    prompt: Annotated[Optional[str], typer.Option(help="Prompt text [default: the R1 system prompt, with <think> and </think> twice each].")] = None,
    prompt_file: Annotated[Optional[str], typer.Option(help="Several prompts (one per line, or JSONL with 'prompt'); a feature must qualify in every one.")] = None,
    threshold: Annotated[float, typer.Option(help="Active means activation > threshold.")] = 0.0,
    marker_rule: Annotated[str, typer.Option(help="Multi-token markers: any token of the span | last token | all tokens.")] = "any",
    occurrences: Annotated[str, typer.Option(help="all: active at every <think> and </think> | any: at least one of each.")] = "all",
    spliced: Annotated[bool, typer.Option("--spliced", help="Splice every SAE's reconstruction in at once; each SAE reads that model's activation.")] = False,
    exclude_first: Annotated[bool, typer.Option("--exclude-first", help="Exclude position 0 even when the tokenizer adds no BOS (a sink token).")] = False,
    hook: Annotated[str, typer.Option(help="resid_post | mlp_out (which SAEs of the run).")] = "resid_post",
    allow_model_mismatch: Annotated[bool, typer.Option("--allow-model-mismatch", help="Use SAEs trained on another model of the same width.")] = False,
    device: DeviceOpt = "cpu",
    dtype: DtypeOpt = "float32",
) -> None:
    """Prompt-only reasoning features: SAE latents active only at <think> and </think>, counted per layer.

    A latent is a reasoning feature at layer l when its activation exceeds --threshold at every <think>
    and every </think> of the prompt (--occurrences any: at least one of each) and at no other position.
    A multi-token marker counts as active when any token of its span is (--marker-rule last: its last
    token; all: every token). A BOS the tokenizer prepends is excluded. With no options this runs on the
    embedded model and, when OUT has no SAEs, trains them first (Stage I defaults, layers 1..L-2).
    Writes OUT/features.json, OUT/counts.csv and OUT/figures/feature_counts.html/.png.

    Example: resa-interp features --out runs/default
    """
    from pathlib import Path

    from resa_interp.features import FeatureConfig, default_layers, format_table, read_prompts, run_features
    from resa_interp.models import load_subject
    from resa_interp.sae_io import run_sae_dirs

    prompts = read_prompts(prompt, prompt_file)
    cfg = FeatureConfig(threshold, marker_rule, occurrences, spliced, exclude_first)
    subject = load_subject(model, dtype=dtype, device=device)
    if source is None and saes is None and not run_sae_dirs(out, hook):
        from resa_interp.saes import SAETrainConfig, train_saes

        train_layers = layers or default_layers(subject.facts.n_layers)
        typer.echo(f"{out} has no SAEs: training them first (Stage I defaults, layers {train_layers})")
        train_saes(SAETrainConfig(model=model, layers=train_layers, hook=hook, device=device, model_dtype=dtype),
                   out, subject=subject)
    result = run_features(out, subject, cfg, prompts, saes, source, layers, hook, allow_model_mismatch)
    typer.echo(format_table(result.layers))
    typer.echo(f"features: {Path(out) / 'features.json'}  counts: {result.paths['counts']}  figure: {result.paths['figure']}")

@app.command()
def tune(
    out: Annotated[str, typer.Option("--out", "-o", help="Output directory: adapter/, merged/, train_log.jsonl, checkpoints/, manifest.json.")],
    model: ModelOpt = None,
    saes: Annotated[Optional[str], typer.Option("--saes", help="Stage I run directory; with --layer picks RUN/saes/blocks.L.hook_<hook>.")] = None,
    layer: Annotated[Optional[int], typer.Option("--layer", "-l", help="Hookpoint layer (both presets: 12). With --sae it is read from the SAE and checked.")] = None,
    hook: Annotated[str, typer.Option("--hook", help="resid_post (decoder layer output, the authors' code) or mlp_out (the paper's text); with --saes.")] = "resid_post",
    sae: Annotated[Optional[str], typer.Option("--sae", help="One SAELens SAE folder to splice in (instead of --saes/--layer).")] = None,
    dataset: Annotated[Optional[str], typer.Option("--dataset", "-d", help="Elicitation data: synthetic, still, deepscaler, a hub id or a local file (cpu preset: synthetic; paper: still).")] = None,
    limit: Annotated[Optional[int], typer.Option("--limit", help="Use the first N question/answer pairs (cpu preset: 64; paper: all).")] = None,
    template: Annotated[Optional[str], typer.Option("--template", help="r1 (authors' code, default) or short (the paper's text).")] = None,
    epochs: Annotated[Optional[int], typer.Option("--epochs", help="Passes over the data (paper: 2); ignored with --steps.")] = None,
    steps: Annotated[Optional[int], typer.Option("--steps", help="Optimizer steps in total (cpu preset: 60); overrides --epochs.")] = None,
    lr: Annotated[Optional[float], typer.Option("--lr", help="Peak AdamW lr. Paper: 1e-6 (--preset paper). The cpu preset uses 1e-4: at 1e-6 the KL barely moves in a 60-step CPU run.")] = None,
    min_lr_rate: Annotated[Optional[float], typer.Option("--min-lr-rate", help="Cosine schedule ends at lr x this (default 0.1).")] = None,
    warmup_ratio: Annotated[Optional[float], typer.Option("--warmup-ratio", help="Fraction of steps of linear warm-up (default 0).")] = None,
    lora_r: Annotated[Optional[int], typer.Option("--lora-r", help="LoRA rank (paper: 32).")] = None,
    lora_alpha: Annotated[Optional[int], typer.Option("--lora-alpha", help="LoRA alpha (paper: 128).")] = None,
    lora_dropout: Annotated[Optional[float], typer.Option("--lora-dropout", help="LoRA dropout (paper: 0.05).")] = None,
    lora_targets: Annotated[Optional[str], typer.Option("--lora-targets", help="attn (paper: q,k,v,o), attn+mlp (authors' code) or comma-separated module names.")] = None,
    grad_accum: Annotated[Optional[int], typer.Option("--grad-accum", help="Sequences per optimizer step and process (default 1: batch 1, no padding).")] = None,
    max_grad_norm: Annotated[Optional[float], typer.Option("--max-grad-norm", help="Gradient clipping norm (default 1.0, the authors' code).")] = None,
    kl_reduction: Annotated[Optional[str], typer.Option("--kl-reduction", help="token (mean KL per token, default) or batchmean (sum over tokens / batch, the authors' code).")] = None,
    detach_sae: Annotated[bool, typer.Option("--detach-sae", help="No gradient through the SAE into earlier layers (the authors' code); default: gradients flow, as the paper describes.")] = False,
    no_sae: Annotated[bool, typer.Option("--no-sae", help="The CoT-free SFT baseline: next-token loss on the same data with the same LoRA, no SAE.")] = False,
    save_every: Annotated[Optional[int], typer.Option("--save-every", help="Checkpoint every N steps (default 500; cpu preset 30).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the last checkpoint in --out, to the same result as an uninterrupted run.")] = False,
    preset: Annotated[str, typer.Option("--preset", help="cpu (default: embedded model, quick) or paper (R1-Distill-Qwen-1.5B, STILL, layer 12, Appendix A); options given override it.")] = "cpu",
    seed: Annotated[Optional[int], typer.Option("--seed", help="Seed for LoRA init, dropout and data order (default 42).")] = None,
    device: Annotated[str, typer.Option("--device", help="auto (CUDA if present; each process's GPU under accelerate launch), cpu or cuda.")] = "auto",
    dtype: Annotated[str, typer.Option("--dtype", help="auto (bfloat16 on CUDA, float32 on CPU), float32, bfloat16 or float16.")] = "auto",
) -> None:
    """Stage II, SAE-Tuning: splice a frozen SAE into the target, train LoRA on KL(teacher || student), merge.

    Example: resa-interp tune --saes runs/smollm2 --layer 12 --out runs/smollm2/tuned-l12
    """
    from resa_interp.tuning import lora_targets as parse_targets
    from resa_interp.tuning import preset_config, tune as run_tune

    _quiet_transformers()
    config = preset_config(
        preset,
        model=model, sae=sae, saes_run=saes, layer=layer, hook=hook, dataset=dataset, limit=limit,
        template=template, epochs=epochs, steps=steps, lr=lr, min_lr_rate=min_lr_rate,
        warmup_ratio=warmup_ratio, lora_r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout,
        lora_targets=parse_targets(lora_targets) if lora_targets else None, grad_accum=grad_accum,
        max_grad_norm=max_grad_norm, kl_reduction=kl_reduction, detach_sae=detach_sae, no_sae=no_sae,
        save_every=save_every, resume=resume, seed=seed, device=device, dtype=dtype,
    )
    result = run_tune(config, out)
    if result.records and int(os.environ.get("RANK", "0")) == 0:
        name = "ce" if config.no_sae else "kl"
        typer.echo(
            f"{result.steps} steps, {name} {result.first:.4g} -> {result.last:.4g}, {result.tokens} tokens, "
            f"{result.wall_s:.1f} s; adapter: {result.adapter}; merged model: {result.merged}"
        )


@app.command()
def attach(
    adapter: Annotated[str, typer.Option("--adapter", help="peft LoRA adapter folder (e.g. OUT/adapter of tune).")],
    out: Annotated[str, typer.Option("--out", "-o", help="Where to write the merged HF model (with tokenizer).")],
    model: ModelOpt = None,
    dtype: Annotated[str, typer.Option("--dtype", help="auto (the checkpoint's own dtype), float32, bfloat16 or float16; the merge itself is float32.")] = "auto",
) -> None:
    """Attach an adapter trained on one model to another of the same architecture and write the merged model.

    Example: resa-interp attach --adapter runs/qwen-math/tuned/adapter --model deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B --out merged
    """
    from resa_interp.adapters import attach as run_attach

    _quiet_transformers()
    typer.echo(f"merged model written to {run_attach(adapter, model, out, dtype=dtype)}")


def _quiet_transformers() -> None:
    """No weight-loading/shard-writing bars from transformers: a command's own bar (and errors) stay readable."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


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


@app.command()
def dashboard(
    run: Annotated[str, typer.Option("--run", help="Run directory with saes/ (and features.json for 'reasoning').")],
    out: Annotated[str, typer.Option("--out", "-o", help="Output folder: dashboard.html, dashboard.json.")],
    layer: Annotated[Optional[int], typer.Option("--layer", help="Only this layer (needed for latent ids).")] = None,
    features: Annotated[str, typer.Option("--features", help="'reasoning' (every reasoning feature in RUN/features.json) or latent ids like 3,17,200.")] = "reasoning",
    dataset: Annotated[Optional[str], typer.Option("--dataset", help="Trigger data for the contexts [default: the SAEs' training dataset].")] = None,
    texts: Annotated[int, typer.Option("--texts", help="Trigger texts to harvest.")] = 128,
    top: Annotated[int, typer.Option("--top", help="Top-activating contexts per latent.")] = 12,
    include_sinks: Annotated[bool, typer.Option("--include-sinks", help="Keep position 0 and high-norm sink positions.")] = False,
    sink_ratio: Annotated[float, typer.Option("--sink-ratio", help="A position whose activation norm exceeds this times the layer's median is a sink.")] = 4.0,
    threshold: Annotated[Optional[float], typer.Option("--threshold", help="Fires means activation > this [default: the features run's, else 0].")] = None,
    model: ModelOpt = None,
    hook: Annotated[Optional[str], typer.Option("--hook", help="resid_post | mlp_out [default: features.json's, else resid_post].")] = None,
    plotlyjs: Annotated[str, typer.Option("--plotlyjs", help="inline (the page works offline) | cdn (small page, loads plotly.js from its CDN).")] = "inline",
    device: DeviceOpt = "cpu",
) -> None:
    """Feature dashboards: top-activating contexts, activation histogram, logit effects, prompt markers, frequency.

    One self-contained page OUT/dashboard.html (index, then one section per latent) and OUT/dashboard.json.
    By default every reasoning feature found by `features`; sink positions (position 0 and high-norm ones) are
    left out unless --include-sinks. The model is the one the SAEs were trained on unless --model is given.

    Example: resa-interp dashboard --run runs/default --layer 12 --out runs/default/dashboard
    """
    from resa_interp.dashboards import DashboardConfig, run_dashboard

    _quiet_transformers()
    cfg = DashboardConfig(texts=texts, dataset=dataset, top=top, include_sinks=include_sinks, sink_ratio=sink_ratio,
                          threshold=threshold)
    result, page = run_dashboard(run, out, layer, features, cfg, model=model, hook=hook, device=device,
                                 plotlyjs=plotlyjs)
    for f in result.features:
        tokens = " ".join(repr(t) for t, _ in f.logits_positive[:3])
        at_marker = sum(c.at_marker for c in f.contexts)
        typer.echo(f"layer {f.layer:>3} latent {f.feature:>6}  fires {100 * f.frequency:7.3f}%  "
                   f"max {f.max_activation:8.3f}  top contexts at a marker {at_marker:>2}/{len(f.contexts)}  "
                   f"logits+ {tokens}")
    typer.echo(f"dashboard: {page}")


@app.command("sweep")
def sweep_command(
    out: Annotated[str, typer.Option("--out", "-o", help="Sweep folder: layer-L/ (tuned model, eval/), scores.csv, manifest.json; the Stage I run too unless --saes.")],
    layers: Annotated[Optional[str], typer.Option("--layers", help="Layers to tune: A-B or L,L,... [default: 1..L-2, as features; paper preset: 2-27].")] = None,
    model: ModelOpt = None,
    saes: Annotated[Optional[str], typer.Option("--saes", help="Stage I run with an SAE per layer [default: OUT; trained first when OUT has no SAEs].")] = None,
    hook: Annotated[Optional[str], typer.Option("--hook", help="resid_post (default) or mlp_out: which SAEs of the run.")] = None,
    dataset: Annotated[Optional[str], typer.Option("--dataset", "-d", help="Elicitation data for tuning: synthetic (cpu preset), still (paper), deepscaler, a hub id or a local file.")] = None,
    train_limit: Annotated[Optional[int], typer.Option("--train-limit", help="Tune on the first N question/answer pairs (cpu preset: 64; paper: all).")] = None,
    epochs: Annotated[Optional[int], typer.Option("--epochs", help="Tuning epochs per layer (paper: 2); ignored with --steps.")] = None,
    steps: Annotated[Optional[int], typer.Option("--steps", help="Tuning steps per layer (cpu preset: 60).")] = None,
    lr: Annotated[Optional[float], typer.Option("--lr", help="Peak AdamW lr (paper: 1e-6; cpu preset: 1e-4).")] = None,
    lora_r: Annotated[Optional[int], typer.Option("--lora-r", help="LoRA rank (paper: 32).")] = None,
    lora_alpha: Annotated[Optional[int], typer.Option("--lora-alpha", help="LoRA alpha (paper: 128).")] = None,
    lora_dropout: Annotated[Optional[float], typer.Option("--lora-dropout", help="LoRA dropout (paper: 0.05).")] = None,
    lora_targets: Annotated[Optional[str], typer.Option("--lora-targets", help="attn (paper), attn+mlp (authors' code) or module names.")] = None,
    save_every: Annotated[Optional[int], typer.Option("--save-every", help="Tuning checkpoint every N steps, for resuming (default 500; cpu preset 30).")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Tuning seed: LoRA init, dropout, data order (default 42).")] = None,
    tasks: Annotated[Optional[str], typer.Option("--tasks", help="Comma-separated evaluation tasks: paper task names, synthetic, .jsonl files [cpu preset: synthetic; paper: the six].")] = None,
    backend: Annotated[Optional[str], typer.Option("--backend", help="vllm (GPU, paper preset), transformers (cpu preset) or auto.")] = None,
    samples: Annotated[Optional[int], typer.Option("--samples", help="Generations per problem (default 1).")] = None,
    max_new_tokens: Annotated[Optional[int], typer.Option("--max-new-tokens", help="Generation budget (paper: 32768; cpu preset: 256).")] = None,
    temperature: Annotated[Optional[float], typer.Option("--temperature", help="Sampling temperature (paper: 0.6).")] = None,
    limit: Annotated[Optional[int], typer.Option("--limit", help="Evaluate the first N problems of each task (cpu preset: 20; paper: all).")] = None,
    eval_seed: Annotated[Optional[int], typer.Option("--eval-seed", help="Seed of sampling and GPQA's option order (default 0).")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", help="Sequences per generation batch (transformers backend, default 8).")] = None,
    device: Annotated[Optional[str], typer.Option("--device", help="auto, cpu or cuda, for Stage I, tuning and evaluation.")] = None,
    preset: Annotated[str, typer.Option("--preset", help="cpu (default: embedded model, short tuning, 20 synthetic problems) or paper (Table 6: R1-Distill, STILL, layers 2-27, the six tasks on vLLM).")] = "cpu",
) -> None:
    """Per-layer sweep: SAE-Tuning at every layer with its Stage I SAE, each tuned model evaluated, into OUT/scores.csv.

    Resumable: finished layers are kept, an interrupted tuning continues from its checkpoint. The scores file
    (layer, one column per task in percent, avg) is what select-layers --scores reads.

    Example: resa-interp sweep --layers 11,12 --steps 10 --limit 5 --max-new-tokens 128 --out runs/default
    """
    from resa_interp.eval_tasks import parse_task_list
    from resa_interp.sweep import sweep, sweep_config
    from resa_interp.tuning import lora_targets as parse_targets

    _quiet_transformers()
    config = sweep_config(
        preset, layers=layers, tasks=parse_task_list(tasks) if tasks is not None else None, saes_run=saes,
        device=device,
        tune=dict(
            model=model, hook=hook, dataset=dataset, limit=train_limit, epochs=epochs, steps=steps, lr=lr,
            lora_r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout,
            lora_targets=parse_targets(lora_targets) if lora_targets else None, save_every=save_every, seed=seed,
        ),
        evaluation=dict(
            backend=backend, samples=samples, max_new_tokens=max_new_tokens, temperature=temperature, limit=limit,
            seed=eval_seed, batch_size=batch_size,
        ),
    )
    result = sweep(config, out, echo=typer.echo)
    counts = Path(out) / "counts.csv"
    typer.echo(
        f"{len(result.layers)} layers in {result.wall_s:.0f} s; scores: {result.scores_csv}\n"
        f"next: resa-interp select-layers --counts {counts if counts.exists() else 'COUNTS.csv'} "
        f"--scores {result.scores_csv} --out {Path(out) / 'layers'}"
    )


def main() -> None:
    """Console entry point: run the Typer app, turning bad input into one line and exit code 2."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    command = typer.main.get_command(app)
    try:
        code = command.main(args=sys.argv[1:], prog_name="resa-interp", standalone_mode=False)
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
    except typer.Abort:
        typer.echo("aborted", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        code = 130
    # recent typer turns Ctrl-C into exit code 130, returned (not raised) outside standalone mode
    if code == 130:
        typer.echo("interrupted: finished work is saved; rerun the same command (with --resume where it has one) "
                   "to continue", err=True)
    if isinstance(code, int) and code:
        sys.exit(code)


def _command_path(exc: Exception) -> str:
    if exc.ctx is None or exc.ctx.parent is None:
        return ""
    return f"{exc.ctx.info_name} "


if __name__ == "__main__":
    main()
