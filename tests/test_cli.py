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


def test_eval_default_tasks_are_the_papers(cli):
    """eval's --tasks default is the config's, the paper's six, and its --help (which loads no torch) shows them."""
    from resa_interp.cli.fields import config_fields
    from resa_interp.evaluation import DEFAULT_TASKS, EvalConfig

    parsed = config_fields("evaluation.config", "EvalConfig")["tasks"].default
    assert parsed == DEFAULT_TASKS == EvalConfig().tasks == ("aime24", "aime25", "amc23", "math_500", "minerva",
                                                            "gpqa:diamond")
    code, out, _ = cli(["eval", "--help"])
    assert code == 0 and "[default:aime24,aime25,amc23,math_500,minerva,gpqa:diamond]" in "".join(out.split())
