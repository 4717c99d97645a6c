"""Named presets for config dataclasses: defaults, then the preset, then what the user gave."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
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
