"""Which latents of a run to look at: its reasoning features (features.json) or ids given at a layer, with the
run's SAE folders and the model its SAEs were trained on. Shared by the dashboard and the interventions."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from resa_interp.errors import ResaError
from resa_interp.model import canonical_hook, hook_name
from resa_interp.numbering import layer_ranges
from resa_interp.sae import run_sae_dirs

if TYPE_CHECKING:
    from sae_lens import SAE

REASONING = "reasoning"


@dataclass(frozen=True)
class Selection:
    """Which latents of which layers, and the run's features.json (None if it has none)."""

    hook: str
    features: dict[int, list[int]]
    sae_dirs: dict[int, Path]
    doc: dict | None


def parse_ids(spec: str) -> list[int]:
    """'3,17,200' -> [3, 17, 200] (one-line error otherwise)."""
    try:
        ids = [int(p) for p in spec.split(",") if p.strip()]
    except ValueError:
        raise ResaError(f"--features {spec!r}: accepted 'reasoning' or latent ids like 3,17,200") from None
    if not ids:
        raise ResaError(f"--features {spec!r}: no latent ids given")
    return ids


def select_features(
    run: str | Path, layer: int | None, features: str = REASONING, hook: str | None = None
) -> Selection:
    """Resolve --layer/--features against the run: its SAEs, and its features.json for 'reasoning'."""
    run = Path(run)
    doc_path = run / "features.json"
    doc = json.loads(doc_path.read_text()) if doc_path.is_file() else None
    hook = canonical_hook(hook or (doc or {}).get("hook", "resid_post"))
    dirs = run_sae_dirs(run, hook)
    if not dirs:
        raise ResaError(
            f"run {str(run)!r} has no {hook} SAEs (no {run}/saes/{hook_name(hook, 0).replace('.0.', '.*.', 1)}/); "
            f"train them with: resa-interp train-saes --out {run}"
        )
    if layer is not None and layer not in dirs:
        raise ResaError(
            f"--layer {layer}: run {str(run)!r} has no {hook} SAE there; it has layers {layer_ranges(dirs)}"
        )
    if features.strip() == REASONING:
        if doc is None:
            raise ResaError(
                f"run {str(run)!r} has no features.json; run `resa-interp features --out {run}` first, "
                "or pass --layer L --features ids"
            )
        chosen = {
            row["layer"]: list(row["features"])
            for row in doc["layers"]
            if row["features"] and (layer is None or row["layer"] == layer) and row["layer"] in dirs
        }
        if not chosen:
            where = f"at layer {layer}" if layer is not None else "at any layer"
            raise ResaError(f"{doc_path} lists no reasoning features {where}; pass --layer L --features ids")
        return Selection(hook, chosen, {lay: dirs[lay] for lay in chosen}, doc)
    ids = parse_ids(features)
    if layer is None:
        raise ResaError(f"--features {features!r}: latent ids need --layer (one of {layer_ranges(dirs)})")
    d_sae = json.loads((dirs[layer] / "cfg.json").read_text())["d_sae"]
    bad = [i for i in ids if not 0 <= i < d_sae]
    if bad:
        raise ResaError(f"--features {bad[0]}: layer {layer}'s SAE has {d_sae} latents (ids 0..{d_sae - 1})")
    return Selection(hook, {layer: sorted(set(ids))}, {layer: dirs[layer]}, doc)


def model_spec(sae: SAE, doc: dict | None) -> str | None:
    """The model the SAEs were trained on: its recorded folder when it exists here, else its spec."""
    meta = sae.cfg.metadata
    path = getattr(meta, "model_path", None) or (doc or {}).get("model_path")
    if path and Path(path).exists():
        return path
    return getattr(meta, "model_name", None) or (doc or {}).get("model")
