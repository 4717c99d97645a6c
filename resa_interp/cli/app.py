"""The Typer app: one command per stage, registered from the command modules, and the console entry point.

Bad input prints one line (`error: ...`) and exits with code 2; `--debug` shows the traceback instead.
"""

from __future__ import annotations

import os
import sys
import traceback
from typing import Annotated

import typer

from resa_interp.cli.dashboard import dashboard
from resa_interp.cli.evaluation import evaluate, sweep
from resa_interp.cli.export import export
from resa_interp.cli.features import features
from resa_interp.cli.interventions import steer, trace
from resa_interp.cli.layers import select_layers
from resa_interp.cli.model import attach, info
from resa_interp.cli.sae import cache_activations, train_saes
from resa_interp.cli.tuning import tune
from resa_interp.errors import ResaError

app = typer.Typer(
    name="resa-interp",
    help=(
        "SAE feature analysis of reasoning models (the Resa method).\n\n"
        "Stages: info (what a model looks like) -> train-saes -> features -> select-layers -> tune -> eval; "
        "sweep (tune + eval at every layer) feeds select-layers; cache-activations harvests Stage I's activations once "
        "for any number of train-saes --activations runs; steer edits features against a random control "
        "and trace shows where they fire; dashboard shows what a feature does; attach puts "
        "a tuned adapter on another model of the family; export writes a run's SAEs as a hub repo folder, or its "
        "dashboards for Neuronpedia. Every command works offline on the embedded default model "
        "(SmolLM2-135M-Instruct) when --model is not given."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
for name, command in [
    ("info", info),
    ("cache-activations", cache_activations),
    ("train-saes", train_saes),
    ("features", features),
    ("steer", steer),
    ("trace", trace),
    ("dashboard", dashboard),
    ("select-layers", select_layers),
    ("tune", tune),
    ("attach", attach),
    ("eval", evaluate),
    ("sweep", sweep),
    ("export", export),
]:
    app.command(name)(command)

_STATE = {"debug": False}
# Typer vendors click in recent releases and uses click itself in older ones: take its exception classes
# from wherever typer's own BadParameter lives.
_CLICK_ERRORS = sys.modules[typer.BadParameter.__module__]


@app.callback()
def _main(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks instead of one-line errors.")] = False,
) -> None:
    _STATE["debug"] = debug


def main() -> None:
    """Console entry point: run the Typer app, turning bad input into one line and exit code 2."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    command = typer.main.get_command(app)
    try:
        code = command.main(args=sys.argv[1:], prog_name="resa-interp", standalone_mode=False)
    except ResaError as exc:
        if _STATE["debug"]:
            traceback.print_exc()
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except _CLICK_ERRORS.UsageError as exc:
        if type(exc).__name__ == "NoArgsIsHelpError" and exc.ctx is not None:
            typer.echo(exc.ctx.get_help())
            sys.exit(0)
        typer.echo(f"error: {exc.format_message()} (see resa-interp {_command_path(exc)}--help)", err=True)
        sys.exit(2)
    except typer.Abort:
        typer.echo("aborted", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        code = 130
    # recent typer turns Ctrl-C into exit code 130, returned (not raised) outside standalone mode
    if code == 130:
        typer.echo("interrupted: finished work is saved; rerun the same command (with --resume where it has one) "
                   "to continue", err=True)
    if isinstance(code, int) and code:
        sys.exit(code)


def _command_path(exc: Exception) -> str:
    if exc.ctx is None or exc.ctx.parent is None:
        return ""
    return f"{exc.ctx.info_name} "

