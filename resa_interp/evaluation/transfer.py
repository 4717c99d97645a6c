"""Does SAE-Tuning transfer an ability? The paper's central control (section 3, Tables 3-4) at a model's own scale.

A source is made from the base model by SFT on worked solutions (`data.traces`, the 'r1-trace' template), so that
it has an ability the base lacks. Then, all on the same CoT-free elicitation data (the 'r1' template: the
answer alone between `<think>` and `</think>`), the same LoRA, steps and learning rate:

- `sae_tuning`: an SAE trained on the source (Stage I, CoT-free trigger text) spliced into the base, KL-LoRA, SAE
  removed (Resa);
- `cot_free_sft`: next-token loss, no SAE (the paper's STILL-CoT-free-SFT);
- `sae_tuning_base_sae`: the same with an SAE trained on the base itself (Resa-STILL-v5);
- `control_permuted_decoder`: the source's SAE with its decoder rows permuted (`sae.controls`): the same
  bottleneck without the source's features.

Each is tuned with several seeds at one middle layer, and `sae_tuning` alone at further layers; every model,
base and source included, answers the same held-out problems of the trained kinds greedily in the elicitation
format (`evaluation.elicited`), and `evaluation.recovery` gives accuracy and recovery with bootstrap intervals.
The source's reasoning-feature counts per layer (`features`) against per-layer recovery is the paper's layer
alignment (`layers.analyze_layers`); the source's SAE read in the tuned models (`dashboard.transparency`) shows
whether the source's reasoning features moved towards the source.

Resumable: every finished piece (data, source, SAEs, each tuned model, each model's answers) is kept in the output
folder, and a rerun with the same settings skips it.
"""

from __future__ import annotations

import csv
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from resa_interp.dashboard import agreement, latent_patterns
from resa_interp.data import QAExample, format_trigger, traced_qa
from resa_interp.errors import ResaError
from resa_interp.evaluation.elicited import answers_to_json, elicited_answers
from resa_interp.evaluation.recovery import BOOTSTRAP, summarize
from resa_interp.features import FeatureConfig, run_features
from resa_interp.layers import analyze_layers, read_counts, read_scores
from resa_interp.model import load_subject, resolve_model_path
from resa_interp.numbering import default_layers, parse_layers
from resa_interp.runs import atomic_write_json, atomic_write_text, numerics
from resa_interp.sae import CHECKPOINT, SAETrainConfig, load_sae, sae_dir, train_saes, write_permuted_control
from resa_interp.tuning import LORA_TARGETS, preset_config, tune

log = logging.getLogger(__name__)

HOOK = "resid_post"
BASE, SOURCE = "base", "source"
SAE_TUNING, SFT, BASE_SAE, CONTROL = "sae_tuning", "cot_free_sft", "sae_tuning_base_sae", "control_permuted_decoder"
TUNED = (SAE_TUNING, SFT, BASE_SAE, CONTROL)
"""The tuned conditions, each run with every seed at the middle layer."""
ANSWERS = "answers.json"


@dataclass(frozen=True)
class TransferConfig:
    """One transfer experiment. Defaults: the full run on the embedded model (94 minutes measured on 2 cores)."""

    model: str | None = None
    """The base (target) model; unset: the embedded SmolLM2-135M-Instruct."""
    layer: int = 15
    """The middle layer every tuned condition is run at, with every seed."""
    more_layers: tuple[int, ...] = (3, 8, 21, 26)
    """Further layers `sae_tuning` alone is run at (first seed), for the per-layer recovery."""
    seeds: tuple[int, ...] = (0, 1, 2)
    """Tuning seeds of each condition at the middle layer."""
    heldout: int = 200
    """Held-out problems of the trained kinds, none of them in any training set."""
    source_examples: int = 2000
    """Worked solutions the source is taught (SFT, 'r1-trace')."""
    source_steps: int = 600
    source_lr: float = 3e-4
    elicitation_examples: int = 1024
    """CoT-free question/answer pairs: Stage I's trigger text and every tuned condition's data."""
    steps: int = 200
    """Optimizer steps of every tuned condition (one sequence per step)."""
    lr: float = 1e-4
    """Peak learning rate of every tuned condition."""
    feature_layers: str | None = None
    """Layers of the source's Stage I run and feature counts (a layer spec); unset: 1..L-2, the paper's cut. The
    tuned layers are always added."""
    stage1: dict[str, Any] = field(default_factory=dict)
    """Overrides of Stage I's defaults (`SAETrainConfig` fields), the same for the source's and the base's SAEs."""
    max_new_tokens: int = 112
    """Greedy tokens per answer (the longest worked solution is about 90)."""
    batch_size: int = 32
    transparency_texts: int = 32
    """Held-out trigger texts the source's SAE reads in every model."""
    bootstrap: int = BOOTSTRAP
    device: str = "cpu"

    @property
    def layers(self) -> list[int]:
        """Every layer `sae_tuning` runs at: the middle layer first."""
        return [self.layer, *(layer for layer in self.more_layers if layer != self.layer)]

    def check(self, n_layers: int | None = None) -> None:
        """One-line errors for settings no run can use (before anything is trained)."""
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ResaError(f"seeds {self.seeds}: give at least one, each once")
        for name in ("heldout", "source_examples", "source_steps", "elicitation_examples", "steps",
                     "transparency_texts", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ResaError(f"{name} {getattr(self, name)} must be at least 1")
        if n_layers is not None:
            for layer in self.layers:
                if not 0 <= layer < n_layers:
                    raise ResaError(f"layer {layer} is outside the model: it has layers 0..{n_layers - 1}")


QUICK = {"heldout": 40, "seeds": (0,), "more_layers": (8, 22), "source_steps": 120, "steps": 30,
         "feature_layers": "8,15,22"}
"""--quick: a smoke run of every piece (one seed, two more layers, 40 problems, features at the tuned layers only,
a fifth of the source's steps, 30 tuning steps), to check that everything runs, not to measure."""


@dataclass(frozen=True)
class TransferData:
    """The experiment's three disjoint question sets, as written to OUT/data/."""

    source_traces: Path
    elicitation: Path
    heldout: list[QAExample]


def write_data(config: TransferConfig, out: Path) -> TransferData:
    """The source's worked solutions, the CoT-free elicitation pairs and the held-out problems (jsonl files in
    OUT/data/; the held-out questions appear in neither training set)."""
    source = traced_qa(config.source_examples, seed=1)
    elicitation = traced_qa(config.elicitation_examples, seed=2)
    trained = {e.problem for e in source} | {e.problem for e in elicitation}
    candidates = traced_qa(config.heldout * 4 + 100, seed=3)
    heldout = [e for e in candidates if e.problem not in trained][: config.heldout]
    if len(heldout) < config.heldout:
        raise ResaError(f"only {len(heldout)} held-out problems are outside the training sets; lower --heldout")
    data = out / "data"

    def write(name: str, rows: list[dict]) -> Path:
        return atomic_write_text(data / name, "".join(json.dumps(r) + "\n" for r in rows))

    write("heldout.jsonl", [{"problem": e.problem, "answer": e.answer} for e in heldout])
    return TransferData(
        write("source_traces.jsonl", [{"problem": e.problem, "answer": e.answer, "trace": e.trace} for e in source]),
        write("elicitation.jsonl", [{"problem": e.problem, "answer": e.answer} for e in elicitation]),
        [QAExample(e.problem, e.answer) for e in heldout],
    )


def _tuned(out: Path, **settings: Any) -> Path:
    """The merged model of the tuning run in `out` (trained, resumed or kept as it is)."""
    if (out / "manifest.json").exists() and (out / "merged").is_dir():
        return out / "merged"
    config = preset_config(None, resume=(out / "tune_config.json").exists(), **settings)
    return tune(config, out).merged


def _stage1(model: str | None, dataset: Path, layers: str, out: Path, config: TransferConfig) -> Path:
    """A one-seed Stage I run at `layers` on the CoT-free elicitation text (kept, or resumed, when present)."""
    if (out / "saes" / "metrics.json").exists():
        return out
    cfg = SAETrainConfig.from_options(model=model, dataset=str(dataset), template="r1", layers=layers, seed=0,
                                      device=config.device, **config.stage1)
    train_saes(cfg, out, resume=(out / CHECKPOINT).exists())
    return out


def _answers(model: Path, examples: list[QAExample], out: Path, config: TransferConfig) -> np.ndarray:
    """[correct (0/1), completion tokens] per held-out problem for `model`: shape [2, problems] (kept in
    OUT/.../answers.json)."""
    path = out / ANSWERS
    if not path.exists():
        answers = elicited_answers(model, examples, template="r1", max_new_tokens=config.max_new_tokens,
                                   batch_size=config.batch_size, device=config.device)
        atomic_write_json(path, answers_to_json(answers))
    rows = json.loads(path.read_text())
    if [r["problem"] for r in rows] != [e.problem for e in examples]:
        raise ResaError(f"{path} answers other held-out problems; remove it (or use another --out)")
    return np.array([[r["correct"] for r in rows], [r["n_tokens"] for r in rows]], dtype=float)


@dataclass
class Condition:
    """One tuned model of the experiment."""

    name: str
    layer: int
    seed: int
    sae: Path | None
    """The SAE spliced in; None: CoT-free SFT."""

    def folder(self, out: Path) -> Path:
        return out / "runs" / self.name / f"layer-{self.layer}" / f"seed-{self.seed}"


def conditions(config: TransferConfig, source_saes: Path, base_saes: Path, control: Path) -> list[Condition]:
    """Every tuned condition at the middle layer with every seed, then `sae_tuning` at the further layers."""
    mid, first = config.layer, config.seeds[0]
    saes = {SAE_TUNING: sae_dir(source_saes, HOOK, mid), SFT: None, BASE_SAE: sae_dir(base_saes, HOOK, mid),
            CONTROL: control}
    runs = [Condition(name, mid, seed, saes[name]) for name in TUNED for seed in config.seeds]
    return runs + [Condition(SAE_TUNING, layer, first, sae_dir(source_saes, HOOK, layer))
                   for layer in config.layers[1:]]


def run_transfer(config: TransferConfig, out: str | Path, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """The whole experiment into `out` (resumable); returns the document `figures/transfer.json` holds."""
    from transformers import AutoConfig

    out = Path(out)
    timings_file = out / "timings.json"
    timings: dict[str, float] = json.loads(timings_file.read_text()) if timings_file.exists() else {}
    """Seconds spent on each step, summed over the invocations (a kept piece adds about 0)."""

    def step(name: str, work: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        echo(f"transfer: {name}")
        t0 = time.time()
        value = work(*args, **kwargs)
        timings[name] = round(timings.get(name, 0.0) + time.time() - t0, 1)
        atomic_write_json(timings_file, timings)
        return value

    base_path = resolve_model_path(config.model)
    n_layers = AutoConfig.from_pretrained(base_path).num_hidden_layers
    config.check(n_layers)
    feature_layers = sorted(set(parse_layers(config.feature_layers or default_layers(n_layers), n_layers))
                            | set(config.layers))
    spec = ",".join(map(str, feature_layers))
    data = step("data", write_data, config, out)
    common = {"model": config.model, "device": config.device, "save_every": 50}
    source = step("source (SFT on worked solutions)", _tuned, out / "source", **common, no_sae=True,
                  dataset=str(data.source_traces), template="r1-trace", steps=config.source_steps,
                  lr=config.source_lr, lora_targets=LORA_TARGETS["attn+mlp"], seed=42)
    source_saes = step("Stage I on the source", _stage1, str(source), data.elicitation, spec, out / "source_saes",
                       config)
    features_out = out / "source_features"
    if not (features_out / "counts.csv").exists():
        step("reasoning features of the source", run_features,
             FeatureConfig(model=str(source), saes=str(source_saes), layers=spec, noise=False, device=config.device),
             features_out)
    base_saes = step("Stage I on the base", _stage1, config.model, data.elicitation, str(config.layer),
                     out / "base_saes", config)
    control = out / "control_sae"
    if not control.exists():
        write_permuted_control(sae_dir(source_saes, HOOK, config.layer), control, seed=0)
    answered: dict[str, list[np.ndarray]] = {}
    answered[BASE] = [step("answers: base", _answers, base_path, data.heldout, out / "base", config)]
    answered[SOURCE] = [step("answers: source", _answers, source, data.heldout, out / "source", config)]
    tuning = {"dataset": str(data.elicitation), "template": "r1", "steps": config.steps, "lr": config.lr}
    for c in conditions(config, source_saes, base_saes, control):
        folder = c.folder(out)
        label = f"{c.name} layer {c.layer} seed {c.seed}"
        sae = {"no_sae": True} if c.sae is None else {"sae": str(c.sae), "teacher_cache": str(out / "teacher_cache")}
        model = step(f"tune: {label}", _tuned, folder, **common, **tuning, **sae, seed=c.seed)
        key = c.name if c.layer == config.layer else f"{c.name}@{c.layer}"
        answered.setdefault(key, []).append(step(f"answers: {label}", _answers, model, data.heldout, folder, config))
        if c.name == SAE_TUNING and c.layer == config.layer:
            answered.setdefault(f"{SAE_TUNING}@{c.layer}", []).append(answered[key][-1])
    runs = {k: np.stack(v) for k, v in answered.items()}  # [seeds, (correct, tokens), problems]
    summary = summarize({k: v[:, 0] for k, v in runs.items()}, BASE, SOURCE, config.bootstrap)
    rows = {k: {**summary[k].to_dict(), "mean_completion_tokens": round(float(v[:, 1].mean()), 2)}
            for k, v in runs.items()}
    counts = _counts(features_out / "counts.csv")
    per_layer = {layer: {**rows[f"{SAE_TUNING}@{layer}"], "reasoning_features": counts.get(layer)}
                 for layer in config.layers}
    alignment = step("layer alignment", _alignment, counts, per_layer, out / "alignment")
    transparency = step("transparency", _transparency, config, out, data, source, base_path)
    doc = {
        "conditions": {k: v for k, v in rows.items() if "@" not in k},
        "per_layer": {str(layer): row for layer, row in sorted(per_layer.items())},
        "alignment": alignment,
        "transparency": transparency,
        "source_reasoning_features": {str(k): v for k, v in counts.items()},
        "settings": {**asdict(config), "feature_layers": feature_layers, "n_layers": n_layers,
                     "base_model_path": str(base_path), "numerics": numerics()},
        "timings_s": {**timings, "total": round(sum(timings.values()), 1)},
    }
    atomic_write_json(out / "transfer.json", doc)
    return doc


def _counts(path: Path) -> dict[int, int]:
    with path.open() as f:
        return {int(row["layer"]): int(row["count"]) for row in csv.DictReader(f)}


def _alignment(counts: dict[int, int], per_layer: dict[int, dict], out: Path) -> dict[str, Any]:
    """The paper's alignment of the source's feature counts with per-layer `sae_tuning` accuracy at the tuned layers
    (what `select-layers --counts out/counts.csv --scores out/scores.csv` computes; recovery is accuracy shifted and
    scaled, so under the scores' shift-min transform both give the same weights); the refusal's line where it
    cannot be fitted."""
    layers = sorted(per_layer)
    counts_csv = atomic_write_text(out / "counts.csv", "layer,count\n" + "".join(
        f"{layer},{counts.get(layer, 0)}\n" for layer in layers))
    scores_csv = atomic_write_text(out / "scores.csv", "layer,accuracy\n" + "".join(
        f"{layer},{per_layer[layer]['accuracy']:.6f}\n" for layer in layers))
    try:
        analysis = analyze_layers(read_counts(counts_csv), read_scores(scores_csv, "accuracy"))
    except ResaError as exc:
        return {"fitted": False, "reason": str(exc), "layers": layers}
    doc = analysis.to_dict()
    atomic_write_json(out / "layers.json", doc)
    return {"fitted": True, "layers": layers, "alignment": doc.get("alignment"),
            "recommendation": doc.get("recommendation")}


def _transparency(config: TransferConfig, out: Path, data: TransferData, source: Path, base: Path
                  ) -> dict[str, Any]:
    """The source's SAE at the middle layer read in every model at the middle layer on held-out trigger text:
    per source reasoning feature (and over all latents the source uses there), the correlation of its activation
    pattern with the source's."""
    sae = load_sae(sae_dir(out / "source_saes", HOOK, config.layer), device=config.device)
    doc = json.loads((out / "source_features" / "features.json").read_text())
    features = next((row["features"] for row in doc["layers"] if row["layer"] == config.layer), [])
    texts = [format_trigger(e.problem, e.answer, "r1") for e in data.heldout[: config.transparency_texts]]
    everything = list(range(sae.cfg.d_sae))
    reference = latent_patterns(load_subject(str(source), device=config.device), sae, everything, texts)
    used = [i for i in everything if bool((reference[:, i] > 0).any())]
    models = {BASE: base, **{f"{name} seed {s}": Condition(name, config.layer, s, None).folder(out) / "merged"
                             for name in TUNED for s in config.seeds}}
    patterns = {name: latent_patterns(load_subject(str(path), device=config.device), sae, everything, texts)
                for name, path in models.items()}
    result: dict[str, Any] = {"layer": config.layer, "texts": len(texts), "reasoning_features": features,
                              "latents_used_by_source": len(used)}
    if features:
        feat = agreement(reference[:, features], {k: v[:, features] for k, v in patterns.items()}, features)
        result["reasoning"] = {"per_feature": feat.correlation, "summary": feat.summary()}
    result["all_used_latents"] = agreement(reference[:, used], {k: v[:, used] for k, v in patterns.items()},
                                           used).summary()
    return result

