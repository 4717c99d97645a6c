"""A run's data: the elicitation texts as token ids (one text, or one packed chunk, per sequence) and the schedule
that says which sequence each process reads at each micro-step, a pure function of the seed."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from resa_interp.data import dataset_fingerprint, format_trigger, load_qa, pack_texts
from resa_interp.tuning.config import TuneConfig


def encode_examples(config: TuneConfig, tokenizer) -> tuple[list[torch.Tensor], str]:
    """Token ids of every elicitation text (truncated to `max_length`), or of every packed chunk with `pack`,
    and the dataset's fingerprint."""
    examples = load_qa(
        config.dataset,
        problem_column=config.problem_column,
        answer_column=config.answer_column,
        trace_column=config.trace_column,
        limit=config.limit,
        seed=config.seed,
    )
    texts = [format_trigger(e.problem, e.answer, config.template, e.trace) for e in examples]
    if config.pack:
        encoded = pack_texts(tokenizer, texts, config.max_length)
    else:
        encoded = tokenizer(texts, add_special_tokens=True, truncation=True, max_length=config.max_length)["input_ids"]
    return [torch.tensor(ids, dtype=torch.long) for ids in encoded], dataset_fingerprint(config.dataset, examples)


@dataclass(frozen=True)
class Schedule:
    """Which example each process reads at each micro-step: a pure function of the seed (resumable)."""

    n_examples: int
    world: int
    grad_accum: int
    total_steps: int
    seed: int
    shuffle: bool

    @property
    def steps_per_epoch(self) -> int:
        """Optimizer steps in one pass over the data (a remainder smaller than one step is dropped)."""
        return self.n_examples // (self.world * self.grad_accum)

    def epoch_of(self, step: int) -> int:
        """Epoch (0-based) that optimizer step `step` (0-based) belongs to."""
        return step // self.steps_per_epoch

    def indices(self, step: int, rank: int) -> list[int]:
        """Example indices of the micro-batches of optimizer step `step` on process `rank`."""
        epoch, within = divmod(step, self.steps_per_epoch)
        if self.shuffle:
            order = torch.randperm(self.n_examples, generator=torch.Generator().manual_seed(self.seed + epoch))
        else:
            order = torch.arange(self.n_examples)
        first = within * self.grad_accum * self.world
        return [int(order[first + m * self.world + rank]) for m in range(self.grad_accum)]
