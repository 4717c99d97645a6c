"""What both evaluation backends share (generation records, the context-length rule, end-of-sequence tokens)
and the local backend: batched sampling with transformers, on CPU or one GPU.

The local backend gives a model exactly what the vLLM path gives it: the chat template around the task's query,
tokenized without extra special tokens (the template carries them), then temperature/top-p sampling with no
top-k and no repetition penalty, until an end-of-sequence token or `max_new_tokens`. A generation that reaches
`max_new_tokens` without an end-of-sequence token is marked truncated.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from tqdm.auto import tqdm

from resa_interp.errors import ResaError
from resa_interp.evaluation.config import EvalConfig
from resa_interp.evaluation.decoding import greedy_decode
from resa_interp.evaluation.tasks import EvalTask, chat_prompt
from resa_interp.model import resolve_device, resolve_dtype

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass(frozen=True)
class Generation:
    """One sampled completion."""

    text: str
    n_tokens: int
    """Tokens generated, the end-of-sequence token included."""
    truncated: bool
    """True when generation stopped at max_new_tokens without an end-of-sequence token."""


@dataclass(frozen=True)
class BackendRun:
    """What a backend returns, per task and problem: the prompt text it used and `samples` generations."""

    prompts: list[list[str]]
    generations: list[list[list[Generation]]]
    device: str
    reference_scores: dict[str, float] = field(default_factory=dict)
    """Per task, the pass@1 lighteval computed itself (vLLM path only), to cross-check the grader here."""


def model_context(model_path: Path) -> int | None:
    """The model's context length from its config.json (`max_position_embeddings`), if it states one."""
    config = json.loads((Path(model_path) / "config.json").read_text())
    value = config.get("text_config", config).get("max_position_embeddings")
    return int(value) if value else None


def required_length(prompt_tokens: list[int], max_new_tokens: int, context: int | None, model: str) -> int:
    """Positions a sequence may need (longest prompt + max_new_tokens); a one-line error if the model lacks them.

    Nothing is ever cut to fit: lighteval would otherwise cut the prompt from the left to make room.
    """
    longest = max(prompt_tokens)
    needed = longest + max_new_tokens
    if context is not None and needed > context:
        raise ResaError(
            f"--max-new-tokens {max_new_tokens}: the longest prompt has {longest} tokens, so a generation needs "
            f"{needed} positions, but model {model} holds {context}; use --max-new-tokens {context - longest} or less"
        )
    return needed


def prompt_token_ids(tokenizer: PreTrainedTokenizerBase, tasks: list[EvalTask]) -> tuple[list[str], list[list[int]]]:
    """Every problem's chat prompt (tasks in order) and its token ids, as both backends send them."""
    prompts = [chat_prompt(tokenizer, problem.query) for task in tasks for problem in task.problems]
    return prompts, [tokenizer(prompt, add_special_tokens=False)["input_ids"] for prompt in prompts]


def eos_token_ids(model_path: Path, tokenizer: PreTrainedTokenizerBase) -> set[int]:
    """Every token that ends a generation: the tokenizer's EOS and the generation config's (where vLLM stops)."""
    from transformers import AutoConfig, GenerationConfig

    try:
        ids = GenerationConfig.from_pretrained(model_path).eos_token_id
    except OSError:  # no generation_config.json: derive it from the model config
        ids = GenerationConfig.from_model_config(AutoConfig.from_pretrained(model_path)).eos_token_id
    ids = set(ids if isinstance(ids, list) else [] if ids is None else [ids])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    if not ids:
        raise ResaError(f"model {model_path} defines no end-of-sequence token, so every generation would be truncated")
    return ids


def is_truncated(tokens: list[int], eos: set[int], max_new_tokens: int) -> bool:
    """A generation is truncated when it used all max_new_tokens and none of them ends the sequence."""
    return len(tokens) >= max_new_tokens and not eos.intersection(tokens)


def split_by_task(flat: list, tasks: list[EvalTask]) -> list[list]:
    """Regroup a list over all problems (tasks in order) into one list per task."""
    groups, start = [], 0
    for task in tasks:
        groups.append(flat[start : start + len(task.problems)])
        start += len(task.problems)
    return groups


def device_description(device: torch.device) -> str:
    """'cpu (N threads)' or 'cuda:0 (GPU name)', for scores.json."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} thread(s))"


@contextlib.contextmanager
def _loading(model_path: Path) -> Iterator[None]:
    try:
        yield
    except (OSError, ValueError, KeyError) as exc:
        raise ResaError(f"model {model_path}: transformers could not load it ({exc})") from exc


@dataclass(frozen=True)
class LocalModel:
    """An HF model loaded for evaluation (in eval mode, on its device) and its tokenizer."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    device: torch.device


def load_local_model(model_path: Path, config: EvalConfig) -> LocalModel:
    """The model at `model_path` with transformers, on `config.device` in `config.dtype` (None: bfloat16 on GPU,
    float32 on CPU)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = resolve_device(config.device)
    dtype = resolve_dtype(config.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    with _loading(model_path):
        tokenizer = AutoTokenizer.from_pretrained(model_path)
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype).to(device).eval()
    return LocalModel(model, tokenizer, device)


def generate_transformers(model_path: Path, local: LocalModel, tasks: list[EvalTask], config: EvalConfig) -> BackendRun:
    """Sample `config.samples` completions per problem with transformers (padded batches, seeded per batch)
    from `local`, the model at `model_path`."""
    prompts, ids = prompt_token_ids(local.tokenizer, tasks)
    generations = sample_completions(model_path, local, ids, config)
    return BackendRun(
        prompts=split_by_task(prompts, tasks),
        generations=split_by_task(generations, tasks),
        device=device_description(local.device),
    )


@dataclass(frozen=True)
class PromptPrefix:
    """The token prefix every prompt shares (a system prompt, a chat template's head) and the model's key/value
    cache of it, computed once: each batch then runs only its prompts' own tokens before generating. Attention over
    the cached keys is the same computation as over recomputed ones (positions count from the attention mask, so
    the padding after the prefix shifts nothing)."""

    length: int
    """Tokens of the shared prefix that are cached (0: none; at least one token of every prompt is left to run)."""
    cache: Any = None
    keyword: str = "cache"
    """The name transformers gives the cache (`cache` from 5.x, `past_key_values` before)."""

    @classmethod
    def of(cls, model: PreTrainedModel, ids: list[list[int]], device: torch.device) -> PromptPrefix:
        """The prefix all of `ids` share and its cache; none when fewer than two tokens are shared or the model's
        cache cannot be repeated over a batch."""
        shortest = min(len(x) for x in ids)
        length = next((i for i in range(shortest) if any(x[i] != ids[0][i] for x in ids)), shortest)
        length = min(length, shortest - 1)
        if length < 2:
            return cls(0)
        with torch.no_grad():
            out = model(input_ids=torch.tensor([ids[0][:length]], device=device), use_cache=True)
        keyword = "cache" if "cache" in out else "past_key_values"
        cache = out[keyword]
        return cls(length, cache, keyword) if hasattr(cache, "batch_repeat_interleave") else cls(0)

    def batch(self, prompts: list[list[int]], pad: int, device: torch.device) -> dict[str, Any]:
        """`generate`'s inputs for `prompts` (each starting with the prefix): rows laid out as [prefix][padding]
        [the prompt's own tokens], their attention mask, and a fresh copy of the cache (generate extends it)."""
        width = max(len(x) for x in prompts)
        n = self.length
        inputs = {
            "input_ids": torch.tensor([x[:n] + [pad] * (width - len(x)) + x[n:] for x in prompts], device=device),
            "attention_mask": torch.tensor([[1] * n + [0] * (width - len(x)) + [1] * (len(x) - n) for x in prompts],
                                           device=device),
        }
        if self.cache is not None:
            cache = copy.deepcopy(self.cache)
            cache.batch_repeat_interleave(len(prompts))
            inputs[self.keyword] = cache
        return inputs


def sample_completions(
    model_path: Path, local: LocalModel, ids: list[list[int]], config: EvalConfig, stop_strings: tuple[str, ...] = ()
) -> list[list[Generation]]:
    """`config.samples` completions of every prompt (token ids) from `local`, the model at `model_path`: batches
    padded after the prompts' shared prefix (`PromptPrefix`, cached once), longest prompts first, seeded per
    batch; greedy at temperature 0, where a row leaves its batch at the step it stops (`greedy_decode`). A
    completion ends at an end-of-sequence token or, when given, just after the first of `stop_strings`."""
    from transformers import EosTokenCriteria, GenerationConfig, StoppingCriteriaList, StopStringCriteria

    model, tokenizer, device = local.model, local.tokenizer, local.device
    required_length([len(x) for x in ids], config.max_new_tokens, model_context(model_path), str(model_path))
    eos = eos_token_ids(model_path, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(eos)
    sampling = config.temperature > 0
    settings = GenerationConfig(
        max_new_tokens=config.max_new_tokens,
        do_sample=True,
        temperature=config.temperature,
        top_p=config.top_p,
        top_k=None,
        pad_token_id=pad,
        eos_token_id=sorted(eos),
        stop_strings=list(stop_strings) or None,
    ) if sampling else None
    # every (prompt, sample) pair is one sequence; longest prompts first so that batches pad little
    items = sorted(((p, s) for p in range(len(ids)) for s in range(config.samples)), key=lambda i: -len(ids[i[0]]))
    stopping = StoppingCriteriaList([EosTokenCriteria(sorted(eos)),
                                     *([StopStringCriteria(tokenizer, list(stop_strings))] if stop_strings else [])])
    prefix = PromptPrefix.of(model, ids, device)
    results: dict[tuple[int, int], Generation] = {}
    with tqdm(total=len(items), desc="generating", unit="seq") as bar:
        for batch_index, start in enumerate(range(0, len(items), config.batch_size)):
            batch = items[start : start + config.batch_size]
            width = max(len(ids[p]) for p, _ in batch)
            inputs = prefix.batch([ids[p] for p, _ in batch], pad, device)
            if sampling:  # generate: the batch's rows draw from one generator, so no row may leave it early
                torch.manual_seed(config.seed + batch_index)
                with torch.no_grad():
                    out = model.generate(**inputs, generation_config=settings,
                                         tokenizer=tokenizer if stop_strings else None)
                rows = out[:, width:].tolist()
            else:
                rows = [d.tokens for d in greedy_decode(model, inputs, config.max_new_tokens, stopping)]
            for item, row in zip(batch, rows):
                stop = next((i + 1 for i, token in enumerate(row) if token in eos), len(row))
                tokens = row[:stop]
                text = tokenizer.decode(tokens, skip_special_tokens=True)
                ended = [text.index(s) + len(s) for s in stop_strings if s in text]
                if ended:  # what follows the stop string is the padding of a sequence that finished early
                    text, tokens = text[: min(ended)], list(itertools.takewhile(lambda token: token != pad, tokens))
                results[item] = Generation(text, len(tokens), not ended and is_truncated(tokens, eos,
                                                                                        config.max_new_tokens))
            bar.update(len(batch))
    return [[results[(p, s)] for s in range(config.samples)] for p in range(len(ids))]
