"""No drift between a stage's config fields and the CLI options declared from them (`cli/fields.py`)."""

from __future__ import annotations

import dataclasses
import importlib
from typing import Annotated

import typer

from resa_interp.cli.app import app as cli_app
from resa_interp.cli.fields import NO_DEFAULT, config_fields, field_option, module_constant, shown


def command_configs() -> dict[str, list[tuple[str, str]]]:
    """Every command's configs, as the command modules declare them in COMMAND_CONFIGS."""
    found: dict[str, list[tuple[str, str]]] = {}
    for name in ("dashboard", "evaluation", "export", "features", "interventions", "layers", "model", "sae", "tuning"):
        found.update(getattr(importlib.import_module(f"resa_interp.cli.{name}"), "COMMAND_CONFIGS", {}))
    return found


def drift(command: typer.models.CommandInfo | typer.Typer, configs: list[tuple[str, str]], name: str) -> list[str]:
    """Every option of `command` named like a field of `configs` whose help or default is not the field's."""
    click_command = typer.main.get_command(command) if isinstance(command, typer.Typer) else command
    if isinstance(click_command, typer.core.TyperGroup):
        click_command = click_command.commands[name]
    fields = {}
    for module, config, *only in configs:  # a third item: the only fields of that config the command takes
        fields.update({k: v for k, v in config_fields(module, config).items() if not only or k in only[0]})
    problems = []
    for param in click_command.params:
        field = fields.get(param.name)
        if field is None or not isinstance(param, typer.core.TyperOption):
            continue
        if not (param.help or "").startswith(field.doc):
            problems.append(f"{name} {param.opts[0]}: help is not {field.config}.{field.name}'s docstring")
        if param.default is not None:
            problems.append(f"{name} {param.opts[0]}: default {param.default!r} restates {field.config}.{field.name}")
    return problems


def test_parsed_defaults_are_the_dataclasses_defaults():
    seen = 0
    for configs in command_configs().values():
        for module, config, *_ in configs:
            cls = getattr(importlib.import_module(f"resa_interp.{module}"), config)
            parsed = config_fields(module, config)
            for f in dataclasses.fields(cls):
                assert parsed[f.name].doc, f"{config}.{f.name} has no docstring"
                real = f.default if f.default is not dataclasses.MISSING else (
                    f.default_factory() if f.default_factory is not dataclasses.MISSING else NO_DEFAULT)
                if parsed[f.name].default is not NO_DEFAULT:
                    assert parsed[f.name].default == real, f"{config}.{f.name}"
                seen += 1
    assert seen > 0


def test_parsed_presets_are_the_modules_presets():
    """tune's --help shows the presets' values from the parsed PRESETS; they are the imported table."""
    from resa_interp.tuning.config import PRESETS

    assert module_constant("tuning.config", "PRESETS") == PRESETS


def test_every_command_option_comes_from_its_configs_fields():
    app = cli_app
    commands = {c.name or c.callback.__name__.replace("_", "-"): c for c in app.registered_commands}
    configs = command_configs()
    assert configs and set(configs) <= set(commands)
    problems = [p for name, cfgs in configs.items() for p in drift(app, cfgs, name)]
    assert problems == []


PlantedThreshold = field_option("features.config", "FeatureConfig", "threshold")


def test_the_check_finds_a_restated_option():
    app = typer.Typer()

    @app.command()
    def good(threshold: PlantedThreshold = None, other: int = 1) -> None:
        """Declared from the field."""

    @app.command()
    def bad(threshold: Annotated[float, typer.Option(help="Activation cut.")] = 0.0) -> None:
        """Restated by hand."""

    configs = [("features.config", "FeatureConfig")]
    assert drift(app, configs, "good") == []
    assert drift(app, configs, "bad") == [
        "bad --threshold: help is not FeatureConfig.threshold's docstring",
        "bad --threshold: default 0.0 restates FeatureConfig.threshold",
    ]
    # a command that takes only some fields of a config is checked on those alone
    assert drift(app, [("features.config", "FeatureConfig", ("threshold",))], "bad") == drift(app, configs, "bad")
    assert drift(app, [("features.config", "FeatureConfig", ("layers",))], "bad") == []
    help_text = typer.main.get_command(app).commands["good"].params[0]
    assert help_text.help.startswith("A latent is active") and help_text.help.endswith(f"[default: {shown(0.0)}]")
