"""`steer`: do the reasoning features matter? Edit them (ablate, clamp, scale) and measure, always beside a
control of random latents with the same firing frequencies edited the same way (`DEFINITION` says how; it is
written into effects.json)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from safetensors.torch import load_file

from resa_interp.data import R1_SYSTEM_PROMPT, elicitation_prompt, format_trigger, load_qa, marker_spans, synthetic_qa
from resa_interp.errors import ResaError
from resa_interp.features import REASONING, model_spec, select_features
from resa_interp.interventions.config import SteerConfig, parse_latents
from resa_interp.interventions.hook import Intervention, LatentEdit
from resa_interp.interventions.measure import (
    MEASURES,
    Estimate,
    TextEffect,
    bootstrap,
    greedy,
    log_probs,
    split_generation,
    text_effect,
)
from resa_interp.interventions.report import write_steer
from resa_interp.interventions.results import ConditionEffect, Difference, GenerationSample, SteerResult
from resa_interp.model import Subject, load_subject
from resa_interp.numbering import layer_ranges, parse_layers
from resa_interp.runs import record_stage
from resa_interp.sae import check_sae_fits, load_sae

if TYPE_CHECKING:
    from sae_lens import SAE

SPARSITY_FILE = "sparsity.safetensors"
DEFINITION = " ".join("""
`steer`: do the reasoning features matter? Edit them (ablate, clamp, scale) and measure, always beside a
control of random latents with the same firing frequencies edited the same way.

Latents: the run's reasoning features (features.json), per layer, or ids given as `L:ID,...`. Each layer's
latents are edited alone ("layer L") and, with several layers, all at once ("all"). Control: for every chosen
latent, a random other latent of the same SAE whose firing frequency (the log10 rates in sparsity.safetensors)
sits at a nearby quantile (among the `window` nearest by quantile, drawn with `seed`); `control_draws`
independent draws, each text's control effect the mean over draws.

Texts: the R1 system prompt alone ('r1-prompt'), synthetic trigger texts ('trigger'), or a JSONL file with a
'text' per row (taken as is) or 'problem'/'answer' (put in the r1 trigger template). Generation (`generate` > 0)
needs questions: greedy continuations of the r1 template cut after `Assistant: <think>`, clean, with every
layer's latents edited at once, and with the first control draw; the answer is graded by the `grade` callable
the caller passes (the CLI passes the evaluation stage's grader, which needs the `eval` extra: the grader
belongs to a later stage, so this stage takes it as an argument instead of importing it).
""".split())
"""What `steer` measures and against what, in one line: effects.json's "definition"."""


@dataclass
class SteerText:
    """One text to measure on."""

    text: str
    ids: list[int]
    markers: set[int]
    """Token positions inside `<think>`/`</think>` spans."""
    problem: str | None = None
    answer: str | None = None


def load_texts(spec: str, subject: Subject, n: int, seed: int = 0) -> list[SteerText]:
    """The texts `spec` names (see `SteerConfig.texts`), tokenized with their marker positions."""
    pairs: list[tuple[str, str | None, str | None]]
    if spec == "r1-prompt":
        pairs = [(R1_SYSTEM_PROMPT, None, None)]
    elif spec == "trigger":
        pairs = [(format_trigger(e.problem, e.answer), e.problem, e.answer) for e in synthetic_qa(n, seed=seed)]
    else:
        try:
            rows = [json.loads(line) for line in Path(spec).read_text().splitlines() if line.strip()][:n]
        except json.JSONDecodeError as exc:
            raise ResaError(f"--texts {spec}: not JSONL ({exc}); accepted rows with 'text', or 'problem' and "
                            "'answer'") from None
        if rows and all(isinstance(row, dict) and "text" in row for row in rows):
            pairs = [(str(row["text"]), None, None) for row in rows]
        else:
            pairs = [(format_trigger(e.problem, e.answer), e.problem, e.answer) for e in load_qa(spec, limit=n)]
    out = []
    for number, (text, problem, answer) in enumerate(pairs):
        spans = marker_spans(text, subject.tokenizer)
        if not spans.marker_positions:
            raise ResaError(f"--texts {spec}: text {number} has no <think> or </think>; nothing to compare with")
        out.append(SteerText(text, spans.token_ids, spans.marker_positions, problem, answer))
    return out


def generation_prompt(problem: str) -> str:
    """The r1 trigger template up to and including the assistant's opening `<think>`."""
    return elicitation_prompt(problem, "r1")


def load_sparsity(sae_folder: str | Path) -> torch.Tensor:
    """log10 firing rate per latent from an SAE folder's sparsity.safetensors (one-line error without one)."""
    path = Path(sae_folder) / SPARSITY_FILE
    if not path.is_file():
        raise ResaError(f"{path}: missing; the control needs firing frequencies (train-saes writes this file)")
    return load_file(str(path))["sparsity"].float()


def matched_controls(log_rates: torch.Tensor, latents: list[int], window: int, rng: np.random.Generator) -> list[int]:
    """For each latent, a distinct random other latent among the `window` nearest to it in firing-frequency
    quantile (none of `latents` themselves)."""
    d = len(log_rates)
    order = torch.argsort(log_rates, stable=True).numpy()
    quantile = np.empty(d)
    quantile[order] = np.arange(d) / max(d - 1, 1)
    taken = set(latents)
    if d - len(taken) < len(latents):
        raise ResaError(f"{len(latents)} latents chosen of {d}: too few others left for a control")
    chosen = []
    for latent in latents:
        free = np.array([i for i in range(d) if i not in taken])
        nearest = free[np.argsort(np.abs(quantile[free] - quantile[latent]), kind="stable")[:window]]
        pick = int(rng.choice(nearest))
        taken.add(pick)
        chosen.append(pick)
    return chosen


@dataclass
class Condition:
    """One edit to compare with the clean model: a layer's (or every layer's) chosen or control latents."""

    name: str
    """'layer L' or 'all'."""
    kind: str
    """'reasoning' (the chosen latents; named so for the default) or 'control'."""
    edits: dict[int, LatentEdit]
    draw: int = 0
    """Which control draw (0 for the chosen latents)."""


def conditions(chosen: dict[int, list[int]], controls: dict[int, list[list[int]]], mode: str,
               value: float) -> list[Condition]:
    """Per layer (and 'all' with several layers): the chosen latents, then each control draw."""
    groups = [(f"layer {layer}", [layer]) for layer in chosen]
    if len(chosen) > 1:
        groups.append(("all", list(chosen)))
    out = []
    for name, layers in groups:
        out.append(Condition(name, "reasoning", {la: LatentEdit(tuple(chosen[la]), mode, value) for la in layers}))
        for draw in range(len(next(iter(controls.values())))):
            edits = {la: LatentEdit(tuple(controls[la][draw]), mode, value) for la in layers}
            out.append(Condition(name, "control", edits, draw))
    return out


METRICS = ("dlogp_marker", "dlogp_other", "kl")


def _per_text(effects: list[list[TextEffect]]) -> dict[str, list[float]]:
    """Draws x texts -> metric -> per-text mean over draws."""
    return {m: np.nanmean([[getattr(e, m) for e in draw] for draw in effects], axis=0).tolist() for m in METRICS}


def summarize(cfg: SteerConfig, conds: list[Condition], results: list[list[TextEffect]]
              ) -> tuple[list[ConditionEffect], list[Difference]]:
    """Pool control draws per condition, bootstrap every metric, and pair chosen with control per text."""
    effects, differences = [], []
    for name in dict.fromkeys(c.name for c in conds):
        pooled = {}
        for kind in ("reasoning", "control"):
            idx = [i for i, c in enumerate(conds) if c.name == name and c.kind == kind]
            per_text = _per_text([results[i] for i in idx])
            latents = {la: [list(conds[i].edits[la].latents) for i in idx] for la in conds[idx[0]].edits}
            est = {m: bootstrap(per_text[m], cfg.bootstrap, cfg.seed) for m in METRICS}
            effects.append(ConditionEffect(name, kind, latents, **est, per_text=per_text))
            pooled[kind] = per_text
        diff = {m: bootstrap(list(np.subtract(pooled["reasoning"][m], pooled["control"][m])), cfg.bootstrap, cfg.seed)
                for m in METRICS}
        differences.append(Difference(name, **diff))
    return effects, differences


@dataclass
class Loaded:
    """The model, hook, chosen latents and their SAEs, ready to run."""

    subject: Subject
    hook: str
    latents: dict[int, list[int]]
    saes: dict[int, SAE]
    sae_dirs: dict[int, Path]


def load_chosen(run: str | Path, latents: str = REASONING, layers: str | None = None, hook: str | None = None,
                model: str | None = None, device: str = "cpu", subject: Subject | None = None) -> Loaded:
    """Resolve `latents` ('reasoning' or 'L:ID,...') at `layers` against a run and load what running them needs
    (`subject`, or `model`, or the model the SAEs were trained on)."""
    if latents.strip() == REASONING:
        sel = select_features(run, None, REASONING, hook)
        hook, chosen, dirs, doc = sel.hook, sel.features, sel.sae_dirs, sel.doc
    else:
        chosen = parse_latents(latents)
        sels = {layer: select_features(run, layer, ",".join(map(str, ids)), hook) for layer, ids in chosen.items()}
        first = next(iter(sels.values()))
        hook, dirs, doc = first.hook, {layer: s.sae_dirs[layer] for layer, s in sels.items()}, first.doc
    if subject is None:
        subject = load_subject(model or model_spec(load_sae(next(iter(dirs.values()))), doc), device=device)
    chosen = only_layers(chosen, layers, subject.facts.n_layers)
    saes = {layer: load_sae(dirs[layer], device=device) for layer in chosen}
    for layer, sae in saes.items():
        check_sae_fits(sae, subject, hook, layer)
        LatentEdit(tuple(chosen[layer])).check(sae.cfg.d_sae)
    return Loaded(subject, hook, chosen, saes, {layer: dirs[layer] for layer in chosen})


def only_layers(chosen: dict[int, list[int]], spec: str | None, n_layers: int) -> dict[int, list[int]]:
    """The chosen latents at the layers `spec` names (None: all); one-line error for a layer without any."""
    if spec is None:
        return chosen
    wanted = parse_layers(spec, n_layers)
    missing = [layer for layer in wanted if layer not in chosen]
    if missing:
        raise ResaError(f"--layers {spec}: no chosen latents at layer(s) {layer_ranges(missing)}; they are at "
                        f"layers {layer_ranges(chosen)}")
    return {layer: chosen[layer] for layer in wanted}


def steer(cfg: SteerConfig, subject: Subject | None = None,
          grade: Callable[[str, str], bool] | None = None, progress: bool = True) -> SteerResult:
    """Run the chosen and the control edits on the texts (and generations) and measure them against the clean
    model; `grade(answer, gold)` grades generated answers (None: ungraded)."""
    from tqdm.auto import tqdm

    cfg.check()
    loaded = load_chosen(cfg.run, cfg.latents, cfg.layers, cfg.hook, cfg.model, cfg.device, subject)
    subject, hook, chosen, saes, dirs = loaded.subject, loaded.hook, loaded.latents, loaded.saes, loaded.sae_dirs
    rng = np.random.default_rng(cfg.seed)
    rates = {layer: load_sparsity(folder) for layer, folder in dirs.items()}
    controls = {layer: [matched_controls(rates[layer], chosen[layer], cfg.window, rng)
                        for _ in range(cfg.control_draws)] for layer in chosen}
    conds = conditions(chosen, controls, cfg.mode, cfg.value)
    texts = load_texts(cfg.texts, subject, cfg.n_texts, cfg.seed)
    results: list[list[TextEffect]] = [[] for _ in conds]
    with tqdm(total=len(texts) * len(conds), desc="steer: texts x conditions", disable=not progress) as bar:
        for first in range(0, len(texts), cfg.batch_size):
            batch = texts[first : first + cfg.batch_size]
            clean = log_probs(subject, [t.ids for t in batch])
            for i, cond in enumerate(conds):
                with Intervention(subject.hf, hook, saes, cond.edits, cfg.keep_first):
                    edited = log_probs(subject, [t.ids for t in batch])
                results[i] += [text_effect(c, e, t.ids, t.markers, cfg.keep_first)
                               for c, e, t in zip(clean, edited, batch)]
                bar.update(len(batch))
    effects, differences = summarize(cfg, conds, results)
    every = [c for c in conds if c.name == ("all" if len(chosen) > 1 else conds[0].name) and c.draw == 0]
    generations = _generations(cfg, subject, hook, saes, every, texts, grade, progress)
    samples = _samples(cfg, subject, texts, conds, results)
    return SteerResult(effects, differences, generations, _generation_summary(cfg, generations), samples,
                       subject.spec, len(texts))


def _generations(cfg: SteerConfig, subject: Subject, hook: str, saes: dict, conds: list[Condition],
                 texts: list[SteerText], grade, progress: bool) -> list[GenerationSample]:
    from tqdm.auto import tqdm

    questions = [t for t in texts if t.problem is not None][: cfg.generate]
    out = []
    for text in tqdm(questions, desc="steer: generations", disable=not progress or not questions):
        prompt = subject.tokenizer(generation_prompt(text.problem))["input_ids"]
        runs = {"clean": greedy(subject, prompt, cfg.max_new_tokens)}
        for cond in conds:
            with Intervention(subject.hf, hook, saes, cond.edits, cfg.keep_first):
                runs["edited" if cond.kind == "reasoning" else "control"] = greedy(subject, prompt, cfg.max_new_tokens)
        split = {k: split_generation(subject, ids, text.answer, grade) for k, ids in runs.items()}
        out.append(GenerationSample(text.problem, text.answer, **split))
    return out


def _generation_summary(cfg: SteerConfig, samples: list[GenerationSample]) -> dict[str, Estimate]:
    if not samples:
        return {}
    out = {}
    for metric, get in (("reasoning_tokens", lambda g: float(g.reasoning_tokens)),
                        ("correct", lambda g: float("nan") if g.correct is None else float(g.correct))):
        values = {k: [get(getattr(s, k)) for s in samples] for k in ("clean", "edited", "control")}
        for k, v in values.items():
            out[f"{metric}_{k}"] = bootstrap(v, cfg.bootstrap, cfg.seed)
        for k in ("edited", "control"):
            out[f"{metric}_{k}_minus_clean"] = bootstrap(list(np.subtract(values[k], values["clean"])),
                                                         cfg.bootstrap, cfg.seed)
    return out


def _samples(cfg: SteerConfig, subject: Subject, texts: list[SteerText], conds: list[Condition],
             results: list[list[TextEffect]]) -> list[dict]:
    tokens = subject.tokenizer.convert_ids_to_tokens
    out = []
    for t, text in enumerate(texts[: cfg.samples]):
        per_cond = [{"condition": c.name, "kind": c.kind, "draw": c.draw,
                     "kl": results[i][t].kl_per_position, "dlogp": results[i][t].dlogp_per_target}
                    for i, c in enumerate(conds) if c.draw == 0]
        out.append({"text": text.text, "tokens": tokens(text.ids), "markers": sorted(text.markers),
                    "conditions": per_cond})
    return out


def run_steer(cfg: SteerConfig, out: str | Path, subject: Subject | None = None,
              grade: Callable[[str, str], bool] | None = None, progress: bool = True) -> SteerResult:
    """`steer`, then OUT/effects.json, OUT/samples.json/.html, OUT/figures/steer_effects.html and the manifest."""
    result = steer(cfg, subject, grade, progress)
    spec = cfg.model or result.model
    header = {"definition": DEFINITION, "measures": MEASURES,
              "model": spec, "mode": cfg.mode, "value": cfg.value, "texts": cfg.texts,
              "n_texts": result.n_texts, "graded": grade is not None, "config": asdict(cfg)}
    result.paths = write_steer(result, out, header)
    record_stage(out, "steer", {"config": asdict(cfg), "model": spec,
                                "differences": {d.name: asdict(d.dlogp_marker) for d in result.differences}})
    return result
