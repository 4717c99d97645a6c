"""SAE folders in SAELens format: where a run keeps them, loading with clear errors, fit checks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from resa_interp.errors import ResaError
from resa_interp.model import canonical_hook, hook_name, parse_hook_name
from resa_interp.runs import atomic_dir

if TYPE_CHECKING:
    from sae_lens import SAE

    from resa_interp.model import Subject

SAES_DIR = "saes"
SPARSITY_EPS = 1e-10
"""Added to firing rates before log10, as SAELens' trainer does, so a latent that never fired reads -10."""


SEED_PREFIX = "seed-"
"""RUN/saes/seed-<s>/ holds the SAEs of a multi-seed run's further seeds, laid out as RUN/saes/ is."""


def saes_root(run: str | Path, seed: int | None = None) -> Path:
    """`RUN/saes`, or `RUN/saes/seed-<seed>` for a further seed of a multi-seed run."""
    root = Path(run) / SAES_DIR
    return root if seed is None else root / f"{SEED_PREFIX}{seed}"


def sae_dir(run: str | Path, hook: str, layer: int, seed: int | None = None) -> Path:
    """`RUN/saes/blocks.{layer}.hook_{hook}`: where a run keeps the SAE for one hookpoint (under
    `RUN/saes/seed-<seed>/` for a further seed)."""
    return saes_root(run, seed) / hook_name(hook, layer)


def run_sae_dirs(run: str | Path, hook: str = "resid_post", seed: int | None = None) -> dict[int, Path]:
    """Layer -> SAE folder for every finished SAE of `hook` in a run (sorted by layer); with `seed`, those of that
    further seed."""
    root = saes_root(run, seed)
    found = {}
    if root.is_dir():
        for child in root.iterdir():
            if child.is_dir() and (child / "cfg.json").exists() and child.name.startswith("blocks."):
                kind, layer = parse_hook_name(child.name)
                if kind == canonical_hook(hook):
                    found[layer] = child
    return dict(sorted(found.items()))


def run_seeds(run: str | Path) -> list[int]:
    """The further seeds a multi-seed run holds SAEs for (`RUN/saes/seed-<s>/`), sorted; [] for a one-seed run."""
    root = saes_root(run)
    if not root.is_dir():
        return []
    names = [p.name.removeprefix(SEED_PREFIX) for p in root.glob(f"{SEED_PREFIX}*") if p.is_dir()]
    return sorted(int(n) for n in names if n.lstrip("-").isdigit())


def require_sae_dirs(run: str | Path, hook: str, layers: list[int], seed: int | None = None) -> dict[int, Path]:
    """Layer -> SAE folder for each of `layers` (of a further `seed`'s); a one-line error naming the layers the run
    has no SAE for."""
    found = run_sae_dirs(run, hook, seed)
    missing = ",".join(str(layer) for layer in layers if layer not in found)
    if missing:
        which = "" if seed is None else f" of seed {seed}"
        raise ResaError(
            f"{run} has no {hook} SAE{which} for layer(s) {missing}; train them (resa-interp train-saes --layers "
            f"{missing} --out {run}) or choose --layers"
        )
    return {layer: found[layer] for layer in layers}


def load_sae(path: str | Path, device: str = "cpu") -> SAE:
    """Load an SAELens SAE folder (cfg.json + sae_weights.safetensors) with one-line errors."""
    from sae_lens import SAE

    path = Path(path)
    if not (path / "cfg.json").is_file():
        raise ResaError(f"SAE {str(path)!r}: no cfg.json there, so it is not an SAELens SAE folder")
    try:
        return SAE.load_from_disk(str(path), device=device)
    except Exception as exc:  # safetensors/json/SAELens raise a variety of types for corrupt files
        raise ResaError(f"SAE {str(path)!r}: could not be loaded ({type(exc).__name__}: {exc})") from exc


def check_sae_fits(sae: SAE, subject: Subject, hook: str, layer: int) -> None:
    """Refuse, in one line, an SAE whose width or recorded hookpoint does not match the model."""
    subject.check_layer(layer)
    if sae.cfg.d_in != subject.hook_width(hook):
        raise ResaError(
            f"SAE d_in {sae.cfg.d_in} does not match the width {subject.hook_width(hook)} of {hook} "
            f"({subject.spec}); was it trained on another model?"
        )
    recorded = sae.cfg.metadata.hook_name
    if recorded and recorded != hook_name(hook, layer):
        raise ResaError(f"SAE was trained at {recorded}, not at {hook_name(hook, layer)}; pass the matching layer/hook")


def record_firing(path: str | Path, firing_counts: torch.Tensor, n_tokens: int, metadata: dict) -> Path:
    """Rewrite an SAE folder as a whole with what SAELens' runner records at the end of training: `metadata` and
    the `l0` and `num_dead_features` of `firing_counts` (tokens each latent fired on, out of `n_tokens`) in
    cfg.json, and sparsity.safetensors beside the weights (log10 firing rate per latent, key "sparsity")."""
    from sae_lens.constants import SAE_CFG_FILENAME, SPARSITY_FILENAME
    from safetensors.torch import save_file

    path = Path(path)
    cfg = json.loads((path / SAE_CFG_FILENAME).read_text())
    counts = firing_counts.detach().double().cpu()
    cfg["metadata"].update(metadata, l0=counts.sum().item() / max(n_tokens, 1),
                           num_dead_features=int((counts == 0).sum()))
    with atomic_dir(path) as tmp:
        for item in path.iterdir():
            if item.name not in (SAE_CFG_FILENAME, SPARSITY_FILENAME):
                shutil.copy2(item, tmp / item.name)
        (tmp / SAE_CFG_FILENAME).write_text(json.dumps(cfg))
        rate = (counts / max(n_tokens, 1)).float()
        save_file({"sparsity": torch.log10(rate + SPARSITY_EPS)}, str(tmp / SPARSITY_FILENAME))
    return path
