"""What makes SAEs of different seeds agree? A stability study of Stage I on the embedded model.

One harvest of trigger activations at a few layers is held in memory (the training stream the trainer would see,
and the same stream with the repeated system prompt counted once per buffer); every cell of the study then trains
one SAE per seed on it with the library's own training step (`sae.LayerSAE`), all seeds of a cell on the
same shuffled minibatches, and measures:

- quality: held-out explained variance on all tokens and on the question/answer tokens, on synthetic texts of the
  training kinds and on texts of question kinds the training set lacks (`data.synthetic.NOVEL_KINDS`);
- reasoning features of every seed (the paper's definition on the R1 system prompt, `features.extract.qualifying`);
- decoder replication: the share of the first seed's reasoning features matched (Hungarian, decoder cosine >= 0.7,
  `features.stability.match_latents`) in a majority of the other seeds, and in a seed trained separately that the
  stability call never saw; over all latents, the median best cross-seed decoder cosine and the share >= 0.7;
- functional replication: the share of the first seed's reasoning features whose activation over held-out trigger
  text correlates >= 0.7 with some latent of every other seed.

    python analysis/stability_study.py                 # the study grid, figures/stability_study.{json,md,html,png}
    python analysis/stability_study.py --quick         # a smoke run (a few cells, few steps)
    python analysis/stability_study.py --cells steps   # one axis only

Each finished cell is kept in the JSON, and a rerun skips it (the study resumes).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from resa_interp.data.synthetic import KINDS, NOVEL_KINDS, synthetic_qa
from resa_interp.data.templates import R1_SYSTEM_PROMPT, format_trigger, marker_spans
from resa_interp.features import FeatureConfig, match_latents, prompt_info, qualifying
from resa_interp.model.harvest import encode_texts, make_batch, shared_prefix_length
from resa_interp.model.subject import load_subject
from resa_interp.runs import atomic_write_json, atomic_write_text
from resa_interp.sae import LayerSAE, SAETrainConfig, trigger_data
from resa_interp.sae.activations import ModelFeed, pad_id
from resa_interp.sae.topk_kernel import fast_select_dtype

ROOT = Path(__file__).resolve().parents[1]
THRESHOLD = 0.7


@dataclass(frozen=True)
class Cell:
    """One training setting of the study (everything else as the CPU default)."""

    name: str
    axis: str
    steps: int = 96
    lr: float = 2e-3
    schedule: str = "constant"
    """'constant', or 'cosine' (5% linear warm-up, then cosine decay to 0)."""
    init: str = "tied"
    """'tied' (random unit encoder rows, decoder = encoder, the trainer's default) or 'data' (decoder rows at random
    centred training activations, seeded; encoder = decoder)."""
    latents: int = 4608
    prefix: str = "per-text"
    """'per-text' (the system prompt's rows in every text, as the trainer streams them) or 'per-buffer' (once per
    buffer of 8,192 tokens)."""
    batch_tokens: int = 1024
    optimizer: str = "adam"
    k: int = 32
    data: str = "synthetic"
    """'synthetic' (the trainer's default data) or 'varied' (the same with the six held-out kinds mixed in: ten
    question kinds; the 'novel-kinds' quality is then no longer off the training kinds)."""


def grid(quick: bool) -> list[Cell]:
    """The study's cells: one axis varied at a time around the CPU default, then combinations."""
    if quick:
        return [Cell("default", "baseline", steps=24), Cell("steps-96", "steps", steps=96),
                Cell("lr-8e-3", "lr", steps=24, lr=8e-3)]
    cells = [Cell("default", "baseline")]
    cells += [Cell("lr-8e-3", "lr", lr=8e-3), Cell("k-8", "k", k=8), Cell("prefix-once", "prefix", prefix="per-buffer"),
              Cell("data-init", "init", init="data")]
    cells += [Cell(f"latents-{n}", "latents", latents=n) for n in (1152, 18432)]
    cells += [Cell("steps-1000", "steps", steps=1000), Cell("lr-8e-3-1000", "lr", steps=1000, lr=8e-3),
              Cell("cosine-lr8e-3-1000", "schedule", steps=1000, lr=8e-3, schedule="cosine"),
              Cell("k-8-1000", "k", steps=1000, k=8),
              Cell("prefix-once-1000", "prefix", steps=1000, prefix="per-buffer"),
              Cell("varied", "data", data="varied"),
              Cell("steps-3000", "steps", steps=3000),
              Cell("steps-10000-batch256", "steps", steps=10_000, batch_tokens=256),
              Cell("prefix-once-3000", "prefix", steps=3000, prefix="per-buffer")]
    return cells


# --------------------------------------------------------------------------------------------- data


@dataclass
class Stream:
    """A layer's training activations: the rows as the trainer streams them, and which rows are the prompt's."""

    rows: torch.Tensor
    prompt: torch.Tensor
    """bool [n]: rows of the shared system prompt (repeated per text)."""
    prompt_len: int
    """Counted rows of the system prompt in one text."""


def harvest(subject, layers: list[int], tokens: int, seed: int, varied: bool = False) -> dict[int, Stream]:
    """The trainer's own stream of counted activations (`sae.activations.ModelFeed`) at `layers`; `varied`: from
    texts of all ten synthetic kinds instead of the training set's four."""
    cfg = SAETrainConfig(layers=",".join(map(str, layers)), tokens=tokens, seed=seed)
    data = trigger_data(cfg, subject)
    texts = data.train
    if varied:
        examples = synthetic_qa(len(data.train), seed=seed + 1, kinds=KINDS + NOVEL_KINDS)
        texts = encode_texts(subject.tokenizer, [format_trigger(e.problem, e.answer) for e in examples])
    prefix_len = shared_prefix_length(texts)
    feed = ModelFeed(subject, "resid_post", layers, texts, prefix_len, cfg.seq_batch, 1)
    rows: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    flags: list[torch.Tensor] = []
    n_prompt = prefix_len - 1
    total = 0
    for _, chunks, n in feed.batches(0):
        for layer in layers:
            rows[layer].extend(chunks[layer])
        shared, own = chunks[layers[0]][0].shape[0], n - chunks[layers[0]][0].shape[0]
        flags += [torch.ones(shared, dtype=torch.bool), torch.zeros(own, dtype=torch.bool)]
        assert shared % n_prompt == 0
        total += n
        if total >= tokens:
            break
    prompt = torch.cat(flags)
    return {layer: Stream(torch.cat(rows[layer]).float(), prompt, n_prompt) for layer in layers}


def once_per_buffer(stream: Stream, buffer_tokens: int = 8192) -> torch.Tensor:
    """The stream with the prompt's rows kept once per `buffer_tokens` rows of the texts' own tokens."""
    own = stream.rows[~stream.prompt]
    prompt_rows = stream.rows[stream.prompt][: stream.prompt_len]
    parts = []
    for start in range(0, own.shape[0], buffer_tokens):
        parts += [prompt_rows, own[start : start + buffer_tokens]]
    return torch.cat(parts)


@dataclass
class Heldout:
    """Held-out activations of one layer: all counted tokens and the q/a tokens, per text set."""

    sets: dict[str, tuple[torch.Tensor, torch.Tensor]]
    own: dict[str, torch.Tensor]
    """Per set, bool over its counted tokens: after the shared system prompt (the texts' own tokens)."""
    prompt_acts: torch.Tensor
    """The R1 system prompt's activations [T, d] (for the reasoning features)."""


def heldout_acts(subject, layers: list[int], n_texts: int) -> dict[int, Heldout]:
    """Held-out activations: synthetic texts of the training kinds (a seed no training run uses) and of
    `NOVEL_KINDS`, and the R1 system prompt."""
    harvester = subject.harvester("resid_post", layers, stop_early=True)
    sets = {"train-kinds": synthetic_qa(n_texts, seed=10_007), "novel-kinds": synthetic_qa(n_texts, seed=10_009,
                                                                                           kinds=NOVEL_KINDS)}
    out: dict[int, dict] = {layer: {} for layer in layers}
    own: dict[str, torch.Tensor] = {}
    for name, examples in sets.items():
        texts = encode_texts(subject.tokenizer, [format_trigger(e.problem, e.answer) for e in examples])
        n_prefix = shared_prefix_length(texts)
        prefix = harvester.run_prefix(texts[0].ids[:n_prefix])
        alls = {layer: [] for layer in layers}
        qas = {layer: [] for layer in layers}
        owns = []
        for start in range(0, len(texts), 8):
            chunk = texts[start : start + 8]
            batch = make_batch(chunk, pad_id(subject.tokenizer), 1)
            acts, _ = harvester.capture_full(make_batch(chunk, pad_id(subject.tokenizer), 1, prefix_len=n_prefix),
                                             prefix)
            position = torch.arange(batch.train_mask.shape[1]).expand_as(batch.train_mask)
            owns.append(position[batch.train_mask] >= n_prefix)
            for layer in layers:
                alls[layer].append(acts[layer][batch.train_mask].float())
                qas[layer].append(acts[layer][batch.qa_mask].float())
        own[name] = torch.cat(owns)
        for layer in layers:
            out[layer][name] = (torch.cat(alls[layer]), torch.cat(qas[layer]))
    ids = torch.tensor([marker_spans(R1_SYSTEM_PROMPT, subject.tokenizer).token_ids])
    prompt = harvester(ids)
    return {layer: Heldout(out[layer], own, prompt[layer][0].float()) for layer in layers}


# --------------------------------------------------------------------------------------------- training


def lr_at(cell: Cell, step: int) -> float:
    """The learning rate of optimizer step `step` (0-based)."""
    if cell.schedule == "constant":
        return cell.lr
    warm = max(1, int(0.05 * cell.steps))
    if step < warm:
        return cell.lr * (step + 1) / warm
    return cell.lr * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, cell.steps - warm)))


def train_cell(cell: Cell, rows: torch.Tensor, seeds: list[int], layer: int, data_seed: int = 0) -> dict[int, LayerSAE]:
    """One SAE per seed, all stepped on the same minibatches: epochs over `rows`, each reshuffled (seeded)."""
    d_in = rows.shape[1]
    select = fast_select_dtype(torch.device("cpu"))
    saes = {s: LayerSAE(d_in, cell.latents, cell.k, s * 1000 + layer, select) for s in seeds}
    for seed, sae in saes.items():
        sae.data_init(rows[: 8192], from_pretrained=False)
        if cell.init == "data":
            gen = torch.Generator().manual_seed(seed * 1000 + layer + 17)
            picked = rows[torch.randint(rows.shape[0], (cell.latents,), generator=gen)] * sae.scale - sae.b_dec
            with torch.no_grad():
                unit = torch.nn.functional.normalize(picked + 1e-3 * torch.randn(picked.shape, generator=gen), dim=-1)
                sae.dec.copy_(unit)
                sae.enc.copy_(unit)
        sae.make_optimizer(cell.optimizer, cell.lr)
    step, epoch = 0, 0
    while step < cell.steps:
        order = torch.randperm(rows.shape[0], generator=torch.Generator().manual_seed(data_seed + 7919 * epoch))
        for i in range(0, rows.shape[0] - cell.batch_tokens + 1, cell.batch_tokens):
            if step >= cell.steps:
                break
            batch = rows[order[i : i + cell.batch_tokens]]
            for sae in saes.values():
                for group in sae.optimizer.param_groups:
                    group["lr"] = lr_at(cell, step)
                sae.step(batch)
            step += 1
        epoch += 1
    return saes


# --------------------------------------------------------------------------------------------- measures


def explained_variance(sae, x: torch.Tensor) -> float:
    """1 - SSE / total variance of `x` around its mean."""
    recon = sae.decode(sae.encode(x))
    return 1.0 - float((recon - x).pow(2).sum() / (x - x.mean(0)).pow(2).sum())


@torch.no_grad()
def measure(cell: Cell, saes: dict[int, LayerSAE], held: Heldout, subject, layer: int) -> dict:
    """Quality, reasoning features and replication of one cell's seeds at one layer."""
    exported = {s: sae.export({"hook_name": f"blocks.{layer}.hook_resid_post"}) for s, sae in saes.items()}
    info = prompt_info(R1_SYSTEM_PROMPT, subject, FeatureConfig())
    features = {s: qualifying(e.encode(held.prompt_acts), info, FeatureConfig()).nonzero().flatten().tolist()
                for s, e in exported.items()}
    seeds = list(saes)
    first, others, unseen = seeds[0], seeds[1:-1], seeds[-1]  # the last seed was trained in a run of its own
    dec = {s: e.W_dec.detach() for s, e in exported.items()}
    quality = {}
    for e in exported.values():
        for name, (x_all, x_qa) in held.sets.items():
            quality.setdefault(name, {"ev": [], "ev_qa": []})
            quality[name]["ev"].append(explained_variance(e, x_all))
            quality[name]["ev_qa"].append(explained_variance(e, x_qa))
    matched = {s: {i for i, _, _ in match_latents(dec[first], features[first], dec[s], THRESHOLD)} for s in seeds[1:]}
    need = len(others) // 2 + 1
    rf = features[first]
    in_majority = [f for f in rf if sum(f in matched[s] for s in others) >= need]
    in_unseen = [f for f in rf if f in matched[unseen]]
    # functional: correlation of activations over held-out tokens of both sets
    x = torch.cat([held.sets["train-kinds"][0], held.sets["novel-kinds"][0], held.prompt_acts])
    acts = {s: e.encode(x) for s, e in exported.items()}

    def correlations(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        a = a - a.mean(0)
        b = b - b.mean(0)
        a = a / a.norm(dim=0).clamp_min(1e-12)
        b = b / b.norm(dim=0).clamp_min(1e-12)
        return a.T @ b

    def replicated(rows: torch.Tensor) -> tuple[list[int], list[int]]:
        best = {s: (correlations(acts[first][rows][:, rf], acts[s][rows]).max(1).values if rf else torch.zeros(0))
                for s in seeds[1:]}
        majority = [f for j, f in enumerate(rf) if sum(bool(best[s][j] >= THRESHOLD) for s in others) >= need]
        return majority, [f for j, f in enumerate(rf) if bool(best[unseen][j] >= THRESHOLD)]

    every = torch.ones(x.shape[0], dtype=torch.bool)
    func_majority, func_unseen = replicated(every)
    own = torch.zeros(x.shape[0], dtype=torch.bool)  # the texts' own tokens: question, template markers, answer
    own[: held.sets["train-kinds"][0].shape[0]] = held.own["train-kinds"]
    own[held.sets["train-kinds"][0].shape[0] : held.sets["train-kinds"][0].shape[0]
        + held.sets["novel-kinds"][0].shape[0]] = held.own["novel-kinds"]
    func_own_majority, func_own_unseen = replicated(own)
    # all latents: best decoder cosine of each first-seed latent in each other seed (no assignment)
    a = torch.nn.functional.normalize(dec[first], dim=-1)
    best = torch.stack([(a @ torch.nn.functional.normalize(dec[s], dim=-1).T).max(1).values for s in seeds[1:]])
    to_init = (torch.nn.functional.cosine_similarity(dec[first], _init_dec(cell, layer, first, a.shape[1]), dim=-1)
               if cell.init == "tied" else None)
    same_index = None if to_init is None else float(to_init.median())
    reasoning_to_init = None if to_init is None or not rf else float(to_init[rf].median())
    share = lambda part, whole: round(len(part) / len(whole), 4) if whole else None  # noqa: E731
    return {
        "layer": layer,
        "counts": {str(s): len(features[s]) for s in seeds},
        "features_first": rf,
        "decoder_majority": share(in_majority, rf),
        "decoder_unseen": share(in_unseen, rf),
        "functional_majority": share(func_majority, rf),
        "functional_unseen": share(func_unseen, rf),
        "functional_own_majority": share(func_own_majority, rf),
        "functional_own_unseen": share(func_own_unseen, rf),
        "best_cosine_reasoning": [round(float(v), 3) for v in
                                  (torch.stack([(torch.nn.functional.normalize(dec[first][rf], dim=-1)
                                                 @ torch.nn.functional.normalize(dec[s], dim=-1).T).max(1).values
                                                for s in others]).min(0).values if rf else [])],
        "all_latents_median_best_cosine": round(float(best.median()), 4),
        "all_latents_share_ge_0.7": round(float((best >= THRESHOLD).float().mean()), 4),
        "same_index_cosine_to_init": None if same_index is None else round(same_index, 4),
        "reasoning_cosine_to_init": None if reasoning_to_init is None else round(reasoning_to_init, 4),
        "quality": {name: {k: round(float(np.min(v)), 4) for k, v in q.items()} for name, q in quality.items()},
    }


def _init_dec(cell: Cell, layer: int, seed: int, d_in: int) -> torch.Tensor:
    return LayerSAE(d_in, cell.latents, cell.k, seed * 1000 + layer).dec.detach()


# --------------------------------------------------------------------------------------------- report


def table(results: dict[str, dict]) -> str:
    """Markdown: one row per cell and layer."""
    head = ("| cell | layer | steps | counts (seeds) | decoder: majority / unseen | functional: majority / unseen | "
            "functional, texts' own tokens: majority / unseen | "
            "all latents: median best cos / share >= 0.7 | EV min all / q/a (train kinds) | EV min all / q/a (novel) |"
            " s |")
    lines = [head, "|" + "---|" * 11]
    fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    for name, cell in results.items():
        for row in cell["layers"]:
            q = row["quality"]
            lines.append(
                f"| {name} | {row['layer']} | {cell['cell']['steps']} | {'/'.join(map(str, row['counts'].values()))} | "
                f"{fmt(row['decoder_majority'])} / {fmt(row['decoder_unseen'])} | "
                f"{fmt(row['functional_majority'])} / {fmt(row['functional_unseen'])} | "
                f"{fmt(row['functional_own_majority'])} / {fmt(row['functional_own_unseen'])} | "
                f"{row['all_latents_median_best_cosine']:.2f} / {row['all_latents_share_ge_0.7']:.3f} | "
                f"{q['train-kinds']['ev']:.3f} / {q['train-kinds']['ev_qa']:.3f} | "
                f"{q['novel-kinds']['ev']:.3f} / {q['novel-kinds']['ev_qa']:.3f} | {cell['seconds']:.0f} |")
    return "\n".join(lines)


def figure(results: dict[str, dict], out: Path) -> None:
    """Replication shares per cell (decoder and functional, first seed's reasoning features) and all latents."""
    import plotly.graph_objects as go

    from resa_interp.figures import save_figure

    names = [f"{n} (L{r['layer']})" for n, c in results.items() for r in c["layers"]]
    rows = [r for c in results.values() for r in c["layers"]]
    fig = go.Figure()
    for key, label in (("decoder_majority", "decoder cos >= 0.7, majority of seeds"),
                       ("decoder_unseen", "decoder cos >= 0.7, unseen seed"),
                       ("functional_majority", "activation corr >= 0.7, majority of seeds"),
                       ("all_latents_share_ge_0.7", "all latents: share with decoder cos >= 0.7")):
        fig.add_trace(go.Bar(x=names, y=[r[key] if r[key] is not None else 0 for r in rows], name=label))
    fig.add_hline(y=0.5, line_dash="dot", annotation_text="goal: half of the reasoning features")
    fig.update_layout(title="Stage I stability across SAE seeds (embedded SmolLM2-135M)", barmode="group",
                      yaxis_title="share replicated", template="plotly_white", xaxis_tickangle=-40)
    save_figure(fig, out, plotlyjs="cdn")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", default="4,8")
    parser.add_argument("--tokens", type=int, default=98_304, help="harvested training tokens per layer")
    parser.add_argument("--seeds", type=int, default=4, help="seeds per cell; the last one is the 'unseen' seed")
    parser.add_argument("--out", default=str(ROOT / "figures" / "stability_study"))
    parser.add_argument("--cells", default=None, help="only the cells of these axes (comma-separated)")
    parser.add_argument("--only", default=None, help="only the cells of these names (comma-separated)")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(0)
    layers = [int(v) for v in args.layers.split(",")]
    out = Path(args.out)
    path = out.with_suffix(".json")
    results = json.loads(path.read_text())["cells"] if path.exists() else {}
    cells = [c for c in grid(args.quick) if (args.cells is None or c.axis in args.cells.split(","))
             and (args.only is None or c.name in args.only.split(","))]
    subject = load_subject()
    t0 = time.time()
    streams = harvest(subject, layers, args.tokens if not args.quick else 16_384, seed=0)
    held = heldout_acts(subject, layers, 32 if not args.quick else 8)
    print(f"harvest {time.time() - t0:.0f} s: {streams[layers[0]].rows.shape[0]} rows per layer, "
          f"{float(streams[layers[0]].prompt.float().mean()):.0%} of them the system prompt's")
    seeds = list(range(args.seeds))
    varied: dict[int, Stream] = {}
    for cell in cells:
        # a stored cell is kept when its settings are this one's (fields added since it was stored: their defaults)
        if cell.name in results and {**asdict(cell), **results[cell.name]["cell"]} == asdict(cell):
            print(f"{cell.name}: kept")
            continue
        started = time.time()
        rows_out = []
        for layer in layers:
            if cell.data == "varied" and layer not in varied:
                varied.update(harvest(subject, [layer], args.tokens, seed=0, varied=True))
            rows = (varied if cell.data == "varied" else streams)[layer].rows
            if cell.prefix == "per-buffer":
                rows = once_per_buffer(streams[layer])
            saes = train_cell(cell, rows, seeds[:-1], layer)
            saes |= train_cell(cell, rows, seeds[-1:], layer, data_seed=1)  # the unseen seed: its own run and order
            rows_out.append(measure(cell, saes, held[layer], subject, layer))
        results[cell.name] = {"cell": asdict(cell), "layers": rows_out, "seconds": round(time.time() - started, 1)}
        atomic_write_json(path, {"settings": {"layers": layers, "tokens": args.tokens, "seeds": seeds,
                                              "threshold": THRESHOLD, "select": str(fast_select_dtype(
                                                  torch.device("cpu")))}, "cells": results})
        print("\n".join(table({cell.name: results[cell.name]}).splitlines()[2:]), flush=True)
    atomic_write_text(out.with_suffix(".md"), table(results) + "\n")
    figure(results, out)
    print(table(results))


if __name__ == "__main__":
    main()
