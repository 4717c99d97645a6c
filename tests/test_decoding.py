"""Greedy decoding that drops finished rows (`evaluation.decoding`): every row's tokens and scores are those of its
prompt generated alone by transformers, without a cache or a batch, whenever the other rows stop."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

STEPS = 10
HEAD = "You are a careful assistant. Think first, then answer.\nQuestion: "
QUESTIONS = ("What is 2 + 3?", "Find x if 2x + 1 = 5, then add 7 to it.", "a b", "What is 17 * 4 + 9?", "x", "Why?")


@pytest.fixture(scope="module")
def tiny(tiny_qwen2):
    from resa_interp.evaluation import EvalConfig
    from resa_interp.evaluation.backends import load_local_model

    local = load_local_model(Path(tiny_qwen2), EvalConfig(device="cpu", dtype="float32"))
    return local.model, [local.tokenizer(HEAD + q)["input_ids"] for q in QUESTIONS]


def _alone(model, prompt: list[int], **settings):
    """The prompt's greedy generation by itself: one row, no prefix cache, transformers' own loop."""
    with torch.no_grad():
        out = model.generate(input_ids=torch.tensor([prompt]), attention_mask=torch.ones_like(torch.tensor([prompt])),
                             max_new_tokens=STEPS, do_sample=False, output_scores=True, return_dict_in_generate=True,
                             pad_token_id=0, **settings)
    return out.sequences[0, len(prompt):].tolist(), torch.stack([s[0] for s in out.scores])


def _stop_token(free: list[list[int]]) -> int:
    """A token the rows first write at different steps (or never), so that they stop at different steps."""
    def first(token: int, row: list[int]) -> int:
        return row.index(token) if token in row else STEPS

    candidates = sorted({t for row in free for t in row[:-1]})
    spread = {t: {first(t, row) for row in free} for t in candidates}
    token = max(candidates, key=lambda t: (len(spread[t]), STEPS in spread[t]))
    assert len(spread[token]) >= 3 and STEPS in spread[token]  # at least two stopping steps, and a row that runs on
    return token


def test_rows_that_stop_early_leave_the_rest_their_own_tokens_and_scores(tiny):
    from transformers import EosTokenCriteria, StoppingCriteriaList

    from resa_interp.evaluation.backends import PromptPrefix
    from resa_interp.evaluation.decoding import greedy_decode

    model, ids = tiny
    free = [_alone(model, x, eos_token_id=None)[0] for x in ids]
    stop = _stop_token(free)
    prefix = PromptPrefix.of(model, ids, torch.device("cpu"))
    assert prefix.length >= 8  # the rows also run after a cached prefix, padded differently
    decoded = greedy_decode(model, prefix.batch(ids, 0, torch.device("cpu")), STEPS,
                            StoppingCriteriaList([EosTokenCriteria(stop)]), keep_scores=True)
    lengths = set()
    for x, row in zip(ids, decoded):
        tokens, scores = _alone(model, x, eos_token_id=stop)
        assert row.tokens == tokens
        torch.testing.assert_close(row.scores, scores, atol=1e-4, rtol=1e-4)
        lengths.add(len(tokens))
    assert len(lengths) >= 3 and STEPS in lengths

