"""The paper's evaluation path: lighteval's pipeline on vLLM (GPU).

Each task becomes a lighteval custom task (the authors' way of running their six benchmarks): its problems, as
loaded and prompted by `resa_interp.evaluation.tasks`, are written to a JSONL folder that lighteval reads as a dataset,
and its metric is pass@1 over `samples` generations with the authors' extractive-match grader. lighteval applies
the chat template and asks vLLM for the generations; the model length given to vLLM is the longest prompt plus
max_new_tokens, so lighteval never cuts a prompt to make room (open-r1 issue 310: with
max_model_length = max_new_tokens = 32768 it silently did). Neither lighteval nor vLLM is imported before a run.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import types
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from resa_interp.errors import ResaError
from resa_interp.evaluation.backends import (
    BackendRun,
    Generation,
    eos_token_ids,
    is_truncated,
    model_context,
    prompt_token_ids,
    required_length,
    split_by_task,
)
from resa_interp.evaluation.config import EvalConfig
from resa_interp.evaluation.grading import REASONING_TAGS, extractive_match, grading_doc
from resa_interp.evaluation.tasks import EvalTask
from resa_interp.extras import require_extra
from resa_interp.runs import atomic_write_text

if TYPE_CHECKING:
    from lighteval.metrics.utils.metric_utils import SampleLevelMetric
    from lighteval.models.abstract_model import ModelConfig
    from lighteval.models.vllm.vllm_model import VLLMModelConfig
    from lighteval.tasks.requests import Doc

METRIC = "pass@1"
DATA_SPLIT = "train"


@dataclass(frozen=True)
class LightevalRun:
    """What lighteval's pipeline produced, per task and problem (and per sample inside)."""

    prompt_lengths: list[list[int]]
    """Prompt tokens lighteval sent (vLLM reports them exactly; 0 where the engine reports none)."""
    tokens: list[list[list[list[int]]]]
    """Generated token ids, the end-of-sequence token included."""
    texts: list[list[list[str]]]
    scores: dict[str, float]
    """lighteval's own pass@1 per task name."""


def lighteval_name(task: EvalTask) -> str:
    """The custom task's name in lighteval (prefixed: lighteval's built-in tasks own the paper's names)."""
    return "resa_" + re.sub(r"[^a-z0-9_]+", "_", task.name.lower())


def pass_at_1(grading: str, samples: int) -> SampleLevelMetric:
    """Pass@1 estimated from `samples` generations per problem (the mean verdict), graded as the authors did."""
    import numpy as np
    from lighteval.metrics.metrics_sample import PassAtK
    from lighteval.metrics.utils.metric_utils import SampleLevelMetric
    from lighteval.tasks.requests import SamplingMethod

    return SampleLevelMetric(
        metric_name=METRIC,
        sample_level_fn=PassAtK(k=1, n=samples, sample_scoring_function=extractive_match(grading)),
        category=SamplingMethod.GENERATIVE,
        corpus_level_fn=np.mean,
        higher_is_better=True,
    )


def problem_doc(row: dict[str, Any], task_name: str) -> Doc:
    """lighteval prompt function: one row of a task folder -> the Doc it generates for and grades against."""
    doc = grading_doc(row["gold"], row["grading"], row["n_choices"], query=row["query"])
    doc.task_name = task_name
    return doc


def task_module(tasks: list[EvalTask], data_dir: Path, config: EvalConfig) -> types.ModuleType:
    """A custom-tasks module for lighteval: one task config per task, its problems written under `data_dir`."""
    from lighteval.tasks.lighteval_task import LightevalTaskConfig

    table = []
    for task in tasks:
        folder = data_dir / lighteval_name(task)
        rows = [
            json.dumps({"query": p.query, "gold": p.gold, "grading": task.grading, "n_choices": p.n_choices})
            for p in task.problems
        ]
        atomic_write_text(folder / f"{DATA_SPLIT}.jsonl", "\n".join(rows) + "\n")
        table.append(
            LightevalTaskConfig(
                name=lighteval_name(task),
                prompt_function=problem_doc,
                hf_repo=str(folder),
                hf_subset="default",
                hf_avail_splits=[DATA_SPLIT],
                evaluation_splits=[DATA_SPLIT],
                few_shots_split=None,
                few_shots_select=None,
                generation_size=config.max_new_tokens,
                metrics=[pass_at_1(task.grading, config.samples)],
                stop_sequence=[],  # chat models stop at their end-of-sequence token
                version=1,
            )
        )
    module = types.ModuleType("resa_interp_lighteval_tasks", "resa-interp evaluation tasks")
    module.TASKS_TABLE = table
    return module


@contextlib.contextmanager
def only_these_tasks(module: types.ModuleType) -> Iterator[None]:
    """Within: lighteval's task registry holds only the tasks of `module` (its `TASKS_TABLE`, by name).

    lighteval's `Registry.load_all_task_configs` imports every built-in task module to index them, and one of them
    (tiny_benchmarks) downloads a file from GitHub while being imported, which fails offline; the tasks here are all
    custom, so it needs none. lighteval 0.13 has no option to skip the built-in tasks and `Pipeline` builds its
    `Registry` itself, so that public static method is replaced for the duration (restored on exit), by one that
    returns the configs built here, whatever it is asked.
    """
    from lighteval.tasks.registry import Registry

    configs = {config.name: config for config in module.TASKS_TABLE}
    original = Registry.__dict__["load_all_task_configs"]
    Registry.load_all_task_configs = staticmethod(lambda custom_tasks=None, load_multilingual=False: dict(configs))
    try:
        yield
    finally:
        Registry.load_all_task_configs = original


def vllm_config(model_path: Path, max_model_length: int, config: EvalConfig, cache_dir: Path) -> VLLMModelConfig:
    """lighteval's vLLM model config: the authors' settings (bfloat16, gpu_memory_utilization 0.7, data parallel
    over the visible GPUs), sampling as configured, a model length that holds every prompt plus max_new_tokens."""
    from lighteval.models.model_input import GenerationParameters
    from lighteval.models.vllm.vllm_model import VLLMModelConfig

    return VLLMModelConfig(
        model_name=str(model_path),
        dtype=config.dtype or "bfloat16",
        data_parallel_size=config.data_parallel_size or max(1, torch.cuda.device_count()),
        gpu_memory_utilization=config.gpu_memory_utilization,
        max_model_length=max_model_length,
        seed=config.seed,
        add_special_tokens=False,  # the chat template already holds the special tokens
        override_chat_template=True,
        cache_dir=str(cache_dir),
        generation_parameters=GenerationParameters(
            max_new_tokens=config.max_new_tokens,
            temperature=config.temperature,
            top_p=config.top_p,
            seed=config.seed,
        ),
    )


def run_lighteval(
    model_config: ModelConfig, tasks: list[EvalTask], config: EvalConfig, work_dir: Path, launcher: str = "VLLM"
) -> LightevalRun:
    """Run lighteval's pipeline on the tasks; its details, results and sample cache are kept under `work_dir`."""
    with grad_mode_kept():
        return _run_pipeline(model_config, tasks, config, work_dir, launcher)


def _run_pipeline(
    model_config: ModelConfig, tasks: list[EvalTask], config: EvalConfig, work_dir: Path, launcher: str
) -> LightevalRun:
    from lighteval.logging.evaluation_tracker import EvaluationTracker
    from lighteval.pipeline import ParallelismManager, Pipeline, PipelineParameters

    module = task_module(tasks, work_dir / "data", config)
    with only_these_tasks(module):
        pipeline = Pipeline(
            tasks=",".join(f"{lighteval_name(task)}|0" for task in tasks),
            pipeline_parameters=PipelineParameters(
                launcher_type=ParallelismManager[launcher],
                custom_tasks_directory=module,
                remove_reasoning_tags=True,
                reasoning_tags=REASONING_TAGS,
            ),
            evaluation_tracker=EvaluationTracker(output_dir=str(work_dir), save_details=True),
            model_config=model_config,
        )
    pipeline.evaluate()
    pipeline.save_and_push_results()
    details = pipeline.get_details()
    results = pipeline.evaluation_tracker.metrics_logger.metric_aggregated
    lengths, tokens, texts, scores = [], [], [], {}
    for task in tasks:
        key = f"{lighteval_name(task)}|0"
        by_problem = {int(detail.doc.id): detail.model_response for detail in details[key]}
        responses = [by_problem[i] for i in range(len(task.problems))]
        lengths.append([len(response.input_tokens or ()) for response in responses])
        tokens.append([[list(t) for t in response.output_tokens] for response in responses])
        texts.append([list(response.text) for response in responses])
        scores[task.name] = float(results[key][METRIC])
    return LightevalRun(lengths, tokens, texts, scores)


@contextlib.contextmanager
def grad_mode_kept() -> Iterator[None]:
    """Within: whatever lighteval does to autograd is undone on exit. Its transformers model module turns
    autograd off for the whole process when imported, and lighteval.pipeline imports it; a tuning run after an
    evaluation in the same process (the sweep) would then fail."""
    with torch.set_grad_enabled(torch.is_grad_enabled()):
        yield


def check_vllm() -> None:
    """One-line errors unless lighteval, vLLM and a CUDA GPU are all there (vLLM is imported here, not earlier)."""
    with grad_mode_kept():
        require_extra("lighteval.pipeline", "eval", "the vllm backend")
    require_extra("vllm", "vllm", "the vllm backend")
    if not torch.cuda.is_available():
        raise ResaError("the vllm backend needs a CUDA GPU and none is visible; use --backend transformers on CPU")


def generate_vllm(model_path: Path, tasks: list[EvalTask], config: EvalConfig, work_dir: Path) -> BackendRun:
    """The paper's evaluation: lighteval on vLLM, `config.samples` generations per problem."""
    from transformers import AutoTokenizer

    check_vllm()
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    prompts, prompt_ids = prompt_token_ids(tokenizer, tasks)
    lengths = [len(ids) for ids in prompt_ids]
    length = required_length(lengths, config.max_new_tokens, model_context(model_path), str(model_path))
    # a fresh sample cache: lighteval keys it by model path, not weights, so a retuned model could be served old text
    shutil.rmtree(work_dir / "cache", ignore_errors=True)
    model_config = vllm_config(model_path, length, config, work_dir / "cache")
    run = run_lighteval(model_config, tasks, config, work_dir)
    device = f"{model_config.data_parallel_size} x {torch.cuda.get_device_name(0)} (vLLM, data parallel)"
    eos = eos_token_ids(model_path, tokenizer)
    return backend_run(run, prompts, lengths, tasks, eos, config.max_new_tokens, device)


def backend_run(
    run: LightevalRun, prompts: list[str], lengths: list[int], tasks: list[EvalTask], eos: set[int],
    max_new_tokens: int, device: str,
) -> BackendRun:
    """lighteval's output as generation records (token counts and truncation from the generated ids). A prompt
    that reached the model with fewer than the `lengths` tokens it was rendered with is an error, never a silent
    cut (engines that pad report more tokens; engines that report none are not checked)."""
    sent = [n for task_lengths in run.prompt_lengths for n in task_lengths]
    cut = sum(0 < n < expected for n, expected in zip(sent, lengths))
    if cut:
        raise ResaError(
            f"lighteval cut {cut} of {len(lengths)} prompts to fit the model length; the scores would not be valid"
        )
    generations = [
        [
            [Generation(text, len(ids), is_truncated(ids, eos, max_new_tokens)) for ids, text in zip(*problem)]
            for problem in zip(task_tokens, task_texts)
        ]
        for task_tokens, task_texts in zip(run.tokens, run.texts)
    ]
    return BackendRun(
        prompts=split_by_task(prompts, tasks), generations=generations, device=device, reference_scores=run.scores
    )
