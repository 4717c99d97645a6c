"""Pretrained SAEs from elsewhere, as SAELens TopK SAEs: SAELens releases, SAELens folders, and EleutherAI
sparsify folders (`<root>/layers.N/cfg.json + sae.safetensors`, the format of
EleutherAI/sae-DeepSeek-R1-Distill-Qwen-1.5B-65k).

sparsify's maths is taken from its format, not from SAELens' sparsify loader: latents are
topk(relu(encoder(x - b_dec))) with `encoder.weight` [latents, d_in], and the reconstruction is
latents @ W_dec + b_dec with `W_dec` [latents, d_in]. In SAELens' layout that is W_enc = encoder.weight.T,
W_dec = W_dec (no transpose), b_dec subtracted from the input (apply_b_dec_to_input).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from resa_interp.errors import ResaError
from resa_interp.sae.folders import load_sae

if TYPE_CHECKING:
    from sae_lens import SAE


def build_topk_sae(
    W_enc: torch.Tensor,
    b_enc: torch.Tensor,
    W_dec: torch.Tensor,
    b_dec: torch.Tensor,
    k: int,
    metadata: dict,
):
    """A SAELens TopKSAE (inference) with the given weights in SAELens layout (W_enc [d_in, d_sae])."""
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
        rescale_acts_by_decoder_norm=False,
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


def _sparsify_hookpoint(layer: int, hook: str) -> str:
    return f"layers.{layer}" if hook == "resid_post" else f"layers.{layer}.mlp"


def load_source_sae(source: str, layer: int, hook: str, hook_name: str) -> SAE:
    """The pretrained SAE for one hookpoint from `--from`: a SAELens folder (one SAE, or a run/folder with one
    subfolder per hook name), a sparsify folder (`layers.N` subfolders), or `release:sae_id` from SAELens."""
    path = Path(source).expanduser()
    if path.is_dir():
        for candidate in (path / hook_name, path / "saes" / hook_name, path):
            if (candidate / "cfg.json").is_file() and (candidate / "sae_weights.safetensors").is_file():
                sae = load_sae(candidate)
                if sae.cfg.metadata.hook_name in (None, hook_name):
                    return sae
        sparsify_dir = path / _sparsify_hookpoint(layer, hook)
        if (sparsify_dir / "sae.safetensors").is_file():
            return load_sparsify_sae(sparsify_dir, hook_name)
        if (path / "sae.safetensors").is_file():
            return load_sparsify_sae(path, hook_name)
        raise ResaError(
            f"--from {source!r}: no SAE for {hook_name} there (looked for a SAELens folder {hook_name}/ and a "
            f"sparsify folder {_sparsify_hookpoint(layer, hook)}/)"
        )
    if ":" not in source:
        raise ResaError(
            f"--from {source!r}: not a folder; accepted: a SAELens folder, a sparsify folder, or RELEASE:SAE_ID "
            f"of a SAELens release (use {{layer}} in SAE_ID for per-layer ids)"
        )
    from sae_lens import SAE

    release, sae_id = source.split(":", 1)
    try:
        return SAE.from_pretrained(release, sae_id.format(layer=layer), device="cpu")
    except Exception as exc:
        raise ResaError(f"--from {source!r}: SAELens could not load it ({type(exc).__name__}; offline?)") from exc
