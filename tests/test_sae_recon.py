"""The spliced reconstruction equals SAELens' own `sae(x)`, in value and in the gradient it passes back."""

from __future__ import annotations

import pytest
import torch

from resa_interp.sae.reconstruction import SAEReconstruction, sparse_topk_eligible


def topk_sae(d_in=24, d_sae=96, k=5, apply_b_dec=True, rescale=False, seed=0):
    from sae_lens import TopKSAE, TopKSAEConfig

    torch.manual_seed(seed)
    sae = TopKSAE(TopKSAEConfig(d_in=d_in, d_sae=d_sae, k=k, apply_b_dec_to_input=apply_b_dec,
                                rescale_acts_by_decoder_norm=rescale))
    with torch.no_grad():
        sae.W_enc.normal_(0, 0.3)
        sae.W_dec.normal_(0, 0.3)  # rows of different norms, so rescaling changes the choice
        sae.b_enc.normal_(0, 0.1)
        sae.b_dec.normal_(0, 0.5)
    return sae.requires_grad_(False)


def value_and_input_grad(fn, x, weight):
    x = x.clone().requires_grad_(True)
    out = fn(x)
    (out * weight).sum().backward()
    return out.detach(), x.grad


@pytest.mark.parametrize("apply_b_dec,rescale", [(True, False), (False, False), (True, True)])
def test_sparse_topk_equals_the_saelens_forward(apply_b_dec, rescale):
    sae = topk_sae(apply_b_dec=apply_b_dec, rescale=rescale)
    recon = SAEReconstruction(sae)
    assert recon.sparse
    g = torch.Generator().manual_seed(1)
    x, weight = torch.randn(2, 7, 24, generator=g), torch.randn(2, 7, 24, generator=g)
    want, want_grad = value_and_input_grad(sae, x, weight)
    got, got_grad = value_and_input_grad(recon, x, weight)
    assert torch.allclose(got, want, atol=1e-5)
    assert torch.allclose(got_grad, want_grad, atol=1e-5)
    assert (got - x).abs().max() > 0.1  # a lossy SAE: the check is not trivially x == x


def test_other_saes_run_their_own_forward_and_mse_is_recorded():
    from sae_lens import StandardSAE, StandardSAEConfig

    sae = StandardSAE(StandardSAEConfig(d_in=8, d_sae=16)).requires_grad_(False)
    recon = SAEReconstruction(sae)
    assert not recon.sparse and not sparse_topk_eligible(sae)
    x = torch.randn(1, 5, 8)
    out = recon(x)
    assert torch.equal(out, sae(x))
    expected = ((out - x)[:, 2:] ** 2).mean()
    assert recon.take_mse(keep_first=2) == pytest.approx(float(expected), rel=1e-6)
    assert recon.seen == []
