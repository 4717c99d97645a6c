"""Every option that more than one command takes, declared once as a typed `Annotated` alias.

A command writes `out: Out`; its default stays in its own signature (presets decide where it is None). Options
that are a config's fields come from the field (`cli/fields.py`, e.g. `tune_option` for tune's and sweep's tuning
options); options only one command takes are declared in that command.
"""

from __future__ import annotations

from typing import Annotated

import typer

# ------------------------------------------------------------------ models and runs

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
