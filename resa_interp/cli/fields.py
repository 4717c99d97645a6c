"""CLI options declared by config fields: type, help and shown default read from a stage's `config.py`.

A stage's config dataclass is the one declaration of an option: its field (type and default) and the docstring
under it. `field_option` turns that field into a Typer option without importing the stage (which would load
torch on every `--help`): it parses the config module's source with `ast`, as sparsify's `simple_parsing` does.
The command's parameter defaults to None, so an option left out keeps the config's default (or the preset's);
`given` drops those Nones. `tests/test_cli_fields.py` checks every parsed default against the imported dataclass
and every command option named like a field of its command's configs against that field.
"""

from __future__ import annotations

import ast
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

PACKAGE = Path(__file__).resolve().parent.parent
NO_DEFAULT = object()
"""A field whose default is not a literal (or a module-level literal constant): no default is shown."""
TYPES = {"str": str, "int": int, "float": float, "bool": bool}


@dataclass(frozen=True)
class Field:
    """One config field as its source declares it."""

    module: str
    """Module holding the config, relative to the package (`features.config`)."""
    config: str
    """The dataclass's name."""
    name: str
    annotation: str
    default: Any
    """The literal default, or `NO_DEFAULT`."""
    doc: str
    """The docstring under the field, whitespace collapsed to single spaces."""


@functools.cache
def _source(module: str) -> tuple[ast.Module, dict[str, ast.expr]]:
    """The parsed source of `resa_interp.<module>` and its module-level assignments (name -> value expression)."""
    tree = ast.parse((PACKAGE / Path(*module.split("."))).with_suffix(".py").read_text())
    constants = {t.id: node.value for node in tree.body if isinstance(node, (ast.Assign, ast.AnnAssign))
                 for t in (node.targets if isinstance(node, ast.Assign) else [node.target])
                 if isinstance(t, ast.Name) and node.value is not None}
    return tree, constants


def module_constant(module: str, name: str) -> Any:
    """The literal value of module-level `name` in `resa_interp.<module>` (a preset table), read from its source
    like the fields (nothing is imported)."""
    value = _source(module)[1].get(name)
    if value is None:
        raise LookupError(f"resa_interp.{module} assigns no {name}")
    return ast.literal_eval(value)


@functools.cache
def config_fields(module: str, config: str) -> dict[str, Field]:
    """The fields of dataclass `config` in `resa_interp.<module>`, read from its source (nothing is imported);
    a base class defined in the same module gives its fields first, as `dataclasses` orders them."""
    tree, constants = _source(module)
    cls = next((n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == config), None)
    if cls is None:
        raise LookupError(f"resa_interp.{module} has no class {config}")
    fields: dict[str, Field] = {}
    for base in cls.bases:
        if isinstance(base, ast.Name) and any(isinstance(n, ast.ClassDef) and n.name == base.id for n in tree.body):
            fields.update(config_fields(module, base.id))
    body = cls.body
    for node, after in zip(body, [*body[1:], None]):
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        doc = ""
        if isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str):
            doc = " ".join(after.value.value.split())
        fields[node.target.id] = Field(module, config, node.target.id, ast.unparse(node.annotation),
                                       _literal(node.value, constants), doc)
    return fields


def _literal(value: ast.expr | None, constants: dict[str, ast.expr]) -> Any:
    if isinstance(value, ast.Name) and value.id in constants:
        value = constants[value.id]
    try:
        return ast.literal_eval(value) if value is not None else NO_DEFAULT
    except ValueError:
        return NO_DEFAULT


def shown(value: Any) -> str:
    """A default as `--help` shows it."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (tuple, list)):
        return ",".join(map(str, value)) or "none"
    return "none" if value is None else str(value)


def field_option(module: str, config: str, name: str, *flags: str, kind: Any = None, more: str = "",
                 default: str | None = None) -> Any:
    """The option for field `name` of `config` (in `resa_interp.<module>`): `Annotated[kind | None, Option]`.

    `flags` default to `--<name with dashes>`; `kind` to the field's type (str for anything not a plain scalar);
    `more` is appended to the field's docstring (what only the CLI adds, e.g. the spelling of a list);
    `default` replaces the shown default where the field's is not a literal or the command decides it.
    """
    field = config_fields(module, config)[name]
    if kind is None:
        base = field.annotation.removesuffix(" | None")
        kind = TYPES.get(base, str)
    if default is None and field.default is not NO_DEFAULT:
        default = shown(field.default)
    help_text = " ".join(part for part in (field.doc, more, default and f"[default: {default}]") if part)
    option = typer.Option(*(flags or (f"--{name.replace('_', '-')}",)), help=help_text, show_default=False)
    return Annotated[kind | None, option]


def given(**values: Any) -> dict[str, Any]:
    """The options the user gave: every value that is not None."""
    return {k: v for k, v in values.items() if v is not None}
