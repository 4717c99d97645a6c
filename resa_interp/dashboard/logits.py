"""A latent's logit effects.

Logit effects: the decoder direction through the unembedding, W_dec[f] · diag(g) · W_U, with g the gain of the
model's final norm folded in (as TransformerLens' fold_ln does for SAEDashboard and Neuronpedia) and the norm's
division by the activation's RMS ignored (a direction alone has no scale); W_U is the HF lm_head's weight,
equal to the HookedTransformer's `W_U` because no weight processing is applied.
"""

from __future__ import annotations

import torch

from resa_interp.model import Subject


def unembedding(subject: Subject) -> tuple[torch.Tensor, str]:
    """[d_model, vocab] matrix taking a residual direction to logits, and how it was made: the lm_head weight
    with the final norm's gain folded in (its RMS normalisation ignored)."""
    head = subject.hf.get_output_embeddings().weight  # [vocab, d]
    base = subject.hf.get_decoder() if hasattr(subject.hf, "get_decoder") else subject.hf
    norm = next((getattr(base, n) for n in ("norm", "ln_f", "final_layernorm") if hasattr(base, n)), None)
    gain = getattr(norm, "weight", None)
    w_u = head.detach().float().T
    if gain is None:
        return w_u, "W_dec[f] @ W_U (lm_head weight; the model has no final-norm gain to fold in)"
    rule = (
        "W_dec[f] @ diag(g) @ W_U: the lm_head weight with the final norm's gain g folded in "
        "(its division by the RMS of the residual ignored)"
    )
    return gain.detach().float()[:, None] * w_u, rule


def logit_effects(subject: Subject, directions: torch.Tensor) -> torch.Tensor:
    """[n, vocab] logit effect of each direction [n, d_model] (see `unembedding`)."""
    w_u, _ = unembedding(subject)
    return directions.float().to(w_u.device) @ w_u
