"""The fast path of TopK SAE training: a fused encoder whose backward pass touches only the k selected latents.

A dense TopK SAE step costs six large matmuls (encoder and decoder, forward and two backward each). Here the
encoder forward stays one dense matmul, but its backward and the whole decoder are sparse gathers and
scatter-adds over the k active latents per token, as in EleutherAI sparsify. Nothing here knows about
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


def _scatter_rows(indices: Tensor, weights: Tensor, dense: Tensor, n_rows: int) -> Tensor:
    """sum over tokens t and slots j of weights[t, j] * dense[t], into row indices[t, j] of an [n_rows, d] result.

    This is S.T @ dense for the sparse [tokens, n_rows] matrix S with k entries per token: the weight
    gradient of both encoder and decoder. An uncoalesced COO product never materialises the k copies.
    """
    n_tokens, k = indices.shape
    tokens = torch.arange(n_tokens, device=indices.device).repeat_interleave(k)
    sparse = torch.sparse_coo_tensor(
        torch.stack([indices.reshape(-1), tokens]), weights.reshape(-1), (n_rows, n_tokens), check_invariants=False
    )
    return torch.sparse.mm(sparse, dense)


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


class _FusedTopKEncode(torch.autograd.Function):
    """relu(topk(x @ enc.T + b_enc)) returning (values, indices); backward only over the selected latents.

    With `select_dtype` bfloat16 the dense product that *selects* the k latents runs in bf16 (AMX/tensor
    cores, about 3x faster), and the k selected values are then recomputed exactly in the input's dtype; the
    loss and every gradient are those of the full-precision SAE on the selected latents.
    """

    @staticmethod
    def forward(ctx, x: Tensor, enc: Tensor, b_enc: Tensor, k: int, select_dtype: torch.dtype | None):
        if select_dtype is None or select_dtype == x.dtype:
            values, indices = F.linear(x, enc, b_enc).topk(k, dim=-1, sorted=False)
            indices, order = indices.sort(dim=-1)  # ascending latent ids per token: a valid CSR row pattern
            values = values.gather(-1, order)
        else:
            pre = F.linear(x.to(select_dtype), enc.to(select_dtype), b_enc.to(select_dtype))
            indices = pre.topk(k, dim=-1, sorted=False).indices.sort(dim=-1).values
            values = _sampled_products(indices, x, enc) + b_enc[indices]
        values = values.relu()
        ctx.save_for_backward(x, enc, values, indices)
        ctx.mark_non_differentiable(indices)
        return values, indices

    @staticmethod
    def backward(ctx, grad_values: Tensor, _grad_indices: Tensor | None):
        x, enc, values, indices = ctx.saved_tensors
        grad = grad_values * (values > 0)
        grad_x = grad_enc = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = F.embedding_bag(indices, enc, per_sample_weights=grad, mode="sum")
        if ctx.needs_input_grad[1]:
            grad_enc = _scatter_rows(indices, grad, x, enc.shape[0])
        if ctx.needs_input_grad[2]:
            grad_b = torch.zeros(enc.shape[0], dtype=grad.dtype, device=grad.device)
            grad_b.index_add_(0, indices.reshape(-1), grad.reshape(-1))
        return grad_x, grad_enc, grad_b, None, None


class _SparseDecode(torch.autograd.Function):
    """sum_j values[:, j] * dec[indices[:, j]]; backward as gathers and one sparse product."""

    @staticmethod
    def forward(ctx, values: Tensor, indices: Tensor, dec: Tensor) -> Tensor:
        ctx.save_for_backward(values, indices, dec)
        return F.embedding_bag(indices, dec, per_sample_weights=values, mode="sum")

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        values, indices, dec = ctx.saved_tensors
        grad_values = grad_dec = None
        if ctx.needs_input_grad[0]:
            grad_values = _sampled_products(indices, grad_out, dec)
        if ctx.needs_input_grad[2]:
            grad_dec = _scatter_rows(indices, values, grad_out, dec.shape[0])
        return grad_values, None, grad_dec


def topk_encode(
    x: Tensor, enc: Tensor, b_enc: Tensor, b_dec: Tensor, k: int, select_dtype: torch.dtype | None = None
) -> tuple[Tensor, Tensor]:
    """Top-k latent (values, indices) of `x`, with `b_dec` subtracted first (sparsify's and SAELens' TopK)."""
    return _FusedTopKEncode.apply(x - b_dec, enc, b_enc, k, select_dtype)


def topk_decode(values: Tensor, indices: Tensor, dec: Tensor, b_dec: Tensor) -> Tensor:
    """Sum of the selected decoder rows weighted by their values, plus `b_dec` (sparse forward and backward)."""
    return _SparseDecode.apply(values, indices, dec) + b_dec


def reconstruction_loss(
    x: Tensor, enc: Tensor, b_enc: Tensor, dec: Tensor, b_dec: Tensor, k: int, select_dtype: torch.dtype | None = None
):
    """Sum of squared errors per token, averaged over tokens; also returns (values, indices, recon)."""
    values, indices = topk_encode(x, enc, b_enc, b_dec, k, select_dtype)
    recon = topk_decode(values, indices, dec, b_dec)
    loss = (recon - x).pow(2).sum(-1).mean()
    return loss, values, indices, recon


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
