"""What `steer` and `trace` run: `SteerConfig` and `TraceConfig` (a docstring under every field, which is also its
`--help`), the fields they share (`EditedLatents`) and the `--latents` parser."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from resa_interp.errors import ResaError, check_choice
from resa_interp.features import REASONING
from resa_interp.interventions.hook import MODES

TEXT_SOURCES = ("r1-prompt", "trigger")


@dataclass
class EditedLatents:
    """The latents an intervention reads or edits: a run's SAEs, which latents, and the model they run in (the
    fields `steer` and `trace` share)."""

    run: str
    """Run folder with saes/ (and features.json for 'reasoning')."""
    layers: str | None = None
    """Only these layers (blocks.N): A-B or L,L,...; unset: every layer with chosen latents."""
    latents: str = REASONING
    """'reasoning' (the run's reasoning features, per layer) or LAYER:ID pairs like 3:17,3:20,6:5."""
    model: str | None = None
    """Model to run (a model spec: HF folder, .gguf file, hub id org/name, or smollm2-135m); unset: the one the
    SAEs were trained on."""
    hook: str | None = None
    """Hookpoint kind (resid_post, mlp_out, ...); unset: features.json's, else resid_post."""
    device: str = "cpu"
    """Device of the model and the SAEs: cpu, cuda, cuda:N or auto."""


@dataclass
class SteerConfig(EditedLatents):
    """What to edit, how, and on which texts."""

    mode: str = "ablate"
    """ablate (set to 0) | clamp (set to --value) | scale (times --value)."""
    value: float = 0.0
    """Clamp value or scale factor (ablate ignores it)."""
    texts: str = "trigger"
    """r1-prompt | trigger (synthetic trigger texts) | FILE.jsonl ('text', or 'problem' and 'answer', per row)."""
    n_texts: int = 16
    """Teacher-forced texts to measure on (trigger data and JSONL files: the first ones)."""
    generate: int = 0
    """Questions to continue greedily (clean, edited, control); 0: none."""
    max_new_tokens: int = 96
    """Tokens per greedy continuation."""
    control_draws: int = 3
    """Independent draws of frequency-matched random latents."""
    window: int = 20
    """A control latent is drawn among this many latents nearest in firing-frequency quantile."""
    keep_first: int = 1
    """Positions before this keep their clean activation (the sink position 0)."""
    batch_size: int = 8
    """Teacher-forced texts per forward pass."""
    samples: int = 4
    """Teacher-forced texts whose per-position effects go into samples.json/html."""
    bootstrap: int = 1000
    """Bootstrap resamples of the texts."""
    seed: int = 0
    """Seed of the control draws, the bootstrap and the synthetic texts."""

    def check(self) -> None:
        """One-line errors for settings nothing can run with, before any model is loaded."""
        check_choice("--mode", self.mode, MODES)
        if self.texts not in TEXT_SOURCES and not Path(self.texts).is_file():
            raise ResaError(f"--texts {self.texts!r}: accepted r1-prompt, trigger or an existing .jsonl file")
        if min(self.n_texts, self.control_draws, self.window, self.bootstrap, self.batch_size) < 1 \
                or self.generate < 0:
            raise ResaError("--n-texts, --control-draws, --window and --bootstrap must be >= 1, --generate >= 0")
        if self.generate and self.texts == "r1-prompt":
            raise ResaError("--generate needs questions: use --texts trigger or a JSONL file with problem/answer")


@dataclass
class TraceConfig(EditedLatents):
    """Which latents to trace, over which text."""

    text: str | None = None
    """Text to trace."""
    generate: int = 0
    """Instead of --text: trace a greedy continuation of this many tokens after a synthetic question in the r1
    template (ending in an open <think>)."""
    seed: int = 0
    """Which synthetic question --generate continues."""

    def check(self) -> None:
        """One-line errors for a trace with no text or with two."""
        if (self.text is None) == (self.generate <= 0):
            raise ResaError("trace needs exactly one of --text TEXT and --generate N (N >= 1)")


def parse_latents(spec: str) -> dict[int, list[int]]:
    """'3:17,3:20,6:5' -> {3: [17, 20], 6: [5]} (one-line error otherwise)."""
    chosen: dict[int, list[int]] = {}
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        layer, sep, latent = part.partition(":")
        if not sep or not layer.strip().isdigit() or not latent.strip().isdigit():
            raise ResaError(f"--latents {part!r}: accepted 'reasoning' or LAYER:ID pairs like 3:17,6:5")
        chosen.setdefault(int(layer), []).append(int(latent))
    if not chosen:
        raise ResaError(f"--latents {spec!r}: no LAYER:ID pairs given")
    return {layer: sorted(set(ids)) for layer, ids in sorted(chosen.items())}
