"""The continuous score beside Pass@1: the log-probability a model gives the gold answer, teacher-forced.

Pass@1 of a small model is 0 on every layer of a sweep, which leaves nothing to compare. The log-probability of
the gold answer varies continuously with the weights: after the task's chat prompt, the assistant's turn is
given the answer line the prompt asks for (`Therefore, the final answer is: $\\boxed{` for math,
`Answer:` for multiple choice) and the model is scored on the gold answer's tokens that follow (the answer and
the closing brace for math, ` X` for a letter). Context and answer are tokenized separately and joined (as
lm-evaluation-harness does), so the answer's tokens are the same whatever precedes them.

Per problem: the sum of the answer tokens' log-probabilities (log P(answer | prompt)) and their number. A task's
score is the mean over problems of the per-token mean (`gold_logprob`, nats per token; length-normalised, so
tasks with long answers do not dominate an average over tasks), with the mean over problems of the sum
(`gold_logprob_sum`, nats per answer) recorded beside it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from resa_interp.data import final_answer
from resa_interp.errors import ResaError
from resa_interp.evaluation.backends import split_by_task
from resa_interp.evaluation.tasks import EvalProblem, EvalTask

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

MATH_ANSWER_PREFIX = "Therefore, the final answer is: $\\boxed{"
"""The start of the answer line the math prompt asks for; the gold answer and `}` follow it."""
CHOICE_ANSWER_PREFIX = "Answer:"
"""The start of the answer line the multiple-choice prompt asks for; ` LETTER` follows it."""


@dataclass(frozen=True)
class AnswerLikelihood:
    """How likely a model finds one gold answer after its prompt."""

    logprob_sum: float
    """Sum over the answer's tokens of log p(token | everything before it), in nats: log P(answer | prompt)."""
    n_tokens: int
    """Tokens of the answer."""

    @property
    def logprob_mean(self) -> float:
        """Mean log-probability per answer token, in nats."""
        return self.logprob_sum / self.n_tokens


def answer_texts(prompt: str, problem: EvalProblem, grading: str) -> tuple[str, str]:
    """The teacher-forced context (the chat prompt, then the answer line's start) and the gold answer scored
    after it (a math gold's final answer, its last `\\boxed{}` content, closed by `}`; or ` LETTER`)."""
    if grading == "choice":
        return prompt + CHOICE_ANSWER_PREFIX, f" {problem.gold}"
    return prompt + MATH_ANSWER_PREFIX, final_answer(problem.gold) + "}"


def answer_likelihoods(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, pairs: list[tuple[str, str]], batch_size: int = 8
) -> list[AnswerLikelihood]:
    """For each (context, answer): the log-probabilities of the answer's tokens after the context, teacher-forced
    in right-padded batches on the model's device."""
    encoded = []
    for context, answer in pairs:
        context_ids = tokenizer(context, add_special_tokens=False)["input_ids"]
        answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
        if not context_ids or not answer_ids:
            raise ResaError(f"answer {answer!r}: the context or the answer tokenizes to nothing; nothing to score")
        encoded.append((context_ids, answer_ids))
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    results = []
    for start in range(0, len(encoded), batch_size):
        batch = [c + a for c, a in encoded[start : start + batch_size]]
        width = max(map(len, batch))
        ids = torch.tensor([row + [pad] * (width - len(row)) for row in batch], device=device)
        mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in batch], device=device)
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask).logits
        for row, (context_ids, answer_ids) in enumerate(encoded[start : start + batch_size]):
            # the logits at position t predict token t + 1; only the answer's positions are normalised
            first = len(context_ids) - 1
            logprobs = logits[row, first : first + len(answer_ids)].float().log_softmax(-1)
            picked = logprobs.gather(-1, torch.tensor(answer_ids, device=device)[:, None])
            results.append(AnswerLikelihood(float(picked.sum()), len(answer_ids)))
    return results


def gold_likelihoods(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, tasks: list[EvalTask], prompts: list[list[str]],
    batch_size: int = 8,
) -> list[list[AnswerLikelihood]]:
    """Per task and problem, the gold answer's likelihood after that problem's prompt (`prompts` as a backend
    returned them, one list per task)."""
    pairs = [
        answer_texts(prompt, problem, task.grading)
        for task, task_prompts in zip(tasks, prompts)
        for problem, prompt in zip(task.problems, task_prompts)
    ]
    return split_by_task(answer_likelihoods(model, tokenizer, pairs, batch_size), tasks)
