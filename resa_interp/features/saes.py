"""The SAEs a features run reads: one seed of a Stage I run (the output folder itself by default) or pretrained
SAEs, each with its quality and checked against the model; and the Stage I run trained first into an output
folder that has no SAEs (`saes_to_train`, `train_first`), which the sweep reuses."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from resa_interp.data import format_trigger, synthetic_qa
from resa_interp.errors import ResaError
from resa_interp.features.config import FeatureConfig
from resa_interp.features.stability import check_min_seeds
from resa_interp.model import Subject, encode_texts
from resa_interp.runs import run_relative
from resa_interp.sae import (
    SAETrainConfig,
    StageIResult,
    add_novel_quality,
    evaluate_saes,
    load_sae,
    load_source_sae,
    novel_texts,
    read_metrics,
    require_sae_dirs,
    run_sae_dirs,
    run_seeds,
    train_saes,
)

if TYPE_CHECKING:
    from sae_lens import SAE

QUALITY_KEYS = ("explained_variance", "explained_variance_qa", "explained_variance_novel",
                "explained_variance_novel_qa", "kl_spliced", "kl_spliced_qa", "l0")
"""The SAE quality a features run reports beside each layer's count."""
MAIN_SEEDS = 3
"""SAE seeds per layer of the Stage I run `features` makes when its output has no SAEs: every count comes with its
spread over seeds, and the stable count is the headline."""


@dataclass
class SAESet:
    """SAEs at the wanted layers, where each came from (relative to the output folder) and its quality."""

    saes: dict[int, SAE]
    paths: dict[int, str]
    quality: dict[int, dict]


def run_saes(run: Path, hook: str, layers: list[int], out: Path, device: str, seed: int | None = None) -> SAESet:
    """The SAEs of a Stage I run at `layers` (of a further `seed`'s; None: the run's own), with the quality Stage I
    measured for them."""
    found = require_sae_dirs(run, hook, layers, seed=seed)
    saes = {layer: load_sae(found[layer], device=device) for layer in layers}
    metrics = read_metrics(run, seed=seed)
    quality = {layer: {k: metrics[layer][k] for k in QUALITY_KEYS if k in metrics[layer]}
               for layer in layers if layer in metrics}
    return SAESet(saes, {layer: run_relative(found[layer], out) for layer in layers}, quality)


def source_saes(source: str, hook: str, layers: list[int], out: Path, subject: Subject) -> SAESet:
    """Pretrained SAEs (`FeatureConfig.source`) at `layers`, with their quality measured here (`heldout_quality`)."""
    saes = {layer: load_source_sae(source, layer, hook).to(subject.device) for layer in layers}
    return SAESet(saes, {layer: run_relative(source, out) for layer in layers}, heldout_quality(subject, saes, hook))


def heldout_quality(subject: Subject, saes: dict[int, SAE], hook: str, n_texts: int = 16) -> dict[int, dict]:
    """Quality of SAEs that come without Stage I metrics, measured on held-out synthetic trigger texts."""
    texts = [format_trigger(e.problem, e.answer) for e in synthetic_qa(n_texts, seed=10_007)]
    rows = evaluate_saes(subject, saes, hook, encode_texts(subject.tokenizer, texts))
    add_novel_quality(rows, evaluate_saes(subject, saes, hook, novel_texts(subject.tokenizer, n_texts, "r1"),
                                          splice=False))
    return {row["layer"]: {k: row[k] for k in QUALITY_KEYS} for row in rows}


def check_trained_on(saes: dict[int, SAE], subject: Subject) -> None:
    """A one-line error for an SAE trained on another model than `subject` (its metadata names the model folder)."""
    for layer, sae in saes.items():
        trained_on = sae.cfg.metadata.get("model_path")
        if trained_on and Path(trained_on).resolve() != Path(subject.path).resolve():
            raise ResaError(
                f"the layer-{layer} SAE was trained on {sae.cfg.metadata.get('model_name')} ({trained_on}), "
                f"not on {subject.spec}; pass that --model, or --allow-model-mismatch to transfer on purpose"
            )


def missing_saes(out: str | Path, hook: str, *elsewhere: str | None) -> bool:
    """Whether a stage must train its own SAEs into `out` first: no other SAEs are named (`elsewhere`: the options
    that name them, None when not given) and `out` has no `hook` SAEs."""
    return all(named is None for named in elsewhere) and not run_sae_dirs(out, hook)


def saes_to_train(
    config: FeatureConfig, out: str | Path, seeds: tuple[int, ...] | None = None
) -> SAETrainConfig | None:
    """The Stage I run a features run trains into `out` first, checked: None when its SAEs come from elsewhere
    (`config.saes`, `config.source`) or `out` has some. It has Stage I's defaults at the config's model, hook,
    device and dtype, and `seeds` (the first is the run's seed; None: `MAIN_SEEDS` seeds 0, 1, 2); its layers are
    the config's, or left empty for `train_first` when the model's depth decides them. `seeds` given when the SAEs
    exist must be the seeds of that run."""
    if missing_saes(out, config.hook, config.source, config.saes):
        seeds = seeds if seeds is not None else tuple(range(MAIN_SEEDS))
        stage1 = SAETrainConfig(model=config.model, layers=config.layers or "", hook=config.hook, device=config.device,
                                model_dtype=config.dtype, seed=seeds[0], seeds=seeds[1:])
        stage1.check()
        if config.min_seeds is not None:
            check_min_seeds(config.min_seeds, len(stage1.all_seeds))
        return stage1
    if seeds is not None and (config.source is not None or run_seeds(config.saes or out) != list(seeds[1:])):
        raise ResaError(f"--seeds/--n-seeds {','.join(map(str, seeds))}: {config.source or config.saes or out} "
                        "already has SAEs of other seeds; these options only choose the seeds of the Stage I run "
                        "made when OUT has none")
    return None


def train_first(stage1: SAETrainConfig, out: str | Path, echo: Callable[[str], None], settings: str,
                subject: Subject | None = None) -> StageIResult:
    """Train the Stage I run `stage1` into `out`, which has no SAEs yet, announced through `echo` as
    '`out` has no SAEs: training them first (`settings`)'."""
    echo(f"{out} has no SAEs: training them first ({settings})")
    return train_saes(stage1, out, subject=subject)
