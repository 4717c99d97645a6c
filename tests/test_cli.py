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


def _command_functions() -> dict:
    """The command functions the command modules define (every resa_interp.cli module but the shell's own: app,
    fields, options): public functions with a Typer argument or option, found by reading the modules, not the app."""
    import importlib
    import inspect
    import pkgutil
    import typing

    import typer.models

    import resa_interp.cli

    def is_typer(parameter) -> bool:
        metadata = getattr(parameter.annotation, "__metadata__", ())
        return any(isinstance(m, typer.models.ParameterInfo) for m in (*metadata, parameter.default))

    found = {}
    for info in pkgutil.iter_modules(resa_interp.cli.__path__):
        if info.name in ("__main__", "app", "fields", "options"):
            continue
        module = importlib.import_module(f"resa_interp.cli.{info.name}")
        for name, function in vars(module).items():
            if inspect.isfunction(function) and function.__module__ == module.__name__ and not name.startswith("_"):
                hints = typing.get_type_hints(function, include_extras=True)
                parameters = [p.replace(annotation=hints.get(p.name, p.annotation))
                              for p in inspect.signature(function).parameters.values()]
                if any(is_typer(p) for p in parameters):
                    found[function] = f"{info.name}.{name}"
    return found


def test_help_lists_commands(cli):
    """Every command function of the command modules is registered, each registered command is listed by --help
    with the first words of its docstring, and answers its own --help."""
    import sys

    import typer

    from resa_interp.cli import app

    functions = _command_functions()
    assert len(functions) >= 13, functions  # info ... export: the modules were read, not skipped
    registered = {command.name: command.callback for command in app.registered_commands}
    assert set(registered.values()) == set(functions), "a command function is not registered, or vice versa"
    code, out, _ = cli(["--help"])
    assert code == 0
    listed = out.split("Commands:\n", 1)[1].splitlines()
    assert {line.split()[0] for line in listed if line.strip()} == set(registered)
    click = typer.main.get_command(app)
    for line in listed:
        name, summary = line.split(maxsplit=1)
        assert summary.rstrip(".") and click.commands[name].help.startswith(summary.rstrip(".").rstrip()), line
    for name in registered:
        code, out, _ = cli([name, "--help"])
        assert code == 0 and out.startswith(f"Usage: resa-interp {name} "), (name, out[:200])
    configs = {}
    for function in functions:
        configs.update(getattr(sys.modules[function.__module__], "COMMAND_CONFIGS", {}))
    assert set(configs) <= set(registered), "COMMAND_CONFIGS names a command the app does not have"


def test_eval_default_tasks_are_the_papers(cli):
    """eval's --tasks default is the config's, the paper's six, and its --help (which loads no torch) shows them."""
    from resa_interp.cli.fields import config_fields
    from resa_interp.evaluation import DEFAULT_TASKS, EvalConfig

    parsed = config_fields("evaluation.config", "EvalConfig")["tasks"].default
    assert parsed == DEFAULT_TASKS == EvalConfig().tasks == ("aime24", "aime25", "amc23", "math_500", "minerva",
                                                            "gpqa:diamond")
    code, out, _ = cli(["eval", "--help"])
    assert code == 0 and "[default:aime24,aime25,amc23,math_500,minerva,gpqa:diamond]" in "".join(out.split())
