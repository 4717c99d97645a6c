"""Worked solutions (`data.traces`), the trace template and trace columns: every step of every trace is checked by
an independent reading of its arithmetic."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re

import pytest
import torch

from resa_interp.data import (
    TEMPLATES,
    TRACE_KINDS,
    dataset_fingerprint,
    elicitation_prompt,
    format_trigger,
    load_qa,
    synthetic_qa,
    traced_qa,
)
from resa_interp.errors import ResaError
from resa_interp.sae import SAETrainConfig

STEP = re.compile(r"(\d+) ([+*]) (\d+)(?: \+ (\d+))? = (\d+), write (\d+)(?:, carry (\d+))?\.")


def _check_columns(example) -> None:
    a, op, b = re.fullmatch(r"What is (\d+) ([+*]) (\d+)\?", example.problem).groups()
    steps = STEP.findall(example.trace)
    assert len(steps) == 3
    carry, digits = 0, []
    for i, (x, step_op, y, carried, value, written, carry_out) in enumerate(steps):
        assert step_op == op and int(carried or 0) == carry
        expected = (int(x) + int(y) if op == "+" else int(x) * int(y)) + carry
        assert int(value) == expected
        last = i == 2
        assert int(written) == (expected if last else expected % 10)
        carry = 0 if last else expected // 10
        assert int(carry_out or 0) == carry
        digits.append(written)
    total = int("".join(reversed(digits)))
    assert total == (int(a) + int(b) if op == "+" else int(a) * int(b)) == int(example.answer)
    assert example.trace.endswith(f"So {a} {op} {b} = {example.answer}.")


def test_every_trace_step_is_right():
    examples = traced_qa(300, seed=5)
    assert [e.problem.split()[0] for e in examples[:3]] == ["What", "What", "Find"]
    carries = 0
    for example in examples:
        if example.problem.startswith("Find"):
            a, b, c = map(int, re.fullmatch(r"Find x if (\d+)x \+ (\d+) = (\d+)\.", example.problem).groups())
            x = int(example.answer)
            assert a * x + b == c
            assert example.trace == (f"Subtract {b} from both sides: {a}x = {c} - {b} = {c - b}. "
                                     f"Divide both sides by {a}: x = {c - b} / {a} = {x}.")
        else:
            _check_columns(example)
            carries += "carry" in example.trace
    assert carries > 100  # most column problems carry, which is the skill


def test_traced_qa_is_seeded_and_apart_from_the_synthetic_set():
    assert traced_qa(30, seed=1) == traced_qa(30, seed=1) != traced_qa(30, seed=2)
    assert len(TRACE_KINDS) == 3
    assert not {e.problem for e in traced_qa(2000)} & {e.problem for e in synthetic_qa(2000)}


def test_the_trace_template_puts_the_trace_inside_think():
    e = traced_qa(1, seed=0)[0]
    text = format_trigger(e.problem, e.answer, "r1-trace", e.trace)
    assert f"<think> {e.trace} </think>\n<answer> Answer: {e.answer}</answer>" in text
    # the CoT-free text and the trace text share the elicitation prompt, the part a model is given
    prompt = elicitation_prompt(e.problem)
    assert text.startswith(prompt) and format_trigger(e.problem, e.answer).startswith(prompt)
    assert prompt.endswith("<think>") and text[len(prompt):] == TEMPLATES["r1-trace"].split("<think>")[-1].format(
        trace=e.trace, answer=e.answer)
    with pytest.raises(ResaError, match="has none; give data with a trace column"):
        format_trigger(e.problem, e.answer, "r1-trace")


def test_trace_columns_are_read_and_fingerprinted(tmp_path):
    rows = [{"question": e.problem, "answer": e.answer, "reasoning": e.trace} for e in traced_qa(4, seed=3)]
    path = tmp_path / "t.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    loaded = load_qa(str(path))
    assert [(e.problem, e.answer, e.trace) for e in loaded] == [tuple(r.values()) for r in rows]
    assert load_qa("traces", limit=4, seed=3) == traced_qa(4, seed=3)
    bare = [type(e)(e.problem, e.answer) for e in loaded]
    assert dataset_fingerprint("x", bare) != dataset_fingerprint("x", loaded)
    with pytest.raises(ResaError, match="trace column 'steps' does not exist"):
        load_qa(str(path), trace_column="steps")


def test_stage_one_refuses_the_trace_template():
    with pytest.raises(ResaError, match="r1-trace"):
        SAETrainConfig(template="r1-trace").check()


def test_completions_end_at_their_first_stop_string(tiny_qwen2):
    from pathlib import Path

    from resa_interp.evaluation import EvalConfig
    from resa_interp.evaluation.backends import load_local_model, sample_completions

    config = EvalConfig(temperature=0.0, max_new_tokens=24, batch_size=4, device="cpu", dtype="float32")
    local = load_local_model(Path(tiny_qwen2), config)
    ids = [local.tokenizer(text)["input_ids"] for text in ("What is 2 + 3?", "Find x if 2x + 1 = 5.", "a b c")]
    free = [g.text for (g,) in sample_completions(Path(tiny_qwen2), local, ids, config)]
    stop = next(ch for text in free for ch in text if ch.strip())  # a character some completion writes
    stopped = sample_completions(Path(tiny_qwen2), local, ids, config, stop_strings=(stop,))
    for text, (generation,) in zip(free, stopped):
        if stop in text:  # greedy: the same text, cut just after the stop string's first occurrence
            assert generation.text == text[: text.index(stop) + len(stop)] and not generation.truncated
        else:
            assert generation.text == text
    assert any(stop in text for text in free)


def test_a_cached_prompt_prefix_gives_every_prompt_its_own_greedy_scores(tiny_qwen2):
    """Prompts that share a prefix, batched with that prefix's cache and the padding after it, get the tokens and
    next-token scores of each prompt generated alone without any cache (within float32 rounding)."""
    from pathlib import Path

    from resa_interp.evaluation import EvalConfig
    from resa_interp.evaluation.backends import PromptPrefix, load_local_model

    local = load_local_model(Path(tiny_qwen2), EvalConfig(device="cpu", dtype="float32"))
    model, tokenizer = local.model, local.tokenizer
    head = "You are a careful assistant. Think first, then answer.\nQuestion: "
    ids = [tokenizer(head + q)["input_ids"] for q in ("What is 2 + 3?", "Find x if 2x + 1 = 5, then add 7.", "a b")]
    prefix = PromptPrefix.of(model, ids, local.device)
    assert prefix.length == len(os.path.commonprefix(ids)) >= 8
    settings = {"max_new_tokens": 4, "do_sample": False, "output_scores": True, "return_dict_in_generate": True,
                "pad_token_id": 0}
    with torch.no_grad():
        batched = model.generate(**prefix.batch(ids, 0, local.device), **settings)
        for row, x in enumerate(ids):
            alone = model.generate(input_ids=torch.tensor([x]), attention_mask=torch.ones(1, len(x), dtype=torch.long),
                                   **settings)
            width = batched.sequences.shape[1] - 4
            assert batched.sequences[row, width:].tolist() == alone.sequences[0, len(x):].tolist()
            for step in range(4):
                torch.testing.assert_close(batched.scores[step][row], alone.scores[step][0], atol=1e-4, rtol=1e-4)
    assert PromptPrefix.of(model, [ids[0][:1], ids[1]], local.device).length == 0  # one shared token: no cache


@pytest.mark.parametrize("template", ["r1", "chat"])
def test_elicited_texts_are_the_prompt_and_a_seeded_sample(tiny_qwen2, template):
    """The model's own text for the ReasonScore comparison: each problem's prompt (the elicitation prompt, or the
    problem as the chat template's user turn) followed by what the model sampled, the same texts for the same seed
    and other texts for another."""
    from transformers import AutoTokenizer

    from resa_interp.data import elicitation_prompt
    from resa_interp.evaluation.elicited import TEXT_SAMPLING, elicited_texts
    from resa_interp.evaluation.tasks import chat_prompt

    problems = ["What is 2 + 3?", "Find x if 2x + 1 = 5.", "What is 7 * 6?", "Name a prime above 10."]
    sampling = functools.partial(dataclasses.replace, TEXT_SAMPLING, max_new_tokens=40, batch_size=3, temperature=1.0)
    first, again, other = (elicited_texts(tiny_qwen2, problems, template, sampling(seed=s)) for s in (0, 0, 1))
    assert first == again and first != other
    tokenizer = AutoTokenizer.from_pretrained(tiny_qwen2)
    for problem, text in zip(problems, first):
        prompt = chat_prompt(tokenizer, problem) if template == "chat" else elicitation_prompt(problem)
        assert text.startswith(prompt) and len(text) > len(prompt)
