"""Every option that more than one command takes, declared once as a typed `Annotated` alias.

A command writes `model: Model = None`; its default stays in its own signature (presets decide where it is None).
Where one option goes by another flag in one command (sweep's `--train-limit`), `renamed` gives
the same declaration another flag. Options only one command takes are declared in that command.
"""

from __future__ import annotations

from typing import Annotated, Any, get_args

import typer


def renamed(alias: Any, *flags: str) -> Any:
    """The option `alias` (an `Annotated[T, typer.Option(help=...)]`) under other flags, help and type unchanged."""
    kind, info = get_args(alias)
    return Annotated[kind, typer.Option(*flags, help=info.help)]


# ------------------------------------------------------------------ models and runs

Model = Annotated[
    str | None,
    typer.Option(
        "--model",
        "-m",
        help="Model spec: HF directory, .gguf file, hub id (org/name), or 'smollm2-135m' (the embedded default).",
    ),
]
Device = Annotated[
    str | None,
    typer.Option("--device", help="cpu, cuda, cuda:N or auto (CUDA when present; under accelerate launch each "
                 "process's own GPU)."),
]
Dtype = Annotated[
    str | None,
    typer.Option("--dtype", help="Model dtype: float32, bfloat16 or float16 (bfloat16 wants a GPU); auto: bfloat16 "
                 "on CUDA, float32 on CPU."),
]
Out = Annotated[str, typer.Option("--out", "-o", help="Output folder (what is written there: see above).")]
Saes = Annotated[
    str | None,
    typer.Option("--saes", help="Stage I run whose SAEs to use (RUN/saes/blocks.L.hook_<hook>/); for features and "
                 "sweep the default is OUT, trained first when OUT has none."),
]
Source = Annotated[
    str | None,
    typer.Option("--from", help="Pretrained SAEs: SAELens folder or run, EleutherAI sparsify folder (layers.N/), or "
                 "RELEASE:SAE_ID."),
]
Shard = Annotated[
    str | None,
    typer.Option("--shard", help="Sweep only shard I of N of the layers (layers[I::N]), e.g. 0/4 .. 3/4 in a job "
                 "array; under torchrun the ranks split the layers by themselves. Every shard merges scores.csv."),
]
Layers = Annotated[
    str | None,
    typer.Option("--layers", help="Layers (hook indices, blocks.N): all, A-B or L,L,... [default: train-saes all; "
                 "features and sweep 1..L-2, the paper's cut]."),
]
Hook = Annotated[
    str | None,
    typer.Option("--hook", help="resid_post (output of decoder layer l, the authors' code; the default), mlp_out "
                 "(the paper's text), resid_pre, resid_mid, attn_out, or any TransformerLens hook name pattern with "
                 "the layer as {l} (blocks.{l}.attn.hook_z, blocks.{l}.mlp.hook_post, ...); SAE-Tuning splices at "
                 "resid_post, resid_pre, mlp_out, attn_out and blocks.{l}.attn.hook_z."),
]
Dataset = Annotated[
    str | None,
    typer.Option("--dataset", "-d", help="Question/answer data: synthetic (built-in), still, deepscaler, a hub id, or "
                 "a .json/.jsonl/.csv/.parquet file."),
]
Template = Annotated[
    str | None,
    typer.Option("--template", help="r1 (the authors' template and system prompt, whitespace included; default), "
                 "r1-paper (the printed one-line system prompt) or short (the paper's section 2.1 template)."),
]
Pack = Annotated[
    bool | None,
    typer.Option("--pack/--no-pack", help="Join the texts with EOS into chunks of exactly --max-seq-len tokens, as "
                 "the authors' code (sparsify's chunk_and_tokenize) [default: on with --preset paper, else off]."),
]
MaxSeqLen = Annotated[
    int | None,
    typer.Option("--max-seq-len", help="Tokens per sequence: texts are truncated to it; with --pack, the chunk "
                 "length [default: 1024 train-saes, 2048 tune; --preset paper 2048]."),
]
Seed = Annotated[
    int | None, typer.Option("--seed", help="Seed of the command's random choices (same seed, same result on CPU).")
]
Seeds = Annotated[
    str | None,
    typer.Option("--seeds", help="Train one SAE per layer for each of these seeds, e.g. 0,1,2, all on the same batches "
                 "of one forward pass (they differ only in initialisation); the first is the run's seed and its SAEs "
                 "are OUT/saes/<hook_name>/, the others go to OUT/saes/seed-<s>/<hook_name>/."),
]
NSeeds = Annotated[
    int | None, typer.Option("--n-seeds", help="Same as --seeds with --seed and the N-1 seeds after it.")
]
ProblemColumn = Annotated[str | None, typer.Option("--problem-column", help="Question column of --dataset.")]
AnswerColumn = Annotated[str | None, typer.Option("--answer-column", help="Answer column of --dataset.")]
KeepFirst = Annotated[bool, typer.Option("--keep-first", help="Also train on the first (sink) position.")]
Tokens = Annotated[
    int | None, typer.Option("--tokens", help="Training tokens per SAE [default: 98304; with --activations, what the "
                             "cache holds]; 0 = one epoch over the dataset.")
]
Threshold = Annotated[float | None, typer.Option("--threshold", help="A latent fires when its activation > this.")]
Resume = Annotated[
    bool,
    typer.Option("--resume", help="Require an interrupted run in OUT and continue it from its last checkpoint, to the "
                 "same result as an uninterrupted run."),
]
DryRun = Annotated[
    bool,
    typer.Option("--dry-run", help="Print the resolved settings (every difference from the paper's Appendix A marked) "
                 "and the plan, then exit: no weights are loaded, nothing is written."),
]
Preset = Annotated[
    str | None,
    typer.Option("--preset", help="cpu (the embedded model, minutes) or paper (R1-Distill-Qwen-1.5B, STILL, "
                 "Appendix A; a GPU); options given override it."),
]

# ------------------------------------------------------------------ SAE-Tuning (tune, sweep)

TrainLimit = Annotated[
    int | None, typer.Option("--limit", help="Tune on the first N question/answer pairs (cpu preset: 64; paper: all).")
]
Epochs = Annotated[int | None, typer.Option("--epochs", help="Passes over the data (paper: 2); ignored with --steps.")]
Steps = Annotated[
    int | None, typer.Option("--steps", help="Optimizer steps per tuning (cpu preset: 60); overrides --epochs.")
]
LoraLr = Annotated[
    float | None,
    typer.Option("--lr", help="Peak AdamW lr. Paper: 1e-6 (--preset paper). The cpu preset uses 1e-4: at 1e-6 the KL "
                 "barely moves in a 60-step CPU run."),
]
LoraR = Annotated[int | None, typer.Option("--lora-r", help="LoRA rank (paper: 32).")]
LoraAlpha = Annotated[int | None, typer.Option("--lora-alpha", help="LoRA alpha (paper: 128).")]
LoraDropout = Annotated[float | None, typer.Option("--lora-dropout", help="LoRA dropout (paper: 0.05).")]
LoraTargets = Annotated[
    str | None,
    typer.Option("--lora-targets", help="attn (paper: q,k,v,o), attn+mlp (authors' code) or comma-separated module "
                 "names."),
]
SaveEvery = Annotated[
    int | None, typer.Option("--save-every", help="Tuning checkpoint every N steps, for resuming (default 500; cpu "
                             "preset 30).")
]
TuneSeed = Annotated[
    int | None, typer.Option("--seed", help="Tuning seed: LoRA init, dropout, data order (default 42).")
]
SweepTrainLimit = renamed(TrainLimit, "--train-limit")
