"""The continuous score beside Pass@1: the gold answer's teacher-forced log-probability, checked against the
model's own logits by hand, through an adapter, and as `evaluate` records it."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from resa_interp.evaluation import EvalConfig, evaluate, read_scores
from resa_interp.evaluation.evaluator import SAMPLES
from resa_interp.evaluation.likelihood import (
    CHOICE_ANSWER_PREFIX,
    MATH_ANSWER_PREFIX,
    answer_likelihoods,
    answer_texts,
)
from resa_interp.evaluation.tasks import EvalProblem, load_task

PAIRS = [
    ("Q: what is 2 + 3?\nA:" + MATH_ANSWER_PREFIX, "5}"),
    ("a much longer context that needs padding when batched with the others, " * 3, " 1234 and more}"),
    ("short", " B"),
]
"""Contexts and answers of different lengths, so that a batch of them is padded."""


@pytest.fixture(scope="module")
def tiny(tiny_qwen2):
    model = AutoModelForCausalLM.from_pretrained(tiny_qwen2, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(tiny_qwen2)


def by_hand(model, tokenizer, context: str, answer: str) -> tuple[float, int]:
    """Sum of log_softmax(logits)[t - 1, token t] over the answer's tokens, one unpadded sequence at a time."""
    context_ids = tokenizer(context, add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([context_ids + answer_ids])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(ids).logits[0].double(), dim=-1)
    total = 0.0
    for i, token in enumerate(answer_ids):
        total += float(logprobs[len(context_ids) + i - 1, token])
    return total, len(answer_ids)


def test_the_score_is_the_answer_tokens_log_softmax(tiny):
    model, tokenizer = tiny
    expected = [by_hand(model, tokenizer, c, a) for c, a in PAIRS]
    for batch_size in (1, 3):  # padded batches give what single sequences give
        got = answer_likelihoods(model, tokenizer, PAIRS, batch_size=batch_size)
        assert [g.n_tokens for g in got] == [n for _, n in expected] and all(n >= 1 for _, n in expected)
        for g, (total, n) in zip(got, expected):
            assert g.logprob_sum == pytest.approx(total, abs=1e-4) and g.logprob_sum < 0
            assert g.logprob_mean == pytest.approx(total / n, abs=1e-4)


def test_an_adapter_changes_the_score_and_merging_keeps_it(tiny):
    from peft import LoraConfig, get_peft_model

    model, tokenizer = tiny
    base = answer_likelihoods(model, tokenizer, PAIRS)
    peft = get_peft_model(
        AutoModelForCausalLM.from_pretrained(model.name_or_path, dtype=torch.float32),
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=True),
    ).eval()
    # a fresh LoRA (B = 0) is the identity: the same score
    same = answer_likelihoods(peft, tokenizer, PAIRS)
    assert [s.logprob_sum for s in same] == pytest.approx([b.logprob_sum for b in base], abs=1e-5)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, parameter in peft.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)
    tuned = answer_likelihoods(peft, tokenizer, PAIRS)
    assert all(abs(t.logprob_sum - b.logprob_sum) > 1e-3 for t, b in zip(tuned, base))
    # what the sweep evaluates is the merged model: it scores as the adapter does
    merged = answer_likelihoods(peft.merge_and_unload(), tokenizer, PAIRS)
    assert [m.logprob_sum for m in merged] == pytest.approx([t.logprob_sum for t in tuned], abs=1e-4)


def test_answer_texts_follow_the_prompts_answer_line():
    math = EvalProblem("q", "\\boxed{42}")
    assert answer_texts("P", math, "latex") == ("P" + MATH_ANSWER_PREFIX, "42}")
    solution = EvalProblem("q", "So $x = \\boxed{3}$ first, and finally $\\boxed{\\frac{1}{2}}$.")
    assert answer_texts("P", solution, "latex")[1] == "\\frac{1}{2}}"  # the last boxed answer of a solution
    assert answer_texts("P", EvalProblem("q", "17"), "expr")[1] == "17}"  # AIME-style plain gold
    assert answer_texts("P", EvalProblem("q", "B", 4), "choice") == ("P" + CHOICE_ANSWER_PREFIX, " B")
    # the prefixes are the answer lines the task prompts ask for
    assert "'Therefore, the final answer is: $\\boxed{ANSWER}$" in load_task("synthetic", 1).problems[0].query


def test_evaluate_records_the_score_per_problem_and_task(tmp_path, tiny_qwen2, tiny):
    model, tokenizer = tiny
    config = EvalConfig(backend="transformers", max_new_tokens=4, limit=3, device="cpu", batch_size=2,
                        model=tiny_qwen2, tasks=("synthetic",))
    result = evaluate(config, tmp_path)
    rows = [json.loads(line) for line in (tmp_path / SAMPLES).read_text().splitlines()]
    problems = load_task("synthetic", 3).problems
    expected = [by_hand(model, tokenizer, *answer_texts(r["prompt"], problems[r["problem"]], "latex")) for r in rows]
    for row, (total, n) in zip(rows, expected):
        assert row["gold_logprob_sum"] == pytest.approx(total, abs=1e-4) and row["gold_tokens"] == n
    score = result.tasks["synthetic"]
    assert score.gold_logprob == pytest.approx(sum(t / n for t, n in expected) / 3, abs=1e-4)
    assert score.gold_logprob_sum == pytest.approx(sum(t for t, _ in expected) / 3, abs=1e-4)
    assert (result.gold_logprob, result.gold_logprob_sum) == (score.gold_logprob, score.gold_logprob_sum)
    assert read_scores(tmp_path) == result  # scores.json round-trips the new fields
