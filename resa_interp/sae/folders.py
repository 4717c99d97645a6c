"""SAE folders in SAELens format: where a run keeps them, loading with clear errors, fit checks."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from resa_interp.errors import ResaError
from resa_interp.model.hooks import hook_name, parse_hook_name

if TYPE_CHECKING:
    from sae_lens import SAE

    from resa_interp.model.subject import Subject

SAES_DIR = "saes"


def sae_dir(run: str | Path, hook: str, layer: int) -> Path:
    """`RUN/saes/blocks.{layer}.hook_{hook}`: where a run keeps the SAE for one hookpoint."""
    return Path(run) / SAES_DIR / hook_name(hook, layer)


def run_sae_dirs(run: str | Path, hook: str = "resid_post") -> dict[int, Path]:
    """Layer -> SAE folder for every finished SAE of `hook` in a run (sorted by layer)."""
    root = Path(run) / SAES_DIR
    found = {}
    if root.is_dir():
        for child in root.iterdir():
            if child.is_dir() and (child / "cfg.json").exists() and child.name.startswith("blocks."):
                kind, layer = parse_hook_name(child.name)
                if kind == hook:
                    found[layer] = child
    return dict(sorted(found.items()))


def require_sae_dirs(run: str | Path, hook: str, layers: list[int]) -> dict[int, Path]:
    """Layer -> SAE folder for each of `layers`; a one-line error naming the layers the run has no SAE for."""
    found = run_sae_dirs(run, hook)
    missing = ",".join(str(layer) for layer in layers if layer not in found)
    if missing:
        raise ResaError(
            f"{run} has no {hook} SAE for layer(s) {missing}; train them (resa-interp train-saes --layers {missing} "
            f"--out {run}) or choose --layers"
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
    if sae.cfg.d_in != subject.facts.d_model:
        raise ResaError(
            f"SAE d_in {sae.cfg.d_in} does not match the model's d_model {subject.facts.d_model} "
            f"({subject.spec}); was it trained on another model?"
        )
    recorded = sae.cfg.metadata.hook_name
    if recorded and recorded != hook_name(hook, layer):
        raise ResaError(f"SAE was trained at {recorded}, not at {hook_name(hook, layer)}; pass the matching layer/hook")
