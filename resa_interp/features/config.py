"""What a features run is told: `FeatureConfig` (one declaration of every option of `resa-interp features`: the
CLI's options, defaults and help come from its fields) and the choices it accepts: the definition (`DEFINITIONS`:
the paper's marker rule, or ReasonScore over reasoning texts with its settings).

Nothing here loads a model or an SAE: `FeatureConfig.check` refuses bad settings and prompts in one line first.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from resa_interp.data import END_THINK, R1_SYSTEM_PROMPT, THINK
from resa_interp.errors import ResaError, check_choice
from resa_interp.model import canonical_hook

MARKER_RULES = ("any", "last", "all")
"""How a marker that tokenizes into several tokens counts as active: on any token of its span, its last, or all."""
OCCURRENCES = ("all", "any")
"""Which occurrences of each marker a feature must be active at: every one, or at least one."""
DEFINITIONS = ("markers", "reasonscore")
"""What a reasoning feature is: 'markers' (Resa's: active only at the prompts' `<think>`/`</think>`) or
'reasonscore' (Galichin et al. 2025: a high ReasonScore over reasoning texts, `features.reasonscore`)."""
REASON_WORDS = (
    "alternatively", " alternatively", "Alternatively", " Alternatively", "hmm", " hmm", "Hmm", " Hmm",
    "maybe", " maybe", "Maybe", " Maybe", "wait", " wait", "Wait", " Wait", "perhaps", " perhaps", "Perhaps",
    " Perhaps", "let me", " let me", "Let me", " Let me", "therefore", " therefore", "Therefore", " Therefore",
    "however", " however", "However", " However", "But", "Another",
)
"""ReasonScore's reasoning words as the authors' `extraction/reason_tokens.json` lists them (34 strings; spellings
that differ only by a leading space or case form one word: 10 words)."""
DEFAULT_MATCH_THRESHOLD = 0.7
"""Decoder cosine a cross-seed match needs (`features.stability` says why 0.7). A literal: the CLI reads it from
this file's source."""


@dataclass
class FeatureConfig:
    """How reasoning features are extracted: the definition's settings, the prompts, and where the model and the
    SAEs come from."""

    definition: str = "markers"
    """What a reasoning feature is: 'markers' (the paper's rule: active only at <think> and </think> of the
    prompts) or 'reasonscore' (Galichin et al. 2025: the highest ReasonScore over the reasoning texts of --texts)."""
    texts: str | None = None
    """reasonscore: JSONL of reasoning texts, a 'text' per row (needed by that definition, read by no other)."""
    reason_words: str | None = None
    """reasonscore: JSON file with the list of reasoning-word strings (as the authors' reason_tokens.json; spellings
    that differ by a leading space or case count as one word); none: the authors' list of 10 words ('wait', 'hmm',
    'however', ...)."""
    window_before: int = 1
    """reasonscore: tokens before each reasoning word that count as its window (the authors: 1)."""
    window_after: int = 2
    """reasonscore: tokens after each reasoning word that count as its window (the authors: 2)."""
    alpha: float = 0.7
    """reasonscore: exponent of the normalised entropy over the words, the penalty on latents that fire at few of
    them (the authors: 0.7)."""
    quantile: float = 0.997
    """reasonscore: keep the latents whose score is above this quantile of their SAE's scores (0.997: the top 0.3%)."""
    top_k: int | None = None
    """reasonscore: instead of --quantile, keep the k highest-scoring latents of each SAE (the authors' dashboard
    script: 100)."""
    threshold: float = 0.0
    """A latent is active at a position when its activation is above this (the paper: 0)."""
    relative_threshold: float = 0.0
    """A declared tolerance relative to each latent's peak: active only above this fraction of the latent's largest
    activation over the prompt (when that is above the threshold); 0 keeps the paper's rule."""
    noise: bool = True
    """Recompute the latents along independent code paths (TransformerLens, SAELens' hooked model, the other
    precision), measure their numerical noise, and report which features sit within it of the definition's
    boundary and the feature set each path finds."""
    marker_rule: str = "any"
    """Multi-token markers: active when 'any' token of the span is, its 'last' token, or 'all' of its tokens."""
    occurrences: str = "all"
    """'all': active at every <think> and every </think>; 'any': at least one of each."""
    spliced: bool = False
    """Read the activations of the model with every SAE's reconstruction spliced in at once (position 0 kept
    clean), instead of the model's own."""
    exclude_first: bool = False
    """Also exclude position 0 when the tokenizer adds no BOS (there it is a high-norm sink token)."""
    model: str | None = None
    """Model spec: HF folder, .gguf file, hub id (org/name) or 'smollm2-135m'; none: the embedded model
    (smollm2-135m). The SAEs must have been trained on it, unless a mismatch is allowed."""
    prompts: tuple[str, ...] = (R1_SYSTEM_PROMPT,)
    """Prompts to run, each with both markers; a latent must qualify in every one (default: the R1 system prompt as
    the authors' code writes it, the text the trigger data starts with)."""
    saes: str | None = None
    """Stage I run whose SAEs to use (its saes/ folder); none: the output folder itself."""
    source: str | None = None
    """Pretrained SAEs to use instead of a Stage I run (SAELens folder or run, sparsify folder, or RELEASE:SAE_ID);
    overrides the Stage I run."""
    layers: str | None = None
    """Layers (hook indices, blocks.N) to extract at: 'A-B', 'L,L,...' or 'all'; none: 1..L-2, the paper's cut."""
    hook: str = "resid_post"
    """Hookpoint of the SAEs: resid_post, mlp_out, resid_pre, resid_mid, attn_out or a TransformerLens hook name
    pattern with the layer as {l}."""
    allow_model_mismatch: bool = False
    """Use SAEs trained on another model (of the same width) instead of refusing them."""
    device: str = "cpu"
    """Device for the model and the SAEs: cpu, cuda, cuda:N or auto."""
    dtype: str = "float32"
    """Weights dtype of the model (float32, bfloat16, float16)."""
    match_threshold: float = DEFAULT_MATCH_THRESHOLD
    """Multi-seed runs: the decoder cosine similarity a cross-seed match needs (0.7: far above chance for unrelated
    latents, below what the same feature learnt from another initialisation reaches)."""
    min_seeds: int | None = None
    """Multi-seed runs: a reasoning feature is stable when matched in at least this many seeds (none: a
    majority); at most the run's number of seeds."""

    def check(self) -> None:
        """One-line errors for settings and prompts no extraction can use, before any model or SAE is loaded."""
        if not 0 < self.match_threshold <= 1:
            raise ResaError(f"--match-threshold {self.match_threshold}: a decoder cosine similarity, accepted in "
                            "(0, 1]")
        if not 0 <= self.relative_threshold < 1:
            raise ResaError(f"--relative-threshold {self.relative_threshold}: a fraction of each latent's peak "
                            "activation, accepted in [0, 1)")
        if self.min_seeds is not None and self.min_seeds < 1:
            raise ResaError(f"--min-seeds {self.min_seeds}: a feature is stable in at least 1 seed; accepted 1..N")
        check_choice("--definition", self.definition, DEFINITIONS)
        if self.definition == "reasonscore":
            self._check_reasonscore()
        check_choice("--marker-rule", self.marker_rule, MARKER_RULES)
        check_choice("--occurrences", self.occurrences, OCCURRENCES)
        self.hook = canonical_hook(self.hook)
        prompts = [self.prompts] if isinstance(self.prompts, str) else list(self.prompts)
        if not prompts:
            raise ResaError("no prompts to run; give one with --prompt or a --prompt-file")
        for text in prompts:
            require_markers(text)


    def _check_reasonscore(self) -> None:
        """The ReasonScore settings (the texts themselves are read and checked by `features.reasonscore`)."""
        if self.texts is None:
            raise ResaError("--definition reasonscore needs --texts FILE.jsonl (reasoning texts, a 'text' per row)")
        if not Path(self.texts).is_file():
            raise ResaError(f"--texts {self.texts!r}: no such file; accepted a JSONL file, a 'text' per row")
        if self.reason_words is not None and not Path(self.reason_words).is_file():
            raise ResaError(f"--reason-words {self.reason_words!r}: no such file; accepted a JSON list of strings")
        if min(self.window_before, self.window_after) < 0:
            raise ResaError(f"--window-before {self.window_before} / --window-after {self.window_after}: token "
                            "counts, accepted >= 0")
        if self.alpha < 0:
            raise ResaError(f"--alpha {self.alpha}: an entropy exponent, accepted >= 0")
        if not 0 < self.quantile < 1:
            raise ResaError(f"--quantile {self.quantile}: a quantile of the scores, accepted in (0, 1)")
        if self.top_k is not None and self.top_k < 1:
            raise ResaError(f"--top-k {self.top_k}: a number of latents, accepted >= 1")


def require_markers(text: str) -> None:
    """A one-line error for a prompt without `<think>` or without `</think>` (a prompt needs both)."""
    missing = [m for m in (THINK, END_THINK) if m not in text]
    if missing:
        raise ResaError(f"prompt {text[:40]!r}...: has no {' and no '.join(missing)}; a prompt needs both markers")
