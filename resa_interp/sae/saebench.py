"""A run's held-out SAE quality in SAEBench's core-eval output format, so SAEBench's tooling reads our numbers.

One JSON file per SAE, `OUT/core/<release>_<sae_id>_eval_results.json` ('/' in the name as '_'), as SAEBench's
`general_utils.get_results_filepath` names it and `graphing_utils.get_eval_results` reads it (a path containing
"core": the nested metric categories flattened). The object is SAEBench's `CoreEvalOutput`
(`sae_bench/evals/core/eval_output.py`): `eval_config` (a `CoreEvalConfig`), `eval_result_metrics` (seven
categories), `eval_result_details` (per latent; empty here), `sae_cfg_dict` (the SAE's cfg.json) and ids.

Every number comes from the run: RUN/saes[/seed-S]/metrics.json (Stage I's held-out rows) and the SAE's
sparsity.safetensors (log10 held-out firing rate per latent, written with those rows). A metric we do not measure,
or measure with another definition, is SAEBench's own "could not compute" value, -1 (its core eval writes -1 for
every NaN metric: `replace_nans_with_negative_one`), its `compute_*` flag in `eval_config` says whether the
category was measured, and `eval_result_unstructured["resa_interp"]` lists those fields and holds the run's row.

Absent always: the ablation baselines (and so the normalised `kl_div_score` and `ce_loss_score`), L1, shrinkage,
cosine similarities, the legacy explained variance, and `mse`: ours (squared error summed over dimensions, mean
over tokens) is not SAEBench's, which divides that per-token sum by the batch's token count as well.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from resa_interp.errors import ResaError
from resa_interp.runs import atomic_dir, read_manifest, run_relative, sha256_file
from resa_interp.sae.folders import SAES_DIR, SPARSITY_EPS
from resa_interp.sae.hub import check_export_target, run_sae_ids
from resa_interp.sae.metrics import METRICS_FILE, run_metrics_rows

CORE_DIR = "core"
"""Folder of core-eval files: SAEBench's tooling tells a core result by "core" in its path."""
ABSENT = -1
"""What SAEBench's core eval writes for a metric it could not compute (a NaN), and what we write for one we do not
measure: every field of its metric categories is a required number."""
NOT_RUN = "none: resa-interp held-out metrics, SAEBench was not run"
"""`sae_bench_commit_hash` (a required string): no SAEBench commit computed these numbers."""

@dataclass(frozen=True)
class SAEBenchExport:
    """What `export_saebench` wrote."""

    out: Path
    files: dict[str, Path]
    """SAE id -> its core-eval JSON file."""
    skipped: list[str]
    """SAE ids without a held-out metrics row (no file written)."""


def results_name(release: str, sae_id: str) -> str:
    """SAEBench's file name for one SAE's results: `<release>_<sae_id>_eval_results.json`, '/' as '_'."""
    return f"{release}_{sae_id}_eval_results.json".replace("/", "_")


def _value(row: dict, key: str) -> float:
    value = row.get(key)
    return ABSENT if value is None else value


def _densities(folder: Path, tokens: int) -> list[float] | None:
    """Held-out firing rate per latent from sparsity.safetensors (log10(rate + eps)), as exact counts / tokens."""
    from safetensors.torch import load_file

    path = folder / "sparsity.safetensors"
    if not path.is_file() or tokens < 1:
        return None
    log_rate = load_file(str(path))["sparsity"].double()
    counts = ((10**log_rate - SPARSITY_EPS) * tokens).round().clamp(min=0)
    return (counts / tokens).tolist()


def _frequencies(densities: list[float] | None) -> dict[str, float]:
    """SAEBench's `calculate_misc_metrics` on the per-latent densities (ABSENT without them)."""
    keys = ("freq_over_1_percent", "freq_over_10_percent", "normalized_freq_over_1_percent",
            "normalized_freq_over_10_percent")
    if densities is None:
        return dict.fromkeys(keys, ABSENT)
    total, n = sum(densities), len(densities)
    over = {p: [d for d in densities if d > p] for p in (0.01, 0.1)}
    return {
        "freq_over_1_percent": len(over[0.01]) / n,
        "freq_over_10_percent": len(over[0.1]) / n,
        "normalized_freq_over_1_percent": sum(over[0.01]) / total if total > 0 else 0.0,
        "normalized_freq_over_10_percent": sum(over[0.1]) / total if total > 0 else 0.0,
    }


def core_eval_output(row: dict, cfg: dict, folder: Path, release: str, sae_id: str, eval_id: str,
                     train: dict) -> dict:
    """SAEBench's CoreEvalOutput (as the dict its `to_json_file` writes) of one SAE's held-out metrics `row`, its
    cfg.json `cfg`, its `folder` and the run's train-saes manifest entry `train`."""
    meta = cfg.get("metadata", {})
    config = train.get("config", {})
    spliced = row.get("kl_spliced") is not None
    tokens = int(row["heldout_tokens"])
    densities = _densities(folder, tokens)
    texts = int(config.get("heldout", 0))
    finished = train.get("finished_at")
    millis = (int(datetime.strptime(finished, "%Y-%m-%dT%H:%M:%S%z").timestamp() * 1000) if finished
              else int(folder.stat().st_mtime * 1000))
    metrics = {
        "model_behavior_preservation": {"kl_div_score": ABSENT, "kl_div_with_ablation": ABSENT,
                                        "kl_div_with_sae": _value(row, "kl_spliced")},
        "model_performance_preservation": {"ce_loss_score": ABSENT, "ce_loss_with_ablation": ABSENT,
                                           "ce_loss_with_sae": _value(row, "ce_spliced"),
                                           "ce_loss_without_sae": _value(row, "ce_clean")},
        "reconstruction_quality": {"explained_variance": row["explained_variance"],
                                   "explained_variance_legacy": ABSENT, "mse": ABSENT, "cossim": ABSENT},
        "shrinkage": {"l2_norm_in": ABSENT, "l2_norm_out": ABSENT, "l2_ratio": ABSENT,
                      "relative_reconstruction_bias": ABSENT},
        "sparsity": {"l0": row["l0"], "l1": ABSENT},
        "token_stats": {"total_tokens_eval_reconstruction": tokens if spliced else ABSENT,
                        "total_tokens_eval_sparsity_variance": tokens},
        "misc_metrics": {**_frequencies(densities), "average_max_encoder_cosine_sim": ABSENT,
                         "average_max_decoder_cosine_sim": ABSENT,
                         "frac_alive": 1.0 - row["heldout_inactive_fraction"]},
    }
    absent = {cat: [k for k, v in values.items() if v == ABSENT] for cat, values in metrics.items()}
    eval_config = {
        "model_name": meta.get("model_name") or train.get("model") or "",
        "llm_dtype": config.get("model_dtype", "float32"),
        # the held-out texts, pooled: every figure is a sum over all their counted tokens
        "batch_size_prompts": texts,
        "n_eval_reconstruction_batches": 1 if spliced else 0,
        "n_eval_sparsity_variance_batches": 1,
        "dataset": meta.get("dataset_path") or config.get("dataset") or "",
        "context_size": int(meta.get("context_size") or config.get("max_seq_len") or 0),
        "compute_kl": spliced,
        "compute_ce_loss": spliced,
        "compute_l2_norms": False,
        "compute_sparsity_metrics": True,
        "compute_variance_metrics": True,
        "compute_featurewise_density_statistics": False,
        "compute_featurewise_weight_based_metrics": False,
        "exclude_special_tokens_from_reconstruction": not config.get("keep_first", False),
        "verbose": False,
    }
    return {
        "eval_type_id": "core",
        "eval_config": eval_config,
        "eval_id": eval_id,
        "datetime_epoch_millis": millis,
        "eval_result_metrics": metrics,
        "eval_result_details": [],
        "sae_bench_commit_hash": NOT_RUN,
        "sae_lens_id": sae_id,
        "sae_lens_release_id": release,
        "sae_lens_version": meta.get("sae_lens_version"),
        "sae_cfg_dict": cfg,
        "eval_result_unstructured": {"resa_interp": {
            "absent": {cat: keys for cat, keys in absent.items() if keys},
            "definitions": {
                "explained_variance": "1 - SSE / sum over tokens of |x - mean x|^2, on the held-out trigger texts",
                "exclude_special_tokens_from_reconstruction": "position 0 of each text is left out (keep_first "
                                                              "off), not special tokens elsewhere",
                "misc_metrics": "frequencies from the SAE's sparsity.safetensors (held-out firing rates)",
            },
            "heldout_texts": texts,
            "metrics_row": row,
        }},
    }


def export_saebench(run: str | Path, out: str | Path, release: str | None = None) -> SAEBenchExport:
    """Write OUT/core/<release>_<sae_id>_eval_results.json for every SAE of the run with held-out metrics (the
    folder written under a temporary name and renamed as a whole). `release` defaults to the run folder's name."""
    run, out = Path(run), check_export_target(out)
    ids = run_sae_ids(run)
    rows = run_metrics_rows(run)
    have = {sae_id: folder for sae_id, folder in ids.items() if folder.resolve() in rows}
    if not have:
        raise ResaError(f"run {str(run)!r} has no SAEs with held-out metrics (no {run}/{SAES_DIR}/{METRICS_FILE} "
                        f"rows); train them with: resa-interp train-saes --out {run}")
    release = release or run.resolve().name
    train = read_manifest(run).get("stages", {}).get("train-saes", {})
    files = {}
    with atomic_dir(out) as tmp:
        (tmp / CORE_DIR).mkdir()
        for sae_id, folder in have.items():
            metrics_file = folder.parent / METRICS_FILE
            # one id per metrics file, as SAEBench gives one to the SAEs of one evaluation run
            eval_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"resa-interp:{sha256_file(metrics_file)}")
                          if metrics_file.is_file() else uuid.uuid5(uuid.NAMESPACE_URL, run_relative(folder, run)))
            cfg = json.loads((folder / "cfg.json").read_text())
            doc = core_eval_output(rows[folder.resolve()], cfg, folder, release, sae_id, eval_id, train)
            name = results_name(release, sae_id)
            (tmp / CORE_DIR / name).write_text(json.dumps(doc, indent=2))
            files[sae_id] = out / CORE_DIR / name
    return SAEBenchExport(out, files, [sae_id for sae_id in ids if sae_id not in have])
