"""Layer numbering: hook indices (`blocks.N`, `model.layers.N`, 0-based, what every file and option here uses)
and the paper's ordinals ("N-th layer", 1-based); layer specs ("all", "1-26", "3,12,24") and their labels.

The paper counts decoder layers from 1: its Table 6 row "Resa-STILL-13th-Layer" has exactly Resa-STILL-v1's
scores (33.33/33.33/75.00/83.80/29.41/28.79, avg 47.28), and the authors' code evaluates Resa-STILL-v1 at
`model.layers.12` (shangshang-wang/Resa, scripts/eval/eval_sae_tuning.sh:25). So the paper's "(N+1)-th layer" is
hook index N, and Table 6's rows 2nd..27th are hook indices 1..26, all but the first and last of 28 layers
(scripts/train/sae_tuning_model.sh:24-31 lists model.layers.1 .. model.layers.26).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from resa_interp.errors import ResaError


def paper_label(layer: int) -> str:
    """The paper's ordinal for hook index `layer`: 12 -> '13th', 0 -> '1st', 1 -> '2nd', 21 -> '22nd'."""
    n = layer + 1
    suffix = "th" if n % 100 in (11, 12, 13) else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def layer_of_paper_label(label: str) -> int:
    """The hook index of a paper ordinal: '13th' -> 12 (inverse of `paper_label`)."""
    match = re.fullmatch(r"\s*(\d+)(st|nd|rd|th)\s*", str(label))
    if not match or int(match.group(1)) < 1 or paper_label(int(match.group(1)) - 1) != match.group(0).strip():
        raise ResaError(f"paper layer label {label!r} is not an ordinal like '13th' (1st, 2nd, 3rd, 4th, ...)")
    return int(match.group(1)) - 1


def layer_title(layer: int, paper: bool = True) -> str:
    """How reports name a layer: 'blocks.12 (paper: 13th)', or 'blocks.12' with `paper=False`."""
    return f"blocks.{layer} (paper: {paper_label(layer)})" if paper else f"blocks.{layer}"


def describe_layers(layers: list[int]) -> str:
    """Hook indices with the paper's 1-based labels, for settings lines: 'blocks.1-26 (paper: 2nd-27th layer)'
    for a run of three or more, else each layer named ('blocks.3, blocks.12 (paper: 4th, 13th layer)')."""
    consecutive = len(layers) > 2 and layers == list(range(layers[0], layers[-1] + 1))
    if consecutive:
        first, last = layers[0], layers[-1]
        return f"blocks.{first}-{last} (paper: {paper_label(first)}-{paper_label(last)} layer)"
    names = ", ".join(f"blocks.{layer}" for layer in layers)
    return f"{names} (paper: {', '.join(paper_label(layer) for layer in layers)} layer)"


def layer_ranges(layers: Iterable[int]) -> str:
    """Layers (any order, e.g. a dict's keys) as sorted compact ranges, for one-line errors: [1, 2, 3, 5] ->
    '1-3,5', [4, 5] -> '4-5'. Unlike `describe_layers` it names no paper ordinals and joins every run, however
    short: an error lists what a run holds, a settings line gives both numberings."""
    layers = sorted(layers)
    parts, start = [], layers[0]
    for a, b in zip(layers, layers[1:] + [None]):
        if b != a + 1:
            parts.append(str(start) if start == a else f"{start}-{a}")
            start = b
    return ",".join(parts)


def default_layers(n_layers: int) -> str:
    """The paper's cut as a layer spec: layers 1..L-2 of an L-layer model (the first and last layer excluded), the
    layers `features` counts and a sweep tunes by default."""
    return f"1-{n_layers - 2}"
def parse_layers(spec: str, n_layers: int) -> list[int]:
    """A layer spec, 'all' | 'A-B' (inclusive) | 'L,L,...' of hook indices, as a sorted layer list, each checked
    against the model's `n_layers`."""
    spec = spec.strip()
    try:
        if spec == "all":
            layers = list(range(n_layers))
        elif "-" in spec and "," not in spec:
            lo, hi = (int(p) for p in spec.split("-"))
            layers = list(range(lo, hi + 1))
        else:
            layers = [int(p) for p in spec.split(",") if p.strip()]
    except ValueError:
        raise ResaError(f"--layers {spec!r}: accepted 'all', a range like 1-26, or a list like 3,12,24") from None
    bad = [layer for layer in layers if not 0 <= layer < n_layers]
    if bad or not layers:
        raise ResaError(f"--layers {spec!r}: layer {bad[0] if bad else '?'} is outside the model (0..{n_layers - 1})")
    return sorted(set(layers))


NUMBERING = "layers are hook indices (blocks.N, 0-based); the paper's 'N-th layer' is blocks.N-1"
"""The one line that reports and figure axes use to say which numbering they show."""
