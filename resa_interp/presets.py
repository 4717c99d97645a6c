"""Named presets for config dataclasses: defaults, then the preset, then what the user gave."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from resa_interp.errors import ResaError, check_choice

T = TypeVar("T")


def with_preset(cls: type[T], presets: dict[str, dict[str, Any]], preset: str | None, drop: Iterable[str] = (),
                **given: Any) -> T:
    """`cls` built from its defaults, then `presets[preset]` (minus `drop`), then every non-None `given`."""
    if preset is not None:
        check_choice("--preset", preset, presets)
    names = {f.name for f in dataclasses.fields(cls)}
    values = {k: v for k, v in presets.get(preset, {}).items() if k not in set(drop)}
    values.update({k: v for k, v in given.items() if v is not None})
    unknown = set(values) - names
    if unknown:
        raise ResaError(f"unknown option(s) for {cls.__name__}: {', '.join(sorted(unknown))}")
    return cls(**values)


def flat_settings(config: Any, prefix: str = "") -> dict[str, Any]:
    """A config dataclass as dotted name -> value, nested configs flattened (a sweep's `tune.lr`)."""
    flat: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            flat.update(flat_settings(value, f"{prefix}{f.name}."))
        else:
            flat[f"{prefix}{f.name}"] = value
    return flat


@dataclass(frozen=True)
class SettingsReport:
    """A command's resolved settings next to the paper's (Appendix A, the `paper` preset)."""

    command: str
    preset: str | None
    values: dict[str, Any]
    paper: dict[str, Any]
    differences: tuple[str, ...]
    """Setting names whose value is not the paper's."""
    reference: str = "the paper's Appendix A (--preset paper)"
    """What the paper's values are, in words."""

    def format(self) -> str:
        """A header that says how far from the paper this run is, then one line per setting."""
        given = f"--preset {self.preset}" if self.preset else "defaults"
        if self.differences:
            head = (f"{self.command}: {given}; {len(self.differences)} setting(s) differ from {self.reference}, "
                    "marked '!='")
        else:
            head = f"{self.command}: {given}; every setting is as in {self.reference}"
        width = max(map(len, self.values), default=0)
        lines = [head]
        for name, value in self.values.items():
            line = f"  {name:<{width}}  {_show(name, value)}"
            if name in self.differences:
                line = f"{line:<{width + 34}}  != paper: {_show(name, self.paper.get(name))}"
            lines.append(line)
        return "\n".join(lines)


def settings_report(command: str, config: Any, paper: Any, preset: str | None, ignore: Iterable[str] = (),
                    reference: str = SettingsReport.reference, hide: Iterable[str] = ()) -> SettingsReport:
    """Compare `config` with the paper's config of the same command; `ignore` names settings that do not change
    results (checkpointing, layers per pass), shown but never counted as a difference; `hide` those the command
    sets itself (not shown)."""
    hidden = set(hide)
    values = {k: v for k, v in flat_settings(config).items() if k not in hidden}
    paper_values = flat_settings(paper)
    skip = set(ignore)
    differences = tuple(k for k, v in values.items() if k not in skip and paper_values.get(k) != v)
    return SettingsReport(command, preset, values, paper_values, differences, reference)


def _show(name: str, value: Any) -> str:
    if value is None:
        return "smollm2-135m (embedded)" if name.split(".")[-1] == "model" else "-"
    if isinstance(value, (tuple, list)):
        return ",".join(map(str, value)) or "-"
    return str(value)
