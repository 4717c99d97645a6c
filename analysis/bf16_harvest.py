"""Does a bfloat16 harvest leave Stage I's SAEs and reasoning features within tolerance of the float32 harvest?

Two Stage I runs of the library (`sae.train_saes`, the CPU defaults: default tokens, 4,608 latents, k 32) on the
embedded model at a few layers, identical but for `model_dtype` (float32, bfloat16), each with the same seeds
(the first is the run's seed, the others stepped on the same batches). Every SAE is then measured the same way,
on the float32 model (what `features` and the later stages run by default):

- held-out explained variance (`sae.evaluate_saes` on the run's held-out trigger texts, reconstruction only);
- its reasoning features (`features.extract_features`, the paper's definition on the R1 system prompt);
- bf16 against fp32 at the SAME seed: the EV difference, the share of the fp32 features the bf16 SAE reproduces
  (the same latent id, and matched one-to-one by decoder direction, cosine >= 0.7, `features.match_latents`), and
  the median decoder cosine of same-id latents over the whole dictionary;
- the yardstick: the same figures between two fp32 seeds (SAEs of different seeds hardly share a reasoning feature,
  issue 22, so a bf16 change smaller than a seed change is invisible downstream, and one as large is not).

The tolerances (`EV_TOLERANCE`, `FEATURE_SHARE`) are checked and the verdict written with the table.

    python analysis/bf16_harvest.py                     # layers 4,8,15,22, seeds 0,1: figures/bf16_harvest.json
    python analysis/bf16_harvest.py --layers 8 --tokens 8192 --work /tmp/bf16   # a smoke run

The Stage I runs are kept under --work (default runs/bf16_harvest/) and a rerun reuses them.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import torch

from resa_interp.data.templates import R1_SYSTEM_PROMPT
from resa_interp.features import FeatureConfig, extract_features, match_latents
from resa_interp.model import load_subject
from resa_interp.numbering import parse_layers
from resa_interp.runs import atomic_write_json
from resa_interp.sae import SAETrainConfig, evaluate_saes, load_sae, run_sae_dirs, sae_dir, train_saes, trigger_data
from resa_interp.sae.topk_kernel import fast_select_dtype

ROOT = Path(__file__).resolve().parents[1]
HOOK = "resid_post"
DTYPES = ("float32", "bfloat16")
MATCH = 0.7
EV_TOLERANCE = 0.01
"""bf16 may lose at most this much held-out explained variance against fp32 (same seed) at every layer."""
FEATURE_SHARE = 0.8
"""bf16 SAEs must reproduce (decoder match, cosine >= MATCH) at least this share of the fp32 SAEs' reasoning
features at the same seed, pooled over layers and seeds."""


def stage_one(dtype: str, layers: str, seeds: list[int], tokens: int | None, work: Path) -> Path:
    """The Stage I run of `dtype` under `work` (trained unless it is there already)."""
    run = work / dtype
    budget = {} if tokens is None else {"tokens": tokens}
    cfg = SAETrainConfig(layers=layers, model_dtype=dtype, seed=seeds[0], seeds=tuple(seeds[1:]), **budget)
    if not run_sae_dirs(run, HOOK):
        started = time.time()
        train_saes(cfg, run)
        print(f"{dtype}: Stage I in {time.time() - started:.0f} s")
    return run


def measure(subject, run: Path, layers: list[int], seeds: list[int], heldout) -> dict[int, dict]:
    """Seed -> {layer -> ev, features, decoder} of a run's SAEs, all measured on `subject`."""
    out = {}
    for seed in seeds:
        saes = {layer: load_sae(sae_dir(run, HOOK, layer, None if seed == seeds[0] else seed)) for layer in layers}
        rows = evaluate_saes(subject, saes, HOOK, heldout, splice=False)
        _, found = extract_features(subject, saes, HOOK, [R1_SYSTEM_PROMPT], FeatureConfig(noise=False))
        features = {f.layer: f.features for f in found}
        out[seed] = {row["layer"]: {"ev": row["explained_variance"], "features": features[row["layer"]],
                                    "decoder": saes[row["layer"]].W_dec.detach()} for row in rows}
    return out


def compare(a: dict, b: dict) -> dict:
    """How SAE `b` of one layer differs from SAE `a`: EV, feature counts, reproduced share of a's features."""
    matched = match_latents(a["decoder"], a["features"], b["decoder"][b["features"]], MATCH) if b["features"] else []
    same_id = len(set(a["features"]) & set(b["features"]))
    cos = torch.nn.functional.cosine_similarity(a["decoder"].double(), b["decoder"].double(), dim=-1)
    return {"ev_a": round(a["ev"], 5), "ev_b": round(b["ev"], 5), "delta_ev": round(b["ev"] - a["ev"], 5),
            "features_a": len(a["features"]), "features_b": len(b["features"]), "same_id": same_id,
            "decoder_matched": len(matched), "median_same_id_cosine": round(float(cos.median()), 4)}


def verdict(pairs: list[dict]) -> dict:
    """The tolerances over the bf16-vs-fp32 pairs."""
    worst = max(abs(p["delta_ev"]) for p in pairs)
    fp32 = sum(p["features_a"] for p in pairs)
    share = sum(p["decoder_matched"] for p in pairs) / fp32 if fp32 else None
    return {"max_abs_delta_ev": worst, "ev_ok": worst <= EV_TOLERANCE, "fp32_features": fp32,
            "reproduced_share": None if share is None else round(share, 4),
            "features_ok": share is None or share >= FEATURE_SHARE}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", default="4,8,15,22")
    parser.add_argument("--seeds", default="0,1", help="at least two: the fp32 seed-to-seed yardstick")
    parser.add_argument("--tokens", type=int, default=None, help="per SAE; default: Stage I's")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "bf16_harvest")
    parser.add_argument("--json", type=Path, default=ROOT / "figures" / "bf16_harvest.json")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    runs = {dtype: stage_one(dtype, args.layers, seeds, args.tokens, args.work) for dtype in DTYPES}
    subject = load_subject()
    layers = parse_layers(args.layers, subject.facts.n_layers)
    heldout = trigger_data(SAETrainConfig(layers=args.layers, seed=seeds[0]), subject).heldout
    measured = {dtype: measure(subject, run, layers, seeds, heldout) for dtype, run in runs.items()}
    fp32, bf16 = measured["float32"], measured["bfloat16"]
    same_seed = [{"seed": s, "layer": layer, **compare(fp32[s][layer], bf16[s][layer])} for s in seeds
                 for layer in layers]
    yardstick = [{"seeds": [seeds[0], s], "layer": layer, **compare(fp32[seeds[0]][layer], fp32[s][layer])}
                 for s in seeds[1:] for layer in layers]
    result = {
        "what": "bf16 vs fp32 harvest for Stage I, embedded model, every SAE measured on the fp32 model",
        "date": time.strftime("%Y-%m-%d"), "machine": f"{platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads, native bf16: {fast_select_dtype(torch.device('cpu')) is not None}",
        "layers": layers, "seeds": seeds, "tokens_per_sae": args.tokens or SAETrainConfig().tokens,
        "tolerances": {"abs_delta_ev": EV_TOLERANCE, "reproduced_share": FEATURE_SHARE, "match_cosine": MATCH},
        "bf16_vs_fp32_same_seed": same_seed, "fp32_seed_vs_seed": yardstick,
        "verdict": verdict(same_seed), "yardstick": verdict(yardstick),
    }
    atomic_write_json(args.json, result)
    print(f"{'pair':<22}{'layer':>6}{'EV a':>9}{'EV b':>9}{'dEV':>9}{'feat a':>7}{'feat b':>7}{'same id':>8}"
          f"{'matched':>8}{'dec cos':>8}")
    for label, rows in (("bf16-fp32 seed", same_seed), ("fp32 seed-seed", yardstick)):
        for row in rows:
            tag = f"{label} {row.get('seed', row.get('seeds'))}"
            print(f"{tag:<22}{row['layer']:>6}{row['ev_a']:>9.4f}{row['ev_b']:>9.4f}{row['delta_ev']:>+9.4f}"
                  f"{row['features_a']:>7}{row['features_b']:>7}{row['same_id']:>8}{row['decoder_matched']:>8}"
                  f"{row['median_same_id_cosine']:>8.3f}")
    v = result["verdict"]
    print(f"bf16: max |dEV| {v['max_abs_delta_ev']:.4f} (tolerance {EV_TOLERANCE}: {'ok' if v['ev_ok'] else 'FAIL'}), "
          f"fp32 features reproduced {v['reproduced_share']} (tolerance {FEATURE_SHARE}: "
          f"{'ok' if v['features_ok'] else 'FAIL'}); fp32 seed-to-seed: max |dEV| "
          f"{result['yardstick']['max_abs_delta_ev']:.4f}, reproduced {result['yardstick']['reproduced_share']}")
    print(f"median same-id decoder cosine, bf16-fp32: "
          f"{statistics.median(r['median_same_id_cosine'] for r in same_seed):.3f}; -> {args.json}")


if __name__ == "__main__":
    main()
