"""Accuracy in the elicitation format: a model is given a question in a trigger template's own format (the R1
system prompt, the user turn, the assistant's opening `<think>`), decodes greedily until `</answer>` or a blank line,
and the existing grader (`grading.grade`, 'expr') reads the answer after `</think>`. This is the format a transfer
experiment's models are tuned in, where the chat-template evaluation (`evaluate`) asks them something else."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from resa_interp.data import THINK, QAExample, elicitation_prompt
from resa_interp.evaluation.backends import load_local_model, sample_completions
from resa_interp.evaluation.config import EvalConfig
from resa_interp.evaluation.grading import grade, require_grader
from resa_interp.evaluation.tasks import chat_prompt

STOPS = ("</answer>", "\n\n")
"""Where a completion ends: the templates close the answer with `</answer>` (models tuned without EOS go on past
it), and no template's answer holds a blank line, which is where an untuned model starts a new paragraph."""


@dataclass(frozen=True)
class ElicitedAnswer:
    """One problem's greedy completion and verdict."""

    problem: str
    gold: str
    completion: str
    extracted: str | None
    correct: bool
    n_tokens: int


def elicited_answers(
    model: str | Path,
    examples: list[QAExample],
    *,
    template: str = "r1",
    max_new_tokens: int = 96,
    batch_size: int = 32,
    device: str = "cpu",
) -> list[ElicitedAnswer]:
    """Greedy completions of every example's elicitation prompt by the HF model folder `model`, graded against the
    example's answer."""
    require_grader()
    config = EvalConfig(temperature=0.0, samples=1, max_new_tokens=max_new_tokens, batch_size=batch_size,
                        device=device, dtype="float32")
    path = Path(model)
    local = load_local_model(path, config)
    ids = [local.tokenizer(elicitation_prompt(e.problem, template))["input_ids"] for e in examples]
    completions = sample_completions(path, local, ids, config, stop_strings=STOPS)
    out = []
    for example, (generation,) in zip(examples, completions):
        verdict = grade(THINK + generation.text, example.answer, "expr")
        out.append(ElicitedAnswer(example.problem, example.answer, generation.text, verdict.extracted,
                                  verdict.correct, generation.n_tokens))
    return out


TEXT_SAMPLING = EvalConfig(temperature=0.6, top_p=0.95, samples=1, max_new_tokens=256, batch_size=16, device="cpu",
                           dtype="float32")
"""`elicited_texts`' default: the paper's temperature 0.6 and top-p 0.95, up to 256 new tokens, float32 on CPU."""


def elicited_texts(model: str | Path, problems: list[str], template: str = "r1",
                   config: EvalConfig = TEXT_SAMPLING) -> list[str]:
    """The model's own text: each problem's prompt followed by one completion sampled by the HF model folder
    `model` as `config` says (seeded per batch from its seed). `template` 'chat' puts the problem as the user turn
    of the model's chat template, the completion ending at end-of-sequence; an elicitation template ('r1', ...)
    gives its prompt, the completion ending at `</answer>` (not at a blank line, so that a model's reasoning may
    run over paragraphs)."""
    path = Path(model)
    local = load_local_model(path, config)
    chat = template == "chat"
    prompts = [chat_prompt(local.tokenizer, p) if chat else elicitation_prompt(p, template) for p in problems]
    ids = [local.tokenizer(p, add_special_tokens=not chat)["input_ids"] for p in prompts]  # a chat template has its own
    completions = sample_completions(path, local, ids, config, stop_strings=() if chat else STOPS[:1])
    return [prompt + generation.text for prompt, (generation,) in zip(prompts, completions)]


def answers_to_json(answers: list[ElicitedAnswer]) -> list[dict]:
    """Plain dicts, for a condition's answers.json."""
    return [asdict(a) for a in answers]
