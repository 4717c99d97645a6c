"""Stage I's trigger data: CoT-free texts (question and final answer in the template), shuffled, split into
training and held-out texts, and tokenised (the training texts packed with `pack`)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from resa_interp.data import SYNTHETIC, dataset_fingerprint, format_trigger, load_qa
from resa_interp.errors import ResaError
from resa_interp.model import EncodedText, Subject, encode_packed, encode_texts, shared_prefix_length
from resa_interp.sae.config import SAETrainConfig


@dataclass(frozen=True)
class TriggerData:
    """Tokenised trigger texts for training and held-out evaluation, with a fingerprint of what was used."""

    train: list[EncodedText]
    heldout: list[EncodedText]
    fingerprint: str
    n_examples: int
    prefix_len: int
    """Tokens every training text starts with (the system prompt): run once, not once per text (0 when packed)."""


def trigger_data(cfg: SAETrainConfig, subject: Subject) -> TriggerData:
    """Load the QA data, write it in the CoT-free template, split off the held-out examples, tokenise (the
    training texts packed into chunks with `cfg.pack`)."""
    if cfg.dataset == SYNTHETIC:
        # ~110-150 tokens per example with the R1 template; generate enough for the budget
        need = cfg.n_examples or (math.ceil((cfg.tokens or 100_000) / 60) + cfg.heldout)
        examples = load_qa(SYNTHETIC, limit=need, seed=cfg.seed)
    else:
        examples = load_qa(
            cfg.dataset,
            problem_column=cfg.problem_column,
            answer_column=cfg.answer_column,
            limit=cfg.n_examples,
        )
    if len(examples) <= cfg.heldout:
        raise ResaError(f"dataset {cfg.dataset!r}: {len(examples)} examples, but {cfg.heldout} are held out")
    order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(cfg.seed)).tolist()
    shuffled = [examples[i] for i in order]
    texts = [format_trigger(e.problem, e.answer, cfg.template) for e in shuffled]
    encode = encode_packed if cfg.pack else encode_texts
    train = encode(subject.tokenizer, texts[cfg.heldout :], cfg.max_seq_len)
    return TriggerData(
        train=train,
        heldout=encode_texts(subject.tokenizer, texts[: cfg.heldout], cfg.max_seq_len),
        fingerprint=dataset_fingerprint(cfg.dataset, examples),
        n_examples=len(examples),
        prefix_len=0 if cfg.pack else shared_prefix_length(train),
    )


def prepends_bos(tokenizer) -> bool:
    """Whether the tokenizer puts its BOS token first when it adds special tokens (SAELens' prepend_bos)."""
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return tokenizer.bos_token_id is not None and bool(ids) and ids[0] == tokenizer.bos_token_id
