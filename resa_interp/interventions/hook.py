"""The intervention hook: SAE latents edited inside a running HF model, the SAE's error term kept.

At each edited hookpoint the activation x becomes x' = x + (decode(f') - decode(f)), with f = encode(x) and f'
equal to f except for the chosen latents, which are ablated (set to 0), clamped (set to a value) or scaled
(multiplied by a value). The SAE's reconstruction error x - decode(f) is left in place, so nothing changes but
the chosen latents: with scale 1 (or no latents) x' equals x exactly and so do the logits. Positions before
`keep_first` (the sink position 0, which Stage I never trains on) keep their clean activation, counted in
absolute positions, so a KV-cached generation step edits its new token.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from resa_interp.errors import ResaError, check_choice
from resa_interp.model import decoder_layers, rewrite_at, splice_point

if TYPE_CHECKING:
    from sae_lens import SAE

MODES = ("ablate", "clamp", "scale")


@dataclass(frozen=True)
class LatentEdit:
    """Which latents of one SAE change, and how."""

    latents: tuple[int, ...]
    """Latent ids to edit."""
    mode: str = "ablate"
    """'ablate' (set to 0), 'clamp' (set to `value` at every edited position) or 'scale' (multiply by `value`)."""
    value: float = 0.0
    """The clamp value or the scale factor (ignored by 'ablate')."""

    def check(self, d_sae: int) -> None:
        """One-line errors for a mode no edit has or a latent id the SAE does not have."""
        check_choice("--mode", self.mode, MODES)
        bad = [i for i in self.latents if not 0 <= i < d_sae]
        if bad:
            raise ResaError(f"latent {bad[0]}: the SAE has {d_sae} latents (ids 0..{d_sae - 1})")


def edit_latents(f: Tensor, edit: LatentEdit) -> Tensor:
    """f with the edit applied to the chosen latents (last dimension), the others untouched."""
    out = f.clone()
    idx = list(edit.latents)
    if edit.mode == "ablate":
        out[..., idx] = 0.0
    elif edit.mode == "clamp":
        out[..., idx] = edit.value
    else:
        out[..., idx] = f[..., idx] * edit.value
    return out


def residual_delta(sae: SAE, x: Tensor, edit: LatentEdit) -> Tensor:
    """decode(f') - decode(f) for activations x [..., d_in]: what the edit adds to the activation."""
    f = sae.encode(x)
    return sae.decode(edit_latents(f, edit)) - sae.decode(f)


class Intervention:
    """Context manager: within it, `model` runs with `edits` (layer -> LatentEdit) applied through `saes`
    (layer -> SAE) at hookpoint kind `hook`; positions below `keep_first` stay clean."""

    def __init__(self, model: nn.Module, hook: str, saes: Mapping[int, SAE], edits: Mapping[int, LatentEdit],
                 keep_first: int = 1):
        missing = sorted(set(edits) - set(saes))
        if missing:
            raise ResaError(f"no SAE for layer(s) {missing} to edit latents through")
        for layer, edit in edits.items():
            edit.check(saes[layer].cfg.d_sae)
        self.model, self.hook, self.saes, self.edits, self.keep_first = model, hook, saes, dict(edits), keep_first
        self._positions: dict[int, Tensor | None] = {}
        self._handles: list = []

    def _record_positions(self, layer: int):
        def pre_hook(_module, _args, kwargs):
            self._positions[layer] = kwargs.get("position_ids")

        return pre_hook

    def _edit(self, layer: int):
        sae, edit = self.saes[layer], self.edits[layer]

        def edit_at(hidden: Tensor) -> Tensor:
            positions = self._positions.get(layer)
            if positions is None:  # an architecture that passes no position ids: a full pass from position 0
                positions = torch.arange(hidden.shape[1], device=hidden.device)
            keep = (positions.to(hidden.device) >= self.keep_first).reshape(-1, hidden.shape[1], 1)
            delta = residual_delta(sae, hidden.to(sae.dtype), edit).to(hidden.dtype)
            return hidden + torch.where(keep, delta, torch.zeros_like(delta))

        return edit_at

    def __enter__(self) -> Intervention:
        layers = decoder_layers(self.model)
        for layer in self.edits:
            self._handles.append(layers[layer].register_forward_pre_hook(self._record_positions(layer),
                                                                        with_kwargs=True))
            self._handles.append(rewrite_at(splice_point(self.model, self.hook, layer), self._edit(layer)))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles, self._positions = [], {}

