"""Optional dependencies (pyproject extras): import them late, and say in one line how to install what is missing."""

from __future__ import annotations

import importlib
from types import ModuleType

from resa_interp.errors import ResaError


def require_extra(module: str, extra: str, purpose: str) -> ModuleType:
    """Import `module`, or raise a one-line error naming the extra of this package that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ResaError(
            f"{purpose} needs the package {module.split('.')[0]!r} (extra '{extra}'); "
            f"install it with: pip install 'resa-interp[{extra}]'  (in a clone: scripts/setup.sh {extra})"
        ) from None
