"""A features run: the SAEs (trained first when asked and the output folder has none), the reasoning features of
every seed, their cross-seed matching, the outputs and the manifest record."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from resa_interp.features.config import FeatureConfig
from resa_interp.features.extract import LayerFeatures, extract_features, measure_boundary
from resa_interp.features.outputs import write_outputs
from resa_interp.features.prompts import PromptInfo
from resa_interp.features.reasonscore import (
    LayerScores,
    read_reason_texts,
    read_reason_words,
    reasonscore_features,
    require_reason_words,
)
from resa_interp.features.saes import (
    check_trained_on,
    run_saes,
    saes_to_train,
    source_saes,
    train_first,
)
from resa_interp.features.stability import LayerStability, check_min_seeds, layer_stability
from resa_interp.model import Subject, load_subject
from resa_interp.numbering import default_layers, parse_layers
from resa_interp.runs import record_stage, run_relative
from resa_interp.sae import run_seeds


@dataclass
class FeaturesRun:
    """What `run_features` produced."""

    layers: list[LayerFeatures]
    """The reasoning features per layer (of the primary seed in a multi-seed run)."""
    prompts: list[PromptInfo]
    """The prompts as they were run."""
    paths: dict[str, Path]
    """The files written: `features` (features.json), `counts` (counts.csv), `figure` (and `scores`,
    reasonscore.safetensors, with `definition='reasonscore'`)."""
    seed_layers: dict[int, list[LayerFeatures]] = field(default_factory=dict)
    """Multi-seed runs: seed -> its reasoning features per layer (the primary seed's are `layers`)."""
    stability: list[LayerStability] = field(default_factory=list)
    """Multi-seed runs: per layer, the counts over seeds and the cross-seed matching."""
    scores: dict[int, LayerScores] = field(default_factory=dict)
    """`definition='reasonscore'`: per layer, every latent's ReasonScore (of the primary seed)."""
    word_counts: dict[str, int] = field(default_factory=dict)
    """`definition='reasonscore'`: per reasoning word, its windows in the texts' tokens."""


def run_features(
    config: FeatureConfig,
    out: str | Path,
    subject: Subject | None = None,
    *,
    train_missing: bool = False,
    seeds: tuple[int, ...] | None = None,
    echo: Callable[[str], None] | None = None,
) -> FeaturesRun:
    """Load the SAEs (a Stage I run, or `config.source`), extract, write the outputs into `out` and record the
    stage; `subject` is the model to run (None: `config.model` is loaded with `config.device` and `config.dtype`).

    With `train_missing`, an `out` without SAEs (and none named by `config.saes` or `config.source`) gets a Stage I
    run first, with Stage I's defaults at `config.layers` (None: 1..L-2) and `seeds` (None: 3 seeds, 0, 1, 2;
    see `saes_to_train`), announced through `echo`. Every setting is checked before the model is loaded.
    """
    stated_out, out = out, Path(out)
    config.check()
    stage1 = saes_to_train(config, out, seeds) if train_missing else None
    prompts = [config.prompts] if isinstance(config.prompts, str) else list(config.prompts)
    reasonscore = config.definition == "reasonscore"
    texts = read_reason_texts(config.texts) if reasonscore else []
    if reasonscore:  # refused before the model is loaded: texts in which no reasoning word occurs
        require_reason_words(texts, read_reason_words(config.reason_words), str(config.texts))
    if subject is None:
        subject = load_subject(config.model, dtype=config.dtype, device=config.device)
    layers = config.layers or default_layers(subject.facts.n_layers)
    if stage1 is not None:
        stage1.layers = layers
        train_first(stage1, stated_out, echo or _silent, f"Stage I defaults, layers {stage1.layers}, seeds "
                    f"{','.join(map(str, stage1.all_seeds))}", subject=subject)
    hook, source = config.hook, config.source
    wanted = parse_layers(layers, subject.facts.n_layers)
    device = str(subject.device)
    run = Path(config.saes if config.saes is not None else out)
    if source is not None:
        primary_set = source_saes(source, hook, wanted, out, subject)
    else:
        primary_set = run_saes(run, hook, wanted, out, device)
    saes = primary_set.saes
    if not config.allow_model_mismatch:
        check_trained_on(saes, subject)
    further = run_seeds(run) if source is None else []
    min_seeds = check_min_seeds(config.min_seeds, 1 + len(further))
    infos, results, scores, words = _extract(subject, saes, hook, prompts, texts, config, primary_set.paths,
                                             primary_set.quality)
    if config.noise and not reasonscore:  # the boundary and its noise are the marker rule's
        measure_boundary(subject, saes, hook, infos, config, results)
    seed_layers: dict[int, list[LayerFeatures]] = {}
    stability: list[LayerStability] = []
    if further:
        primary = int(saes[wanted[0]].cfg.metadata.get("seed", 0))
        decoders = {primary: {layer: sae.W_dec.detach() for layer, sae in saes.items()}}
        seed_layers[primary] = results
        for seed in further:
            seed_set = run_saes(run, hook, wanted, out, device, seed=seed)
            seed_layers[seed] = _extract(subject, seed_set.saes, hook, prompts, texts, config, seed_set.paths,
                                         seed_set.quality)[1]
            decoders[seed] = {layer: sae.W_dec.detach() for layer, sae in seed_set.saes.items()}
        stability = [
            layer_stability(layer, {s: decoders[s][layer] for s in seed_layers},
                            {s: seed_layers[s][i].features for s in seed_layers}, config.match_threshold, min_seeds)
            for i, layer in enumerate(r.layer for r in results)  # every seed's results are sorted by layer
        ]
    written = write_outputs(out, subject, hook, config, infos, results, stability, min_seeds,
                            scores=scores, word_counts=words, n_texts=len(texts))
    counts = {r.layer: r.count for r in results}
    record_stage(
        out,
        "features",
        {"config": asdict(config), "model": subject.spec, "hook": hook, "layers": wanted,
         "saes": run_relative(config.saes or source or out, out), "counts": counts,
         "seeds": list(seed_layers), "stable": {st.layer: st.stable_count for st in stability}},
    )
    return FeaturesRun(results, infos, written, seed_layers, stability, scores, words)


def _extract(subject: Subject, saes: dict, hook: str, prompts: list[str], texts: list[str], config: FeatureConfig,
             paths: dict[int, str], quality: dict[int, dict]
             ) -> tuple[list[PromptInfo], list[LayerFeatures], dict[int, LayerScores], dict[str, int]]:
    """One seed's reasoning features by the config's definition: (prompts as run, features per layer, and for
    ReasonScore every layer's scores and the words' window counts)."""
    if config.definition == "reasonscore":
        found, scores, words = reasonscore_features(subject, saes, hook, texts, config, paths, quality)
        return [], found, scores, words
    infos, found = extract_features(subject, saes, hook, prompts, config, paths, quality)
    return infos, found, {}, {}


def _silent(line: str) -> None:
    """The `echo` of a caller that wants no progress lines."""
