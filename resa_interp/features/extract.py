"""Prompt-only reasoning-feature extraction (paper section 5, Figure 3).

Definition (also written into features.json): with SAEs applied after layers 1..L-2, a latent is a reasoning
feature at layer l when its activation exceeds the threshold at every `<think>` and every `</think>`
occurrence of the prompt (`occurrences='any'`: at least one of each) and at no other position. For a marker
that tokenizes into several tokens, "at the occurrence" means on any token of its span (`marker_rule='any'`),
on its last token ('last'), or on every token of it ('all'). Positions outside all marker spans are "other".
A BOS token the tokenizer prepends is not part of the prompt and is excluded. With several prompts, a latent
must qualify in every one. By default each SAE reads the model's own clean activation; with `spliced`, every
SAE's reconstruction is spliced in at once (position 0, the sink the SAEs were not trained on, kept clean)
and each SAE reads the activation of that spliced model.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from resa_interp.data.synthetic import synthetic_qa
from resa_interp.data.templates import END_THINK, R1_SYSTEM_PROMPT, SYSTEM_PROMPTS, THINK, format_trigger, marker_spans
from resa_interp.errors import ResaError, check_choice
from resa_interp.features.boundary import (
    BOUNDARY,
    EXACT_PATHS,
    near_boundary,
    path_latents,
    path_noise,
    sides,
    span_activity,
    span_value,
    thresholds,
)
from resa_interp.features.stability import (
    DEFAULT_MATCH_THRESHOLD,
    STABILITY_RULE,
    LayerStability,
    check_min_seeds,
    check_threshold,
    layer_stability,
)
from resa_interp.figures import save_figure
from resa_interp.model.harvest import encode_texts
from resa_interp.model.hooks import canonical_hook, hook_name
from resa_interp.model.splice import spliced as splice_context
from resa_interp.model.subject import Subject, load_subject
from resa_interp.numbering import paper_label, parse_layers
from resa_interp.runs import SEED_COLUMN, atomic_write_json, atomic_write_text, record_stage, run_relative
from resa_interp.sae.folders import load_sae, require_sae_dirs, run_seeds
from resa_interp.sae.metrics import add_novel_quality, evaluate_saes, novel_texts, read_metrics
from resa_interp.sae.pretrained import load_source_sae

if TYPE_CHECKING:
    from sae_lens import SAE

MARKER_RULES = ("any", "last", "all")
OCCURRENCES = ("all", "any")
DEFINITION = __doc__.split("\n\n", 1)[1].strip()


@dataclass
class FeatureConfig:
    """How reasoning features are extracted."""

    threshold: float = 0.0
    """A latent is active at a position when its activation is above this (the paper: 0)."""
    relative_threshold: float = 0.0
    """A declared tolerance relative to each latent's peak: active only above this fraction of the latent's largest
    activation over the prompt (when that is above `threshold`); 0 keeps the paper's rule."""
    noise: bool = True
    """Measure the numerical noise of the latents along independent code paths (`features.boundary`) and report
    which features sit within it of the definition's boundary, and the feature set of every path."""
    marker_rule: str = "any"
    """Multi-token markers: 'any' token of the span, its 'last' token, or 'all' of its tokens."""
    occurrences: str = "all"
    """'all': active at every <think> and every </think>; 'any': at least one of each."""
    spliced: bool = False
    """Read activations of the model with every SAE's reconstruction spliced in at once."""
    exclude_first: bool = False
    """Also exclude position 0 when the tokenizer adds no BOS (there it is a high-norm sink token)."""
    model: str | None = None
    """Model spec, loaded with `device` and `dtype` when `run_features` gets no subject (None: the embedded
    model); ignored when a subject is given."""
    prompts: tuple[str, ...] = (R1_SYSTEM_PROMPT,)
    """Prompts to run, each with both markers; a latent must qualify in every one (default: the R1 system prompt as
    the authors' code writes it, the text the trigger data starts with)."""
    saes: str | None = None
    """Stage I run whose SAEs to use (its saes/ folder); None: the output folder itself."""
    source: str | None = None
    """Pretrained SAEs to use instead of a Stage I run (features --from); overrides `saes`."""
    layers: str | None = None
    """Layers to extract at: 'A-B', 'L,L,...' or 'all'; None: 1..L-2, the paper's cut."""
    hook: str = "resid_post"
    """Hookpoint of the SAEs: 'resid_post', 'mlp_out' or any hook `model.hooks.canonical_hook` accepts."""
    allow_model_mismatch: bool = False
    """Use SAEs trained on another model (of the same width) instead of refusing them."""
    device: str = "cpu"
    """Device to load the model on (when no subject is given) and the SAEs on: cpu, cuda, cuda:N or auto."""
    dtype: str = "float32"
    """Weights dtype of the model loaded when no subject is given."""
    match_threshold: float = DEFAULT_MATCH_THRESHOLD
    """Multi-seed runs: decoder cosine a cross-seed match needs (features/stability.py says why 0.7)."""
    min_seeds: int | None = None
    """Multi-seed runs: a reasoning feature is stable when matched in at least this many seeds (None: a
    majority); at most the run's number of seeds."""

    def check(self) -> None:
        """One-line errors for settings and prompts no extraction can use, before any model or SAE is loaded."""
        check_threshold(self.match_threshold)
        if not 0 <= self.relative_threshold < 1:
            raise ResaError(f"--relative-threshold {self.relative_threshold}: a fraction of each latent's peak "
                            "activation, accepted in [0, 1)")
        if self.min_seeds is not None and self.min_seeds < 1:
            raise ResaError(f"--min-seeds {self.min_seeds}: a feature is stable in at least 1 seed; accepted 1..N")
        check_choice("--marker-rule", self.marker_rule, MARKER_RULES)
        check_choice("--occurrences", self.occurrences, OCCURRENCES)
        self.hook = canonical_hook(self.hook)
        prompts = [self.prompts] if isinstance(self.prompts, str) else list(self.prompts)
        if not prompts:
            raise ResaError("no prompts to run; give one with --prompt or a --prompt-file")
        for text in prompts:
            require_markers(text)


@dataclass
class PromptInfo:
    """One prompt as it was run."""

    text: str
    token_ids: list[int]
    marker_spans: dict[str, list[list[int]]]
    excluded_positions: list[int]


@dataclass
class LayerFeatures:
    """The reasoning features of one layer."""

    layer: int
    hook_name: str
    sae_path: str
    count: int
    features: list[int]
    marker_activations: dict[str, list[dict[str, list[float]]]]
    """Feature id -> per prompt, marker -> its activation at each occurrence (max/last/min of the span by rule)."""
    sae_quality: dict = field(default_factory=dict)
    margins: dict[str, dict[str, float]] = field(default_factory=dict)
    """Feature id -> `marker_min` (its smallest activation at a marker occurrence, as the rule reads it, over all
    prompts), `other_max` (its largest activation at any other prompt position) and `margin` (the difference)."""
    boundary: dict = field(default_factory=dict)
    """With `FeatureConfig.noise`: the noise of every code path against the HF path (`noise`), the features each
    path finds (`paths`), and the features near the boundary at the float32 paths' and at the other precision's
    noise (`fragile_*`: in the set, `near_miss_*`: outside it)."""


def require_markers(text: str) -> None:
    """A one-line error for a prompt without `<think>` or without `</think>` (a prompt needs both)."""
    missing = [m for m in (THINK, END_THINK) if m not in text]
    if missing:
        raise ResaError(f"prompt {text[:40]!r}...: has no {' and no '.join(missing)}; a prompt needs both markers")


def _prompt_info(text: str, subject: Subject, cfg: FeatureConfig) -> PromptInfo:
    require_markers(text)
    spans = marker_spans(text, subject.tokenizer)
    excluded = [0] if spans.bos_prepended or cfg.exclude_first else []
    return PromptInfo(
        text=text,
        token_ids=spans.token_ids,
        marker_spans={m: [list(s) for s in found] for m, found in spans.spans.items()},
        excluded_positions=excluded,
    )


def qualifying(latents: torch.Tensor, prompt: PromptInfo, cfg: FeatureConfig) -> torch.Tensor:
    """Boolean [d_sae]: which latents meet the definition on one prompt, given its latents [T, d_sae]."""
    active = latents > thresholds(latents, cfg)
    ok = torch.ones(latents.shape[1], dtype=torch.bool, device=latents.device)
    marker_positions: set[int] = set()
    for marker in (THINK, END_THINK):
        per_occurrence = torch.stack(
            [span_activity(active, s, e, cfg.marker_rule) for s, e in prompt.marker_spans[marker]]
        )
        ok &= per_occurrence.all(0) if cfg.occurrences == "all" else per_occurrence.any(0)
        marker_positions |= {p for s, e in prompt.marker_spans[marker] for p in range(s, e)}
    other = [p for p in range(latents.shape[0]) if p not in marker_positions and p not in prompt.excluded_positions]
    if other:
        ok &= ~active[other].any(0)
    return ok


@torch.inference_mode()
def extract_features(
    subject: Subject,
    saes: dict[int, SAE],
    hook: str,
    prompts: list[str],
    cfg: FeatureConfig,
    sae_paths: dict[int, str] | None = None,
    quality: dict[int, dict] | None = None,
) -> tuple[list[PromptInfo], list[LayerFeatures]]:
    """Reasoning features per layer over all prompts (a latent must qualify in every prompt)."""
    check_choice("--marker-rule", cfg.marker_rule, MARKER_RULES)
    check_choice("--occurrences", cfg.occurrences, OCCURRENCES)
    for layer, sae in saes.items():
        if sae.cfg.d_in != subject.hook_width(hook):
            raise ResaError(
                f"SAE for layer {layer} has d_in {sae.cfg.d_in}, the model's {hook} activations have width "
                f"{subject.hook_width(hook)}"
            )
    infos = [_prompt_info(text, subject, cfg) for text in prompts]
    harvest = subject.harvester(hook, list(saes))
    keep = {layer: torch.ones(sae.cfg.d_sae, dtype=torch.bool, device=subject.device) for layer, sae in saes.items()}
    per_prompt_latents: list[dict[int, torch.Tensor]] = []
    for info in infos:
        ids = torch.tensor([info.token_ids])
        if cfg.spliced:
            # position 0 keeps its clean activation: Stage I never trains on the sink position
            with splice_context(subject.hf, {(hook, layer): sae for layer, sae in saes.items()}, keep_first=1):
                acts = harvest(ids)
        else:
            acts = harvest(ids)
        latents = {layer: sae.encode(acts[layer][0].to(sae.dtype)) for layer, sae in saes.items()}
        for layer in saes:
            keep[layer] &= qualifying(latents[layer], info, cfg)
        per_prompt_latents.append(latents)

    results = []
    for layer in sorted(saes):
        ids = keep[layer].nonzero().flatten().tolist()
        marker_acts = {
            str(fid): [
                {
                    marker: [
                        round(float(span_value(lat[layer], s, e, cfg.marker_rule)[fid]), 6)
                        for s, e in info.marker_spans[marker]
                    ]
                    for marker in (THINK, END_THINK)
                }
                for info, lat in zip(infos, per_prompt_latents)
            ]
            for fid in ids
        }
        per_side = [sides(lat[layer], info, cfg) for info, lat in zip(infos, per_prompt_latents)]
        plain_other = [_other_max(lat[layer], info) for info, lat in zip(infos, per_prompt_latents)]
        margins = {}
        for fid in ids:
            low = min(float(side.marker[fid]) for side in per_side)
            high = max(float(other[fid]) for other in plain_other)
            margins[str(fid)] = {"marker_min": round(low, 6), "other_max": round(high, 6),
                                 "margin": round(low - high, 6)}
        results.append(
            LayerFeatures(
                layer=layer,
                hook_name=hook_name(hook, layer),
                sae_path=(sae_paths or {}).get(layer, ""),
                count=len(ids),
                features=ids,
                marker_activations=marker_acts,
                sae_quality=(quality or {}).get(layer, {}),
                margins=margins,
            )
        )
    return infos, results


def _other_max(latents: torch.Tensor, info: PromptInfo) -> torch.Tensor:
    """Per latent, its largest activation at the prompt's positions outside every marker (0 when there are none)."""
    markers = {p for found in info.marker_spans.values() for s, e in found for p in range(s, e)}
    other = [p for p in range(latents.shape[0]) if p not in markers and p not in info.excluded_positions]
    return latents[other].max(0).values if other else torch.zeros(latents.shape[1], device=latents.device)


def measure_boundary(subject: Subject, saes: dict[int, SAE], hook: str, infos: list[PromptInfo], cfg: FeatureConfig,
                      results: list[LayerFeatures]) -> None:
    """Fill every layer's `boundary`: the latents along every code path (`features.boundary`), each path's noise
    against the HF path and its feature set, and the latents within that noise of the definition's boundary."""
    per_prompt = [path_latents(subject, saes, hook, info.token_ids) for info in infos]
    paths = list(per_prompt[0])
    per_prompt_noise = [path_noise(lat) for lat in per_prompt]
    noise = {layer: {path: torch.stack([n[layer][path] for n in per_prompt_noise]).max(0).values
                     for path in paths if path != "hf"} for layer in saes}
    for r in results:
        found = {}
        for path in paths:
            keep = torch.ones(saes[r.layer].cfg.d_sae, dtype=torch.bool, device=subject.device)
            for info, lat in zip(infos, per_prompt):
                keep &= qualifying(lat[path][r.layer], info, cfg)
            found[path] = keep.nonzero().flatten().tolist()
        layer_noise = noise[r.layer]
        zero = torch.zeros(saes[r.layer].cfg.d_sae, device=subject.device)
        levels = {"fp32": torch.stack([layer_noise.get(p, zero) for p in EXACT_PATHS]).max(0).values,
                  "precision": layer_noise.get("bfloat16", zero)}
        boundary = {"noise": {p: round(float(v.max()), 8) for p, v in layer_noise.items()},
                    "noise_at_features": {p: round(float(v[r.features].max()), 8) if r.features else 0.0
                                          for p, v in layer_noise.items()},
                    "paths": found}
        for name, eps in levels.items():
            fragile = torch.zeros(saes[r.layer].cfg.d_sae, dtype=torch.bool, device=subject.device)
            near = torch.zeros_like(fragile)
            for info, lat in zip(infos, per_prompt):
                latents = lat["hf"][r.layer]
                f, n = near_boundary(sides(latents, info, cfg), thresholds(latents, cfg), eps)
                fragile |= f
                near |= n
            boundary[f"fragile_{name}"] = [i for i in fragile.nonzero().flatten().tolist() if i in r.features]
            boundary[f"near_miss_{name}"] = [i for i in near.nonzero().flatten().tolist() if i not in r.features]
        r.boundary = boundary


# --------------------------------------------------------------------------------------------- outputs


QUALITY_KEYS = ("explained_variance", "explained_variance_qa", "explained_variance_novel",
                "explained_variance_novel_qa", "kl_spliced", "kl_spliced_qa", "l0")


def counts_figure(layers: list[LayerFeatures], title: str, seed_counts: dict[int, list[int]] | None = None,
                  stable: list[int] | None = None):
    """Bar chart of reasoning-feature counts over layers (paper Figure 3) with each SAE's explained variance;
    with `seed_counts` (seed -> count per layer of a multi-seed run) every seed's count as a dot, and with `stable`
    (the stable count per layer, the headline of a multi-seed run) those as the first, dark bars."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    xs = [r.layer for r in layers]
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    if stable is not None:
        fig.add_trace(go.Bar(x=xs, y=stable, name="stable across seeds", marker_color="#1B2A49"))
    name = f"reasoning features (seed {next(iter(seed_counts))})" if seed_counts else "reasoning features"
    fig.add_trace(go.Bar(x=xs, y=[r.count for r in layers], name=name, marker_color="#4C72B0"))
    for seed, counts in (seed_counts or {}).items():
        fig.add_trace(go.Scatter(x=xs, y=counts, mode="markers", name=f"seed {seed}",
                                 marker={"size": 7, "line": {"width": 1, "color": "white"}}))
    ev = [r.sae_quality.get("explained_variance_qa") for r in layers]
    if any(v is not None for v in ev):
        fig.add_trace(
            go.Scatter(x=xs, y=ev, name="SAE explained variance (q/a tokens)", mode="lines+markers",
                       line={"color": "#DD8452"}),
            secondary_y=True,
        )
    fig.update_layout(title=title, xaxis_title="layer (hook index, blocks.N; the paper's N-th layer is blocks.N-1)",
                      template="plotly_white", bargap=0.15)
    fig.update_yaxes(title_text="features active only at <think> and </think>", secondary_y=False)
    fig.update_yaxes(title_text="explained variance", range=[0, 1.02], secondary_y=True)
    return fig


def format_table(layers: list[LayerFeatures]) -> str:
    """Per-layer count with the SAE quality beside it; layers by hook index (blocks.N) and the paper's 1-based name;
    the smallest margin of the layer's features and, when the noise was measured, how many of them sit within the
    float32 paths' / the other precision's noise of the boundary (and the latents outside within it, after '+')."""
    lines = [f"{'blocks.N':>8}  {'paper':>5}  {'count':>5}  {'EV':>6}  {'EV q/a':>6}  {'KL q/a':>7}  {'margin':>7}  "
             f"{'near fp32':>9}  {'near bf16':>9}  features"]
    for r in layers:
        q = r.sae_quality
        fmt = lambda key, spec, q=q: "-" if q.get(key) is None else format(q[key], spec)  # noqa: E731
        shown = ", ".join(map(str, r.features[:8])) + (" ..." if r.count > 8 else "")
        margin = f"{min(m['margin'] for m in r.margins.values()):.3f}" if r.margins else "-"
        near = {name: f"{len(r.boundary[f'fragile_{name}'])}+{len(r.boundary[f'near_miss_{name}'])}"
                if r.boundary else "-" for name in ("fp32", "precision")}
        lines.append(
            f"{r.layer:>8}  {paper_label(r.layer):>5}  {r.count:>5}  {fmt('explained_variance', '.3f'):>6}  "
            f"{fmt('explained_variance_qa', '.3f'):>6}  {fmt('kl_spliced_qa', '.4f'):>7}  {margin:>7}  "
            f"{near['fp32']:>9}  {near['precision']:>9}  {shown}"
        )
    return "\n".join(lines)


def format_paths(layers: list[LayerFeatures]) -> str:
    """One line: at how many layers every code path found the same features, and where one did not."""
    measured = [r for r in layers if r.boundary]
    if not measured:
        return ""
    differ = {r.layer: [p for p, found in r.boundary["paths"].items() if found != r.features] for r in measured}
    paths = ", ".join(measured[0].boundary["paths"])
    same = sum(not v for v in differ.values())
    text = f"code paths ({paths}): the same features at {same} of {len(measured)} layers"
    other = [f"blocks.{layer} ({', '.join(v)})" for layer, v in differ.items() if v]
    return text + (f"; different at {'; '.join(other)}" if other else "")


def write_outputs(
    out: Path,
    subject: Subject,
    hook: str,
    cfg: FeatureConfig,
    infos: list[PromptInfo],
    layers: list[LayerFeatures],
    stability: list[LayerStability] = (),
    min_seeds: int = 1,
) -> dict[str, Path]:
    """features.json, counts.csv and figures/feature_counts.html/.png in `out`; with `stability` (a multi-seed
    run) features.json records the matching and counts.csv gains per-seed columns."""
    doc = {
        "definition": DEFINITION,
        "model": subject.spec,
        "model_path": str(subject.path),
        "n_layers": subject.facts.n_layers,
        "hook": hook,
        "threshold": cfg.threshold,
        "relative_threshold": cfg.relative_threshold,
        "boundary": BOUNDARY if cfg.noise else None,
        "marker_rule": cfg.marker_rule,
        "occurrences": cfg.occurrences,
        "spliced": cfg.spliced,
        "exclude_first": cfg.exclude_first,
        "prompts": [asdict(info) for info in infos],
        "layers": [asdict(layer) for layer in layers],
    }
    if stability:
        doc["seeds"] = stability_doc(stability, cfg, min_seeds)
    paths = {"features": atomic_write_json(out / "features.json", doc)}
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    seeds = list(stability[0].counts) if stability else []
    writer.writerow(["layer", *(("stable",) if seeds else ()), "count", *(f"{SEED_COLUMN}{s}" for s in seeds),
                     *(("count_mean", "count_std") if seeds else ())])
    for i, r in enumerate(layers):
        if seeds:
            st = stability[i]
            writer.writerow([r.layer, st.stable_count, r.count, *st.counts.values(), round(st.mean, 6),
                             round(st.std, 6)])
        else:
            writer.writerow([r.layer, r.count])
    paths["counts"] = atomic_write_text(out / "counts.csv", buffer.getvalue())
    title = f"Reasoning features per layer — {subject.spec} ({'spliced' if cfg.spliced else 'clean'} activations)"
    seed_counts = {s: [st.counts[s] for st in stability] for s in seeds} if seeds else None
    stable = [st.stable_count for st in stability] if seeds else None
    written = save_figure(counts_figure(layers, title, seed_counts, stable), out / "figures" / "feature_counts")
    paths["figure"] = written[0]
    return paths


def stability_doc(stability: list[LayerStability], cfg: FeatureConfig, min_seeds: int) -> dict:
    """What features.json records of a multi-seed run: the seeds, the matching rule, and per layer the count in
    each seed, its mean and spread, the stable groups with their per-seed ids, and every above-threshold match."""
    return {
        "seeds": list(stability[0].counts),
        "primary": next(iter(stability[0].counts)),
        "match_threshold": cfg.match_threshold,
        "min_seeds": min_seeds,
        "matching": STABILITY_RULE,
        "layers": [
            {
                "layer": st.layer,
                "counts": {str(s): c for s, c in st.counts.items()},
                "count_mean": round(st.mean, 6),
                "count_std": round(st.std, 6),
                "stable": st.stable_count,
                "groups": [{"ids": {str(s): ids for s, ids in g.ids.items()}, "seeds": g.n_seeds, "stable": g.stable}
                           for g in st.groups],
                "matches": [asdict(m) for m in st.matches],
            }
            for st in stability
        ],
    }


def format_headline(stability: list[LayerStability]) -> str:
    """The headline of a multi-seed run: the stable reasoning features in all, and per layer where there are any."""
    seeds = list(stability[0].counts)
    total = sum(st.stable_count for st in stability)
    where = ", ".join(f"blocks.{st.layer}: {st.stable_count}" for st in stability if st.stable_count)
    means = sum(st.mean for st in stability)
    return (f"stable reasoning features: {total} over {len(stability)} layers ({where or 'none at any layer'}); "
            f"{means:.1f} per seed on average, over seeds {','.join(map(str, seeds))}")


def format_seed_table(stability: list[LayerStability]) -> str:
    """Per layer: the count in each seed, mean ± spread, and the stable features (primary seed's ids); for a run of
    one seed, a line that says what stability needs."""
    if not stability:
        return ("one SAE seed per layer: stability across seeds needs a multi-seed run (resa-interp train-saes "
                "--n-seeds 3, or resa-interp features on an OUT without SAEs, which trains 3 seeds by default)")
    seeds = list(stability[0].counts)
    primary = seeds[0]
    lines = [f"{'blocks.N':>8}  " + "  ".join(f"{'seed ' + str(s):>7}" for s in seeds)
             + f"  {'mean':>5}  {'std':>5}  {'stable':>6}  stable ids (seed {primary})"]
    for st in stability:
        ids = [str(g.ids[primary][0]) if g.ids[primary] else "-" for g in st.groups if g.stable]
        lines.append(f"{st.layer:>8}  " + "  ".join(f"{c:>7}" for c in st.counts.values())
                     + f"  {st.mean:>5.2f}  {st.std:>5.2f}  {st.stable_count:>6}  {', '.join(ids)}")
    return "\n".join(lines)


def read_prompts(prompt: str | None, prompt_file: str | None, style: str = "r1") -> list[str]:
    """--prompt TEXT, --prompt-file (one prompt per line, or JSONL with a 'prompt'/'text' field), or the R1 system
    prompt in `style` ('r1': the authors' code, 'r1-paper': the printed one-line form)."""
    check_choice("--prompt-style", style, SYSTEM_PROMPTS)
    if prompt is not None and prompt_file is not None:
        raise ResaError("--prompt and --prompt-file: give one of them, not both")
    if prompt is not None:
        return [prompt]
    if prompt_file is None:
        return [SYSTEM_PROMPTS[style]]
    path = Path(prompt_file)
    if not path.is_file():
        raise ResaError(f"--prompt-file {prompt_file!r}: no such file")
    prompts = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        if path.suffix == ".jsonl":
            try:
                row = json.loads(line)
                prompts.append(row.get("prompt") or row["text"])
            except (json.JSONDecodeError, KeyError, AttributeError):
                raise ResaError(
                    f"--prompt-file {prompt_file!r}: line {number} is not JSON with 'prompt' or 'text'"
                ) from None
        else:
            prompts.append(line)
    if not prompts:
        raise ResaError(f"--prompt-file {prompt_file!r}: holds no prompts")
    return prompts


def heldout_quality(subject: Subject, saes: dict[int, SAE], hook: str, n_texts: int = 16) -> dict[int, dict]:
    """Quality of SAEs that come without Stage I metrics, measured on held-out synthetic trigger texts."""
    texts = [format_trigger(e.problem, e.answer) for e in synthetic_qa(n_texts, seed=10_007)]
    rows = evaluate_saes(subject, saes, hook, encode_texts(subject.tokenizer, texts))
    add_novel_quality(rows, evaluate_saes(subject, saes, hook, novel_texts(subject.tokenizer, n_texts, "r1"),
                                          splice=False))
    return {row["layer"]: {k: row[k] for k in QUALITY_KEYS} for row in rows}


@dataclass
class FeaturesRun:
    """What `run_features` produced."""

    layers: list[LayerFeatures]
    prompts: list[PromptInfo]
    paths: dict[str, Path]
    seed_layers: dict[int, list[LayerFeatures]] = field(default_factory=dict)
    """Multi-seed runs: seed -> its reasoning features per layer (the primary seed's are `layers`)."""
    stability: list[LayerStability] = field(default_factory=list)
    """Multi-seed runs: per layer, the counts over seeds and the cross-seed matching."""


def default_layers(n_layers: int) -> str:
    """The paper's cut: layers 1..L-2 (the first and last layer excluded)."""
    return f"1-{n_layers - 2}"


def run_features(config: FeatureConfig, out: str | Path, subject: Subject | None = None) -> FeaturesRun:
    """Load the SAEs (a Stage I run, or `config.source`), extract, write the outputs into `out` and record the
    stage; `subject` is the model to run (None: `config.model` is loaded with `config.device` and `config.dtype`)."""
    out = Path(out)
    config.check()
    prompts = [config.prompts] if isinstance(config.prompts, str) else list(config.prompts)
    if subject is None:
        subject = load_subject(config.model, dtype=config.dtype, device=config.device)
    hook, source = config.hook, config.source
    wanted = parse_layers(config.layers or default_layers(subject.facts.n_layers), subject.facts.n_layers)
    quality: dict[int, dict] = {}
    if source is not None:

        saes = {layer: load_source_sae(source, layer, hook).to(subject.device)
                for layer in wanted}
        paths = {layer: run_relative(source, out) for layer in wanted}
        quality = heldout_quality(subject, saes, hook)
    else:
        run = Path(config.saes if config.saes is not None else out)
        found = require_sae_dirs(run, hook, wanted)
        saes = {layer: load_sae(found[layer], device=str(subject.device)) for layer in wanted}
        paths = {layer: run_relative(found[layer], out) for layer in wanted}
        metrics = read_metrics(run)
        quality = {layer: {k: metrics[layer][k] for k in QUALITY_KEYS if k in metrics[layer]}
                   for layer in wanted if layer in metrics}
    if not config.allow_model_mismatch:
        for layer, sae in saes.items():
            trained_on = sae.cfg.metadata.get("model_path")
            if trained_on and Path(trained_on).resolve() != Path(subject.path).resolve():
                raise ResaError(
                    f"the layer-{layer} SAE was trained on {sae.cfg.metadata.get('model_name')} ({trained_on}), "
                    f"not on {subject.spec}; pass that --model, or --allow-model-mismatch to transfer on purpose"
                )
    further = run_seeds(run) if source is None else []
    min_seeds = check_min_seeds(config.min_seeds, 1 + len(further))
    infos, results = extract_features(subject, saes, hook, prompts, config, paths, quality)
    if config.noise:
        measure_boundary(subject, saes, hook, infos, config, results)
    seed_layers: dict[int, list[LayerFeatures]] = {}
    stability: list[LayerStability] = []
    if further:
        primary = int(saes[wanted[0]].cfg.metadata.get("seed", 0))
        decoders = {primary: {layer: sae.W_dec.detach() for layer, sae in saes.items()}}
        seed_layers[primary] = results
        for seed in further:
            found = require_sae_dirs(run, hook, wanted, seed=seed)
            seed_saes = {layer: load_sae(found[layer], device=str(subject.device)) for layer in wanted}
            metrics = read_metrics(run, seed=seed)
            _, seed_layers[seed] = extract_features(
                subject, seed_saes, hook, prompts, config, {layer: run_relative(found[layer], out) for layer in wanted},
                {layer: {k: metrics[layer][k] for k in QUALITY_KEYS if k in metrics[layer]}
                 for layer in wanted if layer in metrics},
            )
            decoders[seed] = {layer: sae.W_dec.detach() for layer, sae in seed_saes.items()}
        stability = [
            layer_stability(layer, {s: decoders[s][layer] for s in seed_layers},
                            {s: seed_layers[s][i].features for s in seed_layers}, config.match_threshold, min_seeds)
            for i, layer in enumerate(r.layer for r in results)  # every seed's results are sorted by layer
        ]
    written = write_outputs(out, subject, hook, config, infos, results, stability, min_seeds)
    counts = {r.layer: r.count for r in results}
    record_stage(
        out,
        "features",
        {"config": asdict(config), "model": subject.spec, "hook": hook, "layers": wanted,
         "saes": run_relative(config.saes or source or out, out), "counts": counts,
         "seeds": list(seed_layers), "stable": {st.layer: st.stable_count for st in stability}},
    )
    return FeaturesRun(results, infos, written, seed_layers, stability)
