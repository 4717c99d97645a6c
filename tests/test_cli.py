"""The CLI shell: facts printed, one-line errors with exit code 2, help that teaches."""

from __future__ import annotations

import json


def test_info_prints_facts(cli, tiny_qwen2):
    code, out, _ = cli(["info", "--model", tiny_qwen2])
    assert code == 0
    assert "Qwen2ForCausalLM" in out and "1 token(s): ['<think>']" in out
    code, out, _ = cli(["info", "--model", tiny_qwen2, "--json"])
    facts = json.loads(out)
    assert facts["n_layers"] == 4 and facts["model_path"] == tiny_qwen2


def test_info_on_the_embedded_default(cli):
    code, out, _ = cli(["info"])
    assert code == 0
    assert "LlamaForCausalLM" in out and "3 token(s): ['Ġ<', 'think', '>']" in out


def test_bad_input_is_one_line_and_exit_2(cli, tmp_path, tiny_qwen2):
    for args, needle in [
        (["info", "--model", str(tmp_path)], "no config.json"),
        (["info", "--model", "/no/such"], "no such file or directory"),
        (["info", "--bogus"], "No such option: --bogus"),
        (["info", "--dtype", "int8", "--model", tiny_qwen2], "dtype 'int8' is not supported"),
    ]:
        code, out, err = cli(args)
        assert code == 2, args
        assert err.count("\n") == 1 and err.startswith("error: ") and needle in err, err
        assert "Traceback" not in err


def test_debug_shows_the_traceback(cli, tmp_path):
    code, _, err = cli(["--debug", "info", "--model", str(tmp_path)])
    assert code == 2 and "Traceback" in err


def test_help_lists_commands(cli):
    code, out, _ = cli(["--help"])
    assert code == 0 and "info" in out


def test_eval_default_tasks_are_the_papers():
    """The CLI spells the paper's tasks as a string (its --help loads no torch); it is the library's default."""
    from resa_interp.cli.options import PAPER_TASK_LIST
    from resa_interp.evaluation import DEFAULT_TASKS, EvalConfig

    assert tuple(PAPER_TASK_LIST.split(",")) == DEFAULT_TASKS == EvalConfig().tasks
