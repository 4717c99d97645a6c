"""Evaluation: task definitions, the lighteval/vLLM path built and checked without a GPU, the local backend end to
end on the embedded model, scores and the table."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from resa_interp.errors import ResaError
from resa_interp.evaluation.backends import (
    eos_token_ids,
    is_truncated,
    model_context,
    prompt_token_ids,
    required_length,
)
from resa_interp.evaluation.evaluator import (
    SAMPLES,
    EvalConfig,
    EvalResult,
    TaskScore,
    eval_model_path,
    evaluate,
    format_table,
    read_scores,
)
from resa_interp.evaluation.grading import grade
from resa_interp.evaluation.tasks import (
    PAPER_ORDER,
    PAPER_TASKS,
    chat_prompt,
    choice_query,
    load_task,
    load_tasks,
    math_query,
)
from resa_interp.model.loading import resolve_model_path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture
def choice_file(tmp_path) -> Path:
    """A small local multiple-choice task: answers given as a letter and as an option's text."""
    return write_jsonl(tmp_path / "colours.jsonl", [
        {"problem": "Which colour is the sky on a clear day?", "choices": ["green", "blue", "red"], "answer": "B"},
        {"problem": "What is 2 + 2?", "choices": ["3", "5", "4", "22"], "answer": "4"},
    ])


@pytest.fixture(scope="module")
def embedded_tokenizer():
    return AutoTokenizer.from_pretrained(resolve_model_path(None))


# --------------------------------------------------------------------------------------------- task definitions


def test_prompts_are_the_authors(embedded_tokenizer):
    """The math prompt and the GPQA template equal lighteval's own copies of the authors' prompts."""
    from lighteval.tasks.tasks import aime, gpqa

    question = "Find $x$ if $2x + 3 = 11$."
    assert math_query(question) == aime.MATH_PROMPT_TEMPLATE.format(prompt=question).strip()
    row = {"Question": "Which particle is a lepton?", "Correct Answer": "electron", "Incorrect Answer 1": "proton",
           "Incorrect Answer 2": "neutron", "Incorrect Answer 3": "pion"}
    random.seed(3)
    doc = gpqa.gpqa_prompt(row)
    options = [row[f"Incorrect Answer {i}"] for i in (1, 2, 3)]
    options.insert(doc.gold_index, row["Correct Answer"])
    assert choice_query(row["Question"], options) == doc.query
    # one user message in the model's chat template, nothing else
    prompt = chat_prompt(embedded_tokenizer, doc.query)
    assert prompt.endswith(f"<|im_start|>user\n{doc.query}<|im_end|>\n<|im_start|>assistant\n")


def test_paper_tasks_point_where_lighteval_does():
    """Hub datasets, subsets and splits of the paper's tasks agree with lighteval's built-in definitions (AMC23
    and Minerva exist only as the authors' custom tasks); columns follow the paper's tables."""
    from lighteval.tasks.tasks import aime, gpqa, math_500

    builtin = {"aime24": aime.aime24, "aime25": aime.aime25, "math_500": math_500.math_500,
               "gpqa:diamond": gpqa.gpqa_diamond_instruct}
    for name, config in builtin.items():
        task = PAPER_TASKS[name]
        assert (task.hf_repo, task.hf_subset, task.split) == (config.hf_repo, config.hf_subset,
                                                               config.evaluation_splits[0]), name
    assert [PAPER_TASKS[t].column for t in PAPER_ORDER] == ["AIME24", "AIME25", "AMC23", "MATH500", "GPQA", "Minerva"]


def test_a_model_without_chat_template_is_refused(tiny_llama):
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    tokenizer.chat_template = None
    with pytest.raises(ResaError, match="has no chat template"):
        chat_prompt(tokenizer, "What is 1 + 1?")


def test_hub_tasks_fail_offline_in_one_line():
    with pytest.raises(ResaError, match=r"task 'aime24': dataset HuggingFaceH4/aime_2024 could not be loaded.*offline"):
        load_task("aime24")


def test_local_tasks(tmp_path, choice_file):
    task = load_task(str(choice_file))
    assert (task.name, task.grading, [p.gold for p in task.problems]) == ("colours", "choice", ["B", "C"])
    assert task.problems[0].n_choices == 3 and "LETTER is one of ABC." in task.problems[0].query
    assert "\nA) green\nB) blue\nC) red" in task.problems[0].query
    maths = load_task(str(write_jsonl(tmp_path / "m.jsonl", [{"problem": "1/2 + 1/4?", "answer": "3/4"}])))
    assert maths.grading == "latex" and maths.problems[0].gold == "\\boxed{3/4}"
    assert maths.problems[0].query == math_query("1/2 + 1/4?")
    bad = [
        ([{"problem": "x", "answer": "1"}, {"problem": "y", "answer": "A", "choices": ["a", "b"]}], "mixes"),
        ([{"problem": "x", "choices": ["a", "b"], "answer": "c"}], "line 1: answer 'c' is neither an option letter"),
        ([{"question": "x", "answer": "1"}], "line 1: needs a non-empty 'problem'"),
        ([{"problem": "x", "answer": "1", "choices": "ab"}], "'choices' must be a list"),
    ]
    for rows, needle in bad:
        with pytest.raises(ResaError, match=needle):
            load_task(str(write_jsonl(tmp_path / "bad.jsonl", rows)))
    (tmp_path / "broken.jsonl").write_text('{"problem": "x",\n')
    with pytest.raises(ResaError, match="line 1: not valid JSON"):
        load_task(str(tmp_path / "broken.jsonl"))
    with pytest.raises(ResaError, match="not a paper task, not 'synthetic'"):
        load_task("aime2024")
    with pytest.raises(ResaError, match="given twice"):
        load_tasks([str(choice_file), str(choice_file)])


def test_synthetic_task_is_held_out_and_deterministic():
    from resa_interp.data.synthetic import synthetic_qa

    task = load_task("synthetic", limit=50)
    assert len(task.problems) == 50 and task.problems == load_task("synthetic", limit=50).problems
    training = {math_query(e.problem) for e in synthetic_qa(2000, seed=0)}
    assert not training & {p.query for p in task.problems}
    assert all(p.gold.startswith("\\boxed{") for p in task.problems)


# --------------------------------------------------------------------------------------------- lighteval / vLLM


def test_vllm_arguments_fit_every_prompt(tmp_path, choice_file, embedded_tokenizer):
    """What lighteval gets: tasks whose docs, rendered by lighteval's own PromptManager, are our prompts token for
    token; `samples` generations per doc; a model length that holds every prompt plus max_new_tokens (so lighteval's
    context-cutting branch cannot trigger); the paper's sampling parameters for vLLM."""
    from lighteval.models.model_output import ModelResponse
    from lighteval.tasks.lighteval_task import LightevalTask
    from lighteval.tasks.prompt_manager import PromptManager
    from lighteval.tasks.registry import Registry

    from resa_interp.evaluation.lighteval_backend import lighteval_name, only_these_tasks, task_module, vllm_config

    model_path = resolve_model_path(None)
    config = EvalConfig(backend="vllm", samples=4, max_new_tokens=7000, limit=3)
    tasks = load_tasks(["synthetic", str(choice_file)], limit=3)
    prompts, ids = prompt_token_ids(embedded_tokenizer, tasks)
    length = required_length([len(x) for x in ids], config.max_new_tokens, model_context(model_path), "smollm2")
    model_config = vllm_config(model_path, length, config, tmp_path / "cache")
    assert model_config.max_model_length == max(len(x) for x in ids) + 7000 <= 8192
    assert model_config.model_name == str(model_path) and model_config.dtype == "bfloat16"
    assert model_config.gpu_memory_utilization == 0.7 and model_config.data_parallel_size == 1  # no GPU here
    assert model_config.add_special_tokens is False and model_config.override_chat_template is True
    assert model_config.generation_parameters.to_vllm_dict() == {"max_tokens": 7000, "temperature": 0.6,
                                                                 "top_p": 0.95, "seed": 0}

    module = task_module(tasks, tmp_path / "data", config)
    names = ",".join(f"{lighteval_name(t)}|0" for t in tasks)
    with only_these_tasks(module):
        loaded = Registry(tasks=names, custom_tasks=module).load_tasks()
    LightevalTask.load_datasets(loaded)
    manager = PromptManager(use_chat_template=True, tokenizer=embedded_tokenizer)
    flat = 0
    for task in tasks:
        docs = sorted(loaded[f"{lighteval_name(task)}|0"].get_docs(), key=lambda d: int(d.id))
        assert len(docs) == len(task.problems)
        for doc in docs:
            assert doc.num_samples == 4 and doc.generation_size == 7000 and not doc.stop_sequences
            rendered = manager.prepare_prompt(doc)
            assert rendered == prompts[flat]
            sent = embedded_tokenizer(rendered, add_special_tokens=model_config.add_special_tokens)["input_ids"]
            assert len(sent) + config.max_new_tokens <= model_config.max_model_length
            flat += 1
        # the task's metric is pass@1 over the samples, with the same verdicts as the grader of the local backend
        metric = loaded[f"{lighteval_name(task)}|0"].metrics[0].sample_level_fn
        right = "Answer: " + task.problems[0].gold if task.grading == "choice" else task.problems[0].gold
        wrong = "Answer: A" if task.grading == "choice" else "\\boxed{-12345}"
        responses = [right, wrong, wrong, right]
        expected = sum(grade(r, task.problems[0].gold, task.grading, task.problems[0].n_choices).correct
                       for r in responses) / 4
        assert expected == 0.5 and metric.compute(docs[0], ModelResponse(text=responses)) == expected


def test_prompts_that_do_not_fit_are_refused(tiny_qwen2):
    with pytest.raises(ResaError, match=r"needs \d+ positions, but model .* holds 512; use --max-new-tokens \d+"):
        required_length([40, 100], 500, model_context(Path(tiny_qwen2)), tiny_qwen2)
    assert required_length([40, 100], 412, 512, "m") == 512


def test_lighteval_output_becomes_generations():
    from resa_interp.evaluation.lighteval_backend import LightevalRun, backend_run

    tasks = [load_task("synthetic", limit=2)]
    eos = {2}
    run = LightevalRun(prompt_lengths=[[10, 12]], tokens=[[[[5, 6, 2], [5, 6, 7]], [[5, 2, 0], [9, 9, 9]]]],
                       texts=[[["a", "b"], ["c", "d"]]], scores={"synthetic": 0.25})
    out = backend_run(run, ["p0", "p1"], [10, 12], tasks, eos, 3, "gpu")
    assert out.prompts == [["p0", "p1"]] and out.reference_scores == {"synthetic": 0.25}
    assert [[g.truncated for g in problem] for problem in out.generations[0]] == [[False, True], [False, True]]
    assert [[g.n_tokens for g in problem] for problem in out.generations[0]] == [[3, 3], [3, 3]]
    with pytest.raises(ResaError, match="lighteval cut 1 of 2 prompts"):
        backend_run(run, ["p0", "p1"], [10, 13], tasks, eos, 3, "gpu")
    assert backend_run(run, ["p0", "p1"], [10, 11], tasks, eos, 3, "gpu").generations == out.generations  # padded
    assert is_truncated([1, 2, 3], {9}, 3) and not is_truncated([1, 9, 3], {9}, 3) and not is_truncated([1], {9}, 3)


@pytest.mark.slow
def test_lighteval_pipeline_end_to_end_on_cpu(tmp_path, tiny_qwen2):
    """The whole lighteval path except vLLM itself: lighteval's transformers engine stands in for vLLM and runs the
    custom tasks on a tiny model; the generations come back per problem and sample, and lighteval's pass@1 equals
    the grader's mean verdict over the same texts."""
    from lighteval.models.model_input import GenerationParameters

    from resa_interp.evaluation.lighteval_backend import backend_run, grad_mode_kept, run_lighteval

    with grad_mode_kept():  # importing lighteval's transformers engine turns autograd off process-wide
        from lighteval.models.transformers.transformers_model import TransformersModelConfig

    model = tmp_path / "model"
    shutil.copytree(tiny_qwen2, model)
    generation = json.loads((model / "generation_config.json").read_text())
    (model / "generation_config.json").write_text(json.dumps({**generation, "do_sample": True}))
    config = EvalConfig(backend="vllm", samples=2, max_new_tokens=6, limit=2)
    tasks = load_tasks(["synthetic"], limit=2)
    engine = TransformersModelConfig(
        model_name=str(model), device="cpu", dtype="float32", batch_size=4, add_special_tokens=False,
        override_chat_template=True, cache_dir=str(tmp_path / "cache"),
        generation_parameters=GenerationParameters(max_new_tokens=6, temperature=0.6, top_p=0.95, seed=0),
    )
    run = run_lighteval(engine, tasks, config, tmp_path / "lighteval", launcher="ACCELERATE")
    # this engine reports the generation's length as the prompt's; vLLM reports its prompt tokens exactly
    assert run.prompt_lengths == [[6, 6]]
    run = dataclasses.replace(run, prompt_lengths=[[0, 0]])
    tokenizer = AutoTokenizer.from_pretrained(model)
    prompts, ids = prompt_token_ids(tokenizer, tasks)
    out = backend_run(run, prompts, [len(x) for x in ids], tasks, eos_token_ids(model, tokenizer), 6, "cpu")
    assert [len(problem) for problem in out.generations[0]] == [2, 2]
    assert all(1 <= g.n_tokens <= 6 for problem in out.generations[0] for g in problem)
    verdicts = [grade(g.text, p.gold, "latex").correct
                for p, problem in zip(tasks[0].problems, out.generations[0]) for g in problem]
    assert out.reference_scores["synthetic"] == sum(verdicts) / len(verdicts)
    assert list((tmp_path / "lighteval" / "details").rglob("*.parquet"))
    assert torch.is_grad_enabled()  # lighteval's engine turned it off inside; the run put it back


def test_the_vllm_backend_asks_for_what_is_missing(cli, tmp_path):
    has_vllm = importlib.util.find_spec("vllm") is not None
    if has_vllm and torch.cuda.is_available():
        pytest.skip("vLLM and a CUDA GPU are both here: nothing is missing")
    code, _, err = cli(["eval", "--backend", "vllm", "--tasks", "synthetic", "--out", str(tmp_path)])
    assert code == 2 and err.count("\n") == 1
    assert ("needs a CUDA GPU and none is visible" if has_vllm else "pip install 'resa-interp[vllm]'") in err


def test_missing_eval_extra_gives_an_install_hint(cli, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "lighteval.metrics.dynamic_metrics", None)
    code, _, err = cli(["eval", "--backend", "transformers", "--tasks", "synthetic", "--out", str(tmp_path)])
    assert code == 2 and err.count("\n") == 1
    assert "grading answers needs the package 'lighteval' (extra 'eval')" in err
    assert "pip install 'resa-interp[eval]'" in err


def test_neither_vllm_nor_lighteval_is_imported_with_the_package_and_autograd_survives():
    code = "\n".join([
        "import sys, torch, resa_interp.cli, resa_interp.evaluation, resa_interp.evaluation.lighteval_backend as e",
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'vllm', 'lighteval'}))",
        "try:",
        "    e.check_vllm()  # imports lighteval.pipeline, which switches autograd off on import",
        "except Exception:",
        "    pass",
        "print('lighteval.pipeline' in sys.modules, torch.is_grad_enabled())",
    ])
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split("\n")[:2] == ["[]", "True True"]


# --------------------------------------------------------------------------------------------- orchestration


def test_tuning_outputs_are_evaluated_through_their_merged_model(tmp_path, tiny_llama):
    tuned = tmp_path / "tuned"
    shutil.copytree(tiny_llama, tuned / "merged")
    (tuned / "adapter").mkdir()
    assert eval_model_path(tuned) == (tuned / "merged").resolve()
    assert eval_model_path(tiny_llama) == Path(tiny_llama).resolve()
    shutil.rmtree(tuned / "merged")
    with pytest.raises(ResaError, match="a tuning output without merged/"):
        eval_model_path(tuned)


def test_bad_settings_are_one_line(cli, tmp_path):
    for args, needle in [
        (["--samples", "2", "--temperature", "0"], "greedy decoding gives one answer"),
        (["--top-p", "1.5"], "--top-p 1.5: must be in (0, 1]"),
        (["--backend", "tpu"], "--backend 'tpu' is unknown"),
        (["--dtype", "int4"], "dtype 'int4' is not supported"),
        (["--tasks", ","], "--tasks is empty"),
        (["--tasks", "aime2024"], "task 'aime2024': not a paper task"),
        (["--backend", "transformers", "--max-new-tokens", "9000", "--tasks", "synthetic"], "holds 8192"),
    ]:
        code, _, err = cli(["eval", "--out", str(tmp_path), *args])
        assert code == 2 and err.count("\n") == 1 and needle in err, (args, err)


def test_table_follows_the_papers_columns():
    def score(column: str, value: float) -> TaskScore:
        return TaskScore(column, value, 10, 1, int(10 * value), 0, 100, "x")

    result = EvalResult("m", "/m", "vllm", "gpu", {
        "local": score("local", 0.1), "minerva": score("Minerva", 0.2), "aime24": score("AIME24", 0.3),
        "gpqa:diamond": score("GPQA", 0.4), "math_500": score("MATH500", 0.5)}, 0.3, 1.0, 500)
    header, _, row = format_table(result, "Resa").splitlines()[:3]
    assert header == "| Model | AIME24 | MATH500 | GPQA | Minerva | local | Avg. |"
    assert row == "| Resa | 30.00 | 50.00 | 40.00 | 20.00 | 10.00 | 30.00 |"


@pytest.mark.slow
def test_cpu_backend_end_to_end_on_the_embedded_model(cli, tmp_path, choice_file):
    """`resa-interp eval` with the transformers backend on a few synthetic and multiple-choice problems: the table
    in column order, scores consistent with every sample, generations within budget, the same run twice."""
    out = tmp_path / "eval"
    args = ["eval", "--backend", "transformers", "--tasks", f"synthetic,{choice_file}", "--limit", "2",
            "--samples", "2", "--max-new-tokens", "24", "--device", "cpu", "--out", str(out)]
    code, stdout, err = cli(args)
    assert code == 0, err
    assert "| Model | synthetic | colours | Avg. |" in stdout
    result = read_scores(out)
    rows = [json.loads(line) for line in (out / SAMPLES).read_text().splitlines()]
    assert len(rows) == (2 + 2) * 2 and result.backend == "transformers" and result.device.startswith("cpu")
    for name, n_problems in (("synthetic", 2), ("colours", 2)):
        score, mine = result.tasks[name], [r for r in rows if r["task"] == name]
        assert (score.n_problems, score.samples, len(mine)) == (n_problems, 2, n_problems * 2)
        assert score.pass_at_1 == sum(r["correct"] for r in mine) / len(mine)
        assert score.truncated == sum(r["truncated"] for r in mine)
        assert score.tokens_generated == sum(r["n_tokens"] for r in mine)
        task = load_task("synthetic" if name == "synthetic" else str(choice_file), limit=2)
        for r in mine:
            problem = task.problems[r["problem"]]
            assert 1 <= r["n_tokens"] <= 24 and (r["n_tokens"] == 24 or not r["truncated"])
            assert r["gold"] == problem.gold and problem.query in r["prompt"]
            assert r["correct"] == grade(r["generation"], problem.gold, task.grading, problem.n_choices).correct
    assert result.average == (result.tasks["synthetic"].pass_at_1 + result.tasks["colours"].pass_at_1) / 2
    assert result.tokens_generated == sum(r["n_tokens"] for r in rows)


def test_local_backend_is_seeded(tmp_path, tiny_qwen2):
    """The same settings give the same generations and scores; another seed gives other generations."""
    config = EvalConfig(backend="transformers", samples=3, max_new_tokens=8, limit=3, device="cpu", batch_size=4,
                        model=tiny_qwen2, tasks=("synthetic",))
    first = evaluate(config, tmp_path / "a")
    second = evaluate(config, tmp_path / "b")
    other = evaluate(dataclasses.replace(config, seed=1), tmp_path / "c")
    text = (tmp_path / "a" / SAMPLES).read_text()
    assert text == (tmp_path / "b" / SAMPLES).read_text() and first.tasks == second.tasks
    assert text != (tmp_path / "c" / SAMPLES).read_text()
    assert read_scores(tmp_path / "a") == first and other.tasks["synthetic"].n_problems == 3
    # a random tiny model seldom ends a sequence: what runs to the budget without EOS is truncated
    rows = [json.loads(line) for line in text.splitlines()]
    assert first.tasks["synthetic"].truncated == sum(r["n_tokens"] == 8 and r["truncated"] for r in rows) > 0

