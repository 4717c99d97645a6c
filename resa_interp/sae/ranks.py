"""Stage I across launcher ranks (torchrun, accelerate launch): each rank owns some layers' SAEs, every rank runs
the forward pass on its own slice of each batch, and each layer's activations go to the rank that owns it.

Rank r harvests the r-th contiguous slice of a batch's rows (`torch.tensor_split`; the rows keep the whole batch's
padding width) at every layer of the group, then one `all_to_all_single` per batch sends layer L's rows to
`owners[L]`. An owner joins the slices in rank order, which is the single-process order of the rows, so its
shuffle buffers, shuffles and steps are those of one process. The same per-row forward pass gives the same
activations, and the same SAEs, bit for bit (tests/test_distributed.py). Traffic: each rank sends what it
harvested for the layers it does not own, d_model x bytes x layers x (world - 1) / world per token.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from resa_interp.errors import ResaError
from resa_interp.model import Harvester, Prefix, TextBatch
from resa_interp.sae.activations import ModelFeed
from resa_interp.shards import Shard, peers


def layer_owners(layers: list[int], shard: Shard) -> dict[int, int]:
    """Layer -> the rank that trains its SAEs: layers[r::world] to rank r (balanced to within one layer); refused in
    one line when there are more ranks than layers."""
    if shard.count > len(layers):
        raise ResaError(f"train-saes with {shard.count} ranks and {len(layers)} layer(s): each rank trains whole "
                        f"layers, so at most {len(layers)} rank(s); launch fewer ranks or train more --layers")
    return {layer: i % shard.count for i, layer in enumerate(layers)}


def most_per_rank(owners: dict[int, int]) -> int:
    """The most layers any one rank trains (what a rank's memory plan is for)."""
    return max(Counter(owners.values()).values())


@dataclass
class RoutedFeed(ModelFeed):
    """A `ModelFeed` for one rank of several: it harvests its slice of each batch's rows at every layer of
    `layers` and delivers, for the layers it owns, the rows of all ranks (`exchange`)."""

    owners: dict[int, int] = field(default_factory=dict)
    """Layer -> its rank (`layer_owners`)."""
    shard: Shard = field(default_factory=Shard)
    """This rank."""

    @property
    def kept(self) -> list[int]:
        """This rank's layers."""
        return [layer for layer in self.layers if self.owners[layer] == self.shard.index]

    def counted(self, harvest: Harvester, batch: TextBatch, prefix: Prefix | None) -> dict[int, Tensor]:
        """Layer (this rank's) -> the whole batch's counted activations, in the single-process order."""
        slices = torch.tensor_split(torch.arange(batch.input_ids.shape[0]), self.shard.count)
        rows = slices[self.shard.index]
        if len(rows):
            acts = harvest(batch.input_ids[rows], batch.attention_mask[rows], prefix=prefix)
            mask = batch.train_mask[rows].to(self.device)
            mine = {layer: acts[layer][mask] for layer in self.layers}
        else:  # a last batch with fewer rows than ranks
            mine = {layer: torch.empty(0, self.d_model, dtype=self.subject.hf.dtype, device=self.device)
                    for layer in self.layers}
        return exchange(mine, [int(batch.train_mask[part].sum()) for part in slices], self.owners, self.shard)


def exchange(harvested: dict[int, Tensor], counts: list[int], owners: dict[int, int],
             shard: Shard) -> dict[int, Tensor]:
    """One all_to_all: every rank holds its `counts[rank]` rows of each layer in `harvested` (same layers, same
    order on all ranks); each layer's rows go to `owners[layer]`, which gets them joined in rank order."""
    by_rank = [[layer for layer in harvested if owners[layer] == r] for r in range(shard.count)]
    mine = by_rank[shard.index]
    send = torch.cat([harvested[layer] for group in by_rank for layer in group]).contiguous()
    sent = [counts[shard.index] * len(group) for group in by_rank]
    received = [counts[r] * len(mine) for r in range(shard.count)]
    out = send.new_empty((sum(received), send.shape[1]))
    with peers("routing activations to their layers' ranks"):
        dist.all_to_all_single(out, send, output_split_sizes=received, input_split_sizes=sent)
    from_rank = [block.split([counts[r]] * len(mine)) for r, block in enumerate(out.split(received))]
    return {layer: torch.cat([parts[j] for parts in from_rank]) for j, layer in enumerate(mine)}


def gather_objects(value: object, what: str) -> list[object]:
    """Every rank's `value` (small, picklable: counters, finished-layer tables), in rank order."""
    found: list[object] = [None] * dist.get_world_size()
    with peers(what):
        dist.all_gather_object(found, value)
    return found


def to_rank_zero(value: object, shard: Shard, what: str) -> object | None:
    """On rank 0, the one rank's `value` that is not None (every other rank passes None); None on other ranks. One
    gather: what only rank 0 writes (an SAE) travels once, to it alone."""
    found: list[object] | None = [None] * shard.count if shard.index == 0 else None
    with peers(what):
        dist.gather_object(value, found, dst=0)
    return next((v for v in found if v is not None), None) if found is not None else None


def sae_to_rank_zero(sae: Any, shard: Shard, what: str) -> Any:
    """On rank 0, the SAELens SAE that one rank passes (every other rank passes None), on the CPU; None on other
    ranks. It travels as (cfg dict, CPU state dict): the module itself does not pickle."""
    parts = None
    if sae is not None:
        parts = {**sae.cfg.to_dict(), "device": "cpu"}, {key: value.cpu() for key, value in sae.state_dict().items()}
    received = to_rank_zero(parts, shard, what)
    if received is None:
        return None
    from sae_lens import SAE

    sae_obj = SAE.from_dict(received[0])
    sae_obj.load_state_dict(received[1])
    return sae_obj


def barrier(what: str) -> None:
    """Wait for every rank (a failed or silent one ends this one with one line)."""
    with peers(what):
        dist.barrier()
