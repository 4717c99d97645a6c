"""The fast path of TopK SAE training: a fused reconstruction loss whose backward pass touches only the k selected
latents.

A dense TopK SAE step costs six large matmuls (encoder and decoder, forward and two backward each). Here the
encoder forward stays one dense matmul, but its backward and the whole decoder are sparse gathers and
weighted bag sums over the k active latents per token, as in EleutherAI sparsify. Nothing here knows about
models or runs; `resa_interp.sae.trainer` drives it.

Layout (SAELens-compatible after a transpose): `enc` is [d_sae, d_in] (rows are encoder directions),
`dec` is [d_sae, d_in] (rows are unit-norm decoder directions).
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import Tensor

# torch warns on every sparse CSR construction (beta status, unchecked invariants); the one use here, a
# sampling pattern built sorted by construction, is tested
warnings.filterwarnings("ignore", message="Sparse (CSR tensor support|invariant checks)", category=UserWarning)


def _by_latent(indices: Tensor, n_rows: int) -> tuple[Tensor, Tensor]:
    """The (token, slot) entries of `indices` [t, k] grouped by latent: (order, offsets), `order` the flat entries
    sorted by latent id (stable: token order within a latent), `offsets` where each latent's group starts.

    One sort serves both weight gradients (encoder and decoder share the selected pattern)."""
    flat = indices.reshape(-1)
    order = flat.argsort(stable=True)
    offsets = torch.zeros(n_rows, dtype=torch.long, device=indices.device)
    offsets[1:] = torch.bincount(flat, minlength=n_rows).cumsum(0)[:-1]
    return order, offsets


def _scatter_rows(order: Tensor, offsets: Tensor, k: int, weights: Tensor, dense: Tensor) -> Tensor:
    """sum over tokens t and slots j of weights[t, j] * dense[t], into row indices[t, j] of an [n_rows, d] result,
    with (order, offsets) = `_by_latent(indices, n_rows)`.

    This is S.T @ dense for the sparse [tokens, n_rows] matrix S with k entries per token (the weight gradient of
    encoder and decoder), as one weighted `embedding_bag` over `dense`'s rows: each latent's bag is the tokens that
    selected it. It never materialises the k copies, and an empty bag (a latent nobody selected) is a zero row.
    """
    return F.embedding_bag(order // k, dense, offsets, per_sample_weights=weights.reshape(-1)[order], mode="sum")


def _sampled_products(indices: Tensor, left: Tensor, right: Tensor) -> Tensor:
    """[t, j] -> dot(left[t], right[indices[t, j]]), i.e. left @ right.T sampled where the latents are active.

    `indices` must be sorted within each row (the encoder returns them so)."""
    n_tokens, k = indices.shape
    crow = torch.arange(0, n_tokens * k + 1, k, device=indices.device)
    pattern = torch.sparse_csr_tensor(
        crow, indices.reshape(-1), torch.zeros(n_tokens * k, dtype=left.dtype, device=left.device),
        (n_tokens, right.shape[0]), check_invariants=False,
    )
    return torch.sparse.sampled_addmm(pattern, left, right.T, beta=0.0).values().view(n_tokens, k)


def _select(x: Tensor, enc: Tensor, b_enc: Tensor, k: int, select_dtype: torch.dtype | None):
    """relu(topk(x @ enc.T + b_enc)) as (values, indices), indices ascending per token (a valid CSR row pattern).

    With `select_dtype` bfloat16 the dense product that *selects* the k latents runs in bf16 (AMX/tensor cores,
    about 3x faster), and the k selected values are then recomputed exactly in the input's dtype."""
    if select_dtype is None or select_dtype == x.dtype:
        values, indices = F.linear(x, enc, b_enc).topk(k, dim=-1, sorted=False)
        indices, order = indices.sort(dim=-1)
        values = values.gather(-1, order)
    else:
        pre = F.linear(x.to(select_dtype), enc.to(select_dtype), b_enc.to(select_dtype))
        indices = pre.topk(k, dim=-1, sorted=False).indices.sort(dim=-1).values
        values = _sampled_products(indices, x, enc) + b_enc[indices]
    return values.relu(), indices


class _TopKReconstruction(torch.autograd.Function):
    """The TopK SAE's mean squared reconstruction error per token, forward and backward in one place.

    The encoder forward is one dense product (the selection); everything else touches only the k selected latents
    per token. The backward shares one grouping of the selected entries by latent between the encoder's and the
    decoder's weight gradients, and when `x` needs no gradient (training on harvested activations), `b_dec`'s
    gradient through the encoder input is -grad(b_enc) @ enc, without the [tokens, d_in] input gradient. The loss
    and every gradient are those of the full-precision SAE on the selected latents.
    """

    @staticmethod
    def forward(ctx, x: Tensor, enc: Tensor, b_enc: Tensor, dec: Tensor, b_dec: Tensor, k: int,
                select_dtype: torch.dtype | None):
        centred = x - b_dec
        values, indices = _select(centred, enc, b_enc, k, select_dtype)
        recon = F.embedding_bag(indices, dec, per_sample_weights=values, mode="sum") + b_dec
        error = recon - x
        loss = error.pow(2).sum(-1).mean()
        ctx.save_for_backward(centred, enc, dec, values, indices, error)
        ctx.mark_non_differentiable(values, indices, recon)
        return loss, values, indices, recon

    @staticmethod
    def backward(ctx, grad_loss: Tensor, *_unused):
        centred, enc, dec, values, indices, error = ctx.saved_tensors
        needs_x, needs_enc, needs_b_enc, needs_dec, needs_b_dec = ctx.needs_input_grad[:5]
        k = indices.shape[1]
        grad_recon = error * (2.0 * grad_loss / error.shape[0])
        order, offsets = _by_latent(indices, enc.shape[0])
        grad_x = grad_enc = grad_b_enc = grad_dec = grad_b_dec = None
        if needs_dec:
            grad_dec = _scatter_rows(order, offsets, k, values, grad_recon)
        grad = _sampled_products(indices, grad_recon, dec) * (values > 0)  # through the relu of the selected values
        if needs_enc:
            grad_enc = _scatter_rows(order, offsets, k, grad, centred)
        per_latent = torch.zeros(enc.shape[0], dtype=grad.dtype, device=grad.device)
        per_latent.index_add_(0, indices.reshape(-1), grad.reshape(-1))
        if needs_b_enc:
            grad_b_enc = per_latent
        if needs_x:
            grad_centred = F.embedding_bag(indices, enc, per_sample_weights=grad, mode="sum")
            grad_x = grad_centred - grad_recon
        if needs_b_dec:  # + through recon, - through the centred input: sum over tokens of grad_centred
            grad_b_dec = grad_recon.sum(0) - per_latent @ enc
        return grad_x, grad_enc, grad_b_enc, grad_dec, grad_b_dec, None, None


def reconstruction_loss(
    x: Tensor, enc: Tensor, b_enc: Tensor, dec: Tensor, b_dec: Tensor, k: int, select_dtype: torch.dtype | None = None
):
    """Sum of squared errors per token, averaged over tokens; also returns (values, indices, recon), which carry
    no gradient (the top-k latents with `b_dec` subtracted first, as in sparsify and SAELens' TopK)."""
    return _TopKReconstruction.apply(x, enc, b_enc, dec, b_dec, k, select_dtype)


def fast_select_dtype(device: torch.device) -> torch.dtype | None:
    """bfloat16 where the hardware multiplies it natively (CUDA; CPUs with AMX or AVX512-BF16), else None."""
    if device.type == "cuda":
        return torch.bfloat16
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return None
    return torch.bfloat16 if ("amx_bf16" in flags or "avx512_bf16" in flags) else None


@torch.no_grad()
def project_out_parallel_grad(dec: Tensor) -> None:
    """Remove from `dec.grad` its component along each (unit-norm) decoder row, which renormalising undoes."""
    if dec.grad is not None:
        parallel = (dec.grad * dec).sum(-1, keepdim=True)
        dec.grad.sub_(parallel * dec)


@torch.no_grad()
def normalize_rows(dec: Tensor, eps: float = 1e-8) -> None:
    """Scale each decoder row to unit norm, in place."""
    dec.div_(dec.norm(dim=-1, keepdim=True).clamp_min(eps))
