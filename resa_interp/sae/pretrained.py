"""Pretrained SAEs from elsewhere, as SAELens TopK SAEs: SAELens releases, SAELens folders, and EleutherAI
sparsify folders (`<root>/layers.N/` for a decoder layer's output, `<root>/layers.N.mlp/` for its MLP's output,
each cfg.json + sae.safetensors; EleutherAI/sae-DeepSeek-R1-Distill-Qwen-1.5B-65k holds only `layers.N.mlp`).
For fine-tuning, `to_training_form` rewrites a loaded SAE into the trainer's parameterisation without changing
what it computes.

sparsify's maths is taken from its format, not from SAELens' sparsify loader: latents are
topk(relu(encoder(x - b_dec))) with `encoder.weight` [latents, d_in], and the reconstruction is
latents @ W_dec + b_dec with `W_dec` [latents, d_in]. In SAELens' layout that is W_enc = encoder.weight.T,
W_dec = W_dec (no transpose), b_dec subtracted from the input (apply_b_dec_to_input).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from resa_interp.errors import ResaError
from resa_interp.model import HOOKS, hook_name, parse_hook_name
from resa_interp.sae.folders import load_sae

if TYPE_CHECKING:
    from sae_lens import SAE

log = logging.getLogger(__name__)


def build_topk_sae(
    W_enc: torch.Tensor,
    b_enc: torch.Tensor,
    W_dec: torch.Tensor,
    b_dec: torch.Tensor,
    k: int,
    metadata: dict,
    rescale_acts_by_decoder_norm: bool = False,
):
    """A SAELens TopKSAE (inference) with the given weights in SAELens layout (W_enc [d_in, d_sae]). Pass
    `rescale_acts_by_decoder_norm` only for unit-norm decoder rows: it then changes nothing, and lets SAELens'
    `fold_W_dec_norm()` (which refuses TopK SAEs without it) run as the no-op it is."""
    from sae_lens import TopKSAE, TopKSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    d_in, d_sae = W_enc.shape
    cfg = TopKSAEConfig(
        d_in=d_in,
        d_sae=d_sae,
        k=k,
        dtype="float32",
        device="cpu",
        apply_b_dec_to_input=True,
        normalize_activations="none",
        rescale_acts_by_decoder_norm=rescale_acts_by_decoder_norm,
        metadata=SAEMetadata(**metadata),
    )
    sae = TopKSAE(cfg)
    with torch.no_grad():
        for name, value in (("W_enc", W_enc), ("b_enc", b_enc), ("W_dec", W_dec), ("b_dec", b_dec)):
            getattr(sae, name).copy_(value.detach().to(torch.float32).cpu())
    return sae


def load_sparsify_sae(folder: str | Path, hook_name: str | None = None) -> SAE:
    """Import one sparsify-format hookpoint folder (cfg.json + sae.safetensors) as a SAELens TopKSAE."""
    from safetensors.torch import load_file

    folder = Path(folder)
    try:
        cfg = json.loads((folder / "cfg.json").read_text())
        weights = load_file(str(folder / "sae.safetensors"))
    except (OSError, ValueError) as exc:
        raise ResaError(f"sparsify SAE {str(folder)!r}: could not be read ({type(exc).__name__}: {exc})") from exc
    missing = {"encoder.weight", "encoder.bias", "W_dec", "b_dec"} - set(weights)
    if missing:
        raise ResaError(f"sparsify SAE {str(folder)!r}: missing tensors {sorted(missing)}")
    if "W_skip" in weights or cfg.get("skip_connection"):
        raise ResaError(f"sparsify SAE {str(folder)!r}: has a skip connection, which a TopK SAE cannot express")
    encoder = weights["encoder.weight"]
    return build_topk_sae(
        W_enc=encoder.T.contiguous(),
        b_enc=weights["encoder.bias"],
        W_dec=weights["W_dec"],
        b_dec=weights["b_dec"],
        k=int(cfg["k"]),
        metadata={"hook_name": hook_name, "source_format": "sparsify", "source": str(folder)},
    )


_SPARSIFY_NAME = re.compile(r"layers\.(\d+)(\.mlp)?")
PER_TOKEN_NORMALISATIONS = ("constant_norm_rescale", "layer_norm")
"""SAELens input normalisations that rescale every token by its own statistics: no fixed weights express them."""


@dataclass(frozen=True)
class SourceFolder:
    """One SAE folder inside a `--from` folder, and the hookpoint it says it was trained at (None: it does not say)."""

    folder: Path
    fmt: str
    hook: str | None
    layer: int | None


def _saelens_found(folder: Path) -> SourceFolder | None:
    if not ((folder / "cfg.json").is_file() and (folder / "sae_weights.safetensors").is_file()):
        return None
    try:
        cfg = json.loads((folder / "cfg.json").read_text())
        recorded = (cfg.get("metadata") or {}).get("hook_name") or cfg.get("hook_name")
    except (ValueError, AttributeError):
        recorded = None  # unreadable: load_sae says so in one line when it is picked
    name = recorded or folder.name
    try:
        hook, layer = parse_hook_name(name)
    except ResaError:
        return SourceFolder(folder, "saelens", recorded, None)
    return SourceFolder(folder, "saelens", hook, layer)


def _sparsify_found(folder: Path) -> SourceFolder | None:
    if not (folder / "sae.safetensors").is_file():
        return None
    match = _SPARSIFY_NAME.fullmatch(folder.name)
    if match is None:
        return SourceFolder(folder, "sparsify", None, None)
    return SourceFolder(folder, "sparsify", "mlp_out" if match.group(2) else "resid_post", int(match.group(1)))


def _scan(path: Path) -> list[SourceFolder]:
    """Every SAE folder at `path`, directly under it, and under its `saes/` (a run)."""
    folders = [path, *sorted(p for p in path.iterdir() if p.is_dir())]
    if (path / "saes").is_dir():
        folders += sorted(p for p in (path / "saes").iterdir() if p.is_dir())
    found = [_saelens_found(f) or _sparsify_found(f) for f in folders]
    return [f for f in found if f is not None]


def _describe(found: list[SourceFolder]) -> str:
    by_hook: dict[str, list[int]] = {}
    for f in found:
        if f.hook is not None:
            by_hook.setdefault(f.hook, []).append(f.layer if f.layer is not None else -1)
    if not by_hook:
        return (
            "no SAE folders (looked for SAELens folders blocks.N.hook_HOOK/ with cfg.json + sae_weights.safetensors "
            "and sparsify folders layers.N/ or layers.N.mlp/ with sae.safetensors)"
        )
    return "; ".join(
        f"{hook} SAEs for layers {','.join(str(n) for n in sorted(set(layers)) if n >= 0) or '?'}"
        for hook, layers in sorted(by_hook.items())
    )


def _fold_recorded_normalisation(sae: SAE, folder: Path) -> None:
    """A SAELens training checkpoint keeps its input normalisation (scaling factor, whitening) beside the weights
    in activation_scaler.json; fold it in with SAELens' own methods so the SAE reads raw activations."""
    from sae_lens.constants import ACTIVATION_SCALER_CFG_FILENAME
    from sae_lens.training.activation_scaler import ActivationScaler

    path = folder / ACTIVATION_SCALER_CFG_FILENAME
    if sae.cfg.normalize_activations not in ("expected_average_only_in", "covariance_whitening") or not path.is_file():
        return
    scaler = ActivationScaler()
    scaler.load(path)
    if scaler.whitening is not None:  # scaler.scale applies the factor first, then whitens: fold the inner map last
        w = scaler.whitening
        sae.fold_activation_whitening(w.mean, w.matrix, w.inverse_matrix)
    if scaler.scaling_factor is not None:
        sae.fold_activation_norm_scaling_factor(scaler.scaling_factor)
    log.info("%s: folded its recorded input normalisation (%s) into the weights", folder, path.name)


def find_source_sae(source: str, layer: int, hook: str) -> SourceFolder | None:
    """The folder of `--from`'s SAE for `hook` at `layer`, found from file names and cfg.json alone (no weights
    read), refused in one line naming what the folder holds; None for a SAELens `RELEASE:SAE_ID`."""
    path = Path(source).expanduser()
    if not path.is_dir():
        if ":" not in source:
            raise ResaError(
                f"--from {source!r}: not a folder; accepted: a SAELens folder, a sparsify folder, or RELEASE:SAE_ID "
                f"of a SAELens release (use {{layer}} in SAE_ID for per-layer ids)"
            )
        return None
    found = _scan(path)
    matches = [f for f in found if (f.hook, f.layer) == (hook, layer)]
    unsaid = [f for f in found if f.folder == path and f.hook is None]  # one SAE that does not say where
    if not matches and not unsaid:
        others = sorted({f.hook for f in found if f.layer == layer and f.hook in HOOKS} - {hook})
        hint = (f"; to start from its {others[0]} SAE pass --from-hook {others[0]} (train-saes), or work at that "
                f"hookpoint with --hook {others[0]}") if others else ""
        raise ResaError(f"--from {source!r}: no {hook} SAE for layer {layer} there; it holds {_describe(found)}"
                        f"{hint}")
    return (matches or unsaid)[0]


def load_source_sae(source: str, layer: int, hook: str) -> SAE:
    """The pretrained SAE trained at `hook` of `layer` from `--from`: a SAELens folder (one SAE, or a run/folder
    with one subfolder per hook name), a sparsify folder (`layers.N` or `layers.N.mlp` subfolders), or
    `release:sae_id` from SAELens. A folder without an SAE for that hookpoint is refused in one line naming what
    it holds. The metadata records `source_hook`, `source_path` and `source_format`."""
    name = hook_name(hook, layer)
    picked = find_source_sae(source, layer, hook)
    if picked is None:
        sae = _load_release(source, layer, hook)
    else:
        if picked.fmt == "sparsify":
            sae = load_sparsify_sae(picked.folder, name)
        else:
            sae = load_sae(picked.folder)
            _fold_recorded_normalisation(sae, picked.folder)
        if picked.hook is None:
            log.warning("--from %s does not record its hookpoint; taken as %s", picked.folder, name)
        sae.cfg.metadata.source_path = str(picked.folder)
        sae.cfg.metadata.source_format = picked.fmt
    sae.cfg.metadata.hook_name = name
    sae.cfg.metadata.source_hook = hook
    return sae


def _load_release(source: str, layer: int, hook: str) -> SAE:
    from sae_lens import SAE

    release, sae_id = source.split(":", 1)
    try:
        sae = SAE.from_pretrained(release, sae_id.format(layer=layer), device="cpu")
    except Exception as exc:
        raise ResaError(f"--from {source!r}: SAELens could not load it ({type(exc).__name__}; offline?)") from exc
    recorded = sae.cfg.metadata.hook_name
    try:
        recorded_at = parse_hook_name(recorded) if recorded else None
    except ResaError:
        recorded_at = None
        log.warning("--from %s records hookpoint %r (not one of ours); taken as %s", source, recorded,
                    hook_name(hook, layer))
    if recorded_at is not None and recorded_at != (hook, layer):
        raise ResaError(f"--from {source!r}: that SAE was trained at {recorded}, not at {hook_name(hook, layer)}; "
                        f"pass the matching layer, or --from-hook {recorded_at[0]}")
    sae.cfg.metadata.source_path = source
    sae.cfg.metadata.source_format = "saelens-release"
    return sae


def to_training_form(sae: SAE, source: str) -> list[str]:
    """Rewrite a loaded TopK SAE in place into the trainer's form — raw-unit inputs, b_dec subtracted before
    encoding, unit-norm decoder rows — keeping what it computes; return one note per change.

    A SAELens SAE computes topk(n * ((N(x) - a*b_dec) W_enc + b_enc)) with n the decoder row norms when
    rescale_acts_by_decoder_norm (else 1), a = apply_b_dec_to_input, N the input normalisation, and reconstructs
    N^-1(z/n W_dec + b_dec). The trainer computes topk((x - b_dec) W_enc + b_enc) with unit-norm rows and
    reconstructs z W_dec + b_dec. Folds: a = 0 adds b_dec W_enc to b_enc (then (x - b_dec) W_enc + b_enc' is the
    same pre-activation); decoder norms n go into the encoder (W_enc columns and b_enc times n, W_dec rows over
    n), which scales each latent by its norm and leaves z W_dec unchanged. That is exact when the source ranks
    latents after the scaling (rescale_acts_by_decoder_norm) or when all norms are equal; otherwise the ranking
    changes where pre-activations are within the norms' spread, and the note says so. A recorded scale factor
    or whitening was already folded by `load_source_sae`; per-token normalisations cannot be folded and are
    refused."""
    cfg = sae.cfg
    if cfg.normalize_activations in PER_TOKEN_NORMALISATIONS:
        raise ResaError(
            f"--from {source!r}: normalize_activations={cfg.normalize_activations!r} rescales every token by its "
            f"own statistics, which the trainer's fixed weights cannot express; fine-tune accepts 'none', "
            f"'expected_average_only_in' and 'covariance_whitening' (with activation_scaler.json); "
            f"--mode pretrained imports it as is"
        )
    if cfg.normalize_activations != "none":
        raise ResaError(
            f"--from {source!r}: normalize_activations={cfg.normalize_activations!r} but its statistics are not "
            f"recorded with it (activation_scaler.json), so SAELens itself would skip them; fold them into the "
            f"weights first, or use --mode pretrained"
        )
    notes = []
    ranked_after_norms = getattr(cfg, "rescale_acts_by_decoder_norm", False)
    with torch.no_grad():
        if not cfg.apply_b_dec_to_input:
            sae.b_enc.add_(sae.b_dec @ sae.W_enc)
            cfg.apply_b_dec_to_input = True
            notes.append("apply_b_dec_to_input=False: b_dec @ W_enc folded into b_enc (exact)")
        norms = sae.W_dec.norm(dim=-1).clamp_min(1e-12)
        if (norms - 1).abs().max() > 1e-5:
            lo, hi = norms.min().item(), norms.max().item()
            sae.W_dec.div_(norms[:, None])
            sae.W_enc.mul_(norms[None, :])
            sae.b_enc.mul_(norms)
            if ranked_after_norms:
                how = "exact: the source ranks latents after scaling by them"
            elif hi - lo <= 1e-5 * hi:
                how = "exact: all equal"
            else:
                how = ("reconstruction from the same latents unchanged, but the source ranked latents before scaling "
                       "by these norms, so top-k can pick differently where pre-activations are within that spread")
            notes.append(f"decoder row norms {lo:.4g}..{hi:.4g} folded into the encoder ({how})")
            if not how.startswith("exact"):
                log.warning("--from %s: %s", source, notes[-1])
    if ranked_after_norms:
        cfg.rescale_acts_by_decoder_norm = False  # the norms are 1 now
    return notes


def check_source_sae(sae: SAE, d_in: int, source: str | None) -> None:
    """Refuse, in one line, a --from SAE that does not read `d_in`-wide inputs or is not a TopK SAE."""
    if sae.cfg.d_in != d_in:
        raise ResaError(f"--from {source!r}: SAE d_in {sae.cfg.d_in} does not match the model's d_model {d_in}")
    if getattr(sae.cfg, "k", None) is None:
        raise ResaError(f"--from {source!r}: not a TopK SAE ({type(sae).__name__}); accepted: TopK SAEs")
