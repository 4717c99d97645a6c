"""Signum: sign of a momentum average, the SAE optimizer of the paper's Appendix A (sparsify's default)."""

from __future__ import annotations

import torch


class Signum(torch.optim.Optimizer):
    """p <- p - lr * sign(m), m <- momentum * m + (1 - momentum) * grad; momentum 0 is signSGD."""

    def __init__(self, params, lr: float = 2.5e-4, momentum: float = 0.9):
        if lr <= 0 or not 0 <= momentum < 1:
            raise ValueError(f"Signum needs lr > 0 and 0 <= momentum < 1, got lr={lr}, momentum={momentum}")
        super().__init__(params, {"lr": lr, "momentum": momentum})

    @torch.no_grad()
    def step(self, closure=None):
        """One update of every parameter that has a gradient."""
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is None:
                    continue
                if group["momentum"]:
                    state = self.state[param]
                    if "momentum" not in state:
                        state["momentum"] = torch.zeros_like(param)
                    buf = state["momentum"].mul_(group["momentum"]).add_(param.grad, alpha=1 - group["momentum"])
                else:
                    buf = param.grad
                param.add_(buf.sign(), alpha=-group["lr"])
