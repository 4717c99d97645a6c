"""What a dashboard holds: per latent its statistics, contexts, logit effects and prompt activations, and the set
of latents from one run with what they were computed from (plain data: `dashboard.json` is their `asdict`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from resa_interp.interventions import AblationEffect


@dataclass
class Context:
    """A window of one text around a top-activating token."""

    text: int
    """Index of the trigger text; -1 for the shared prefix (the same in every text)."""
    position: int
    """Position of the peak token in its text."""
    value: float
    tokens: list[str]
    acts: list[float]
    peak: int
    """Index of the peak token within `tokens`."""
    at_marker: bool
    """Whether the peak token is part of a `<think>` or `</think>`."""
    sinks: list[bool]
    """Which tokens of the window are excluded sinks."""


@dataclass
class FeatureDashboard:
    """Everything shown for one latent."""

    layer: int
    feature: int
    hook_name: str
    reasoning: bool
    """Listed as a reasoning feature of this layer in the run's features.json."""
    frequency: float
    """Fraction of the data's (non-sink) positions where the latent fires."""
    max_activation: float
    mean_when_firing: float
    histogram_edges: list[float]
    histogram_counts: list[float]
    """Positions per bin (the shared prefix counted once per text), firing positions only."""
    contexts: list[Context]
    at_marker_share: float
    """Fraction of the top contexts whose peak is part of a `<think>` or `</think>` (0 when there are none)."""
    logits_positive: list[tuple[str, float]]
    logits_negative: list[tuple[str, float]]
    prompt_acts: list[float]
    """Activation at every token of the features prompt."""
    marker_activations: dict[str, list[float]]
    """Marker -> activation at each occurrence in the prompt (by the features run's marker rule)."""
    ablation: AblationEffect | None = None
    """What ablating this latent alone (the SAE's error term kept) does on the prompt: the mean change of log p at
    its `<think>`/`</think>` tokens and at the others, and the KL from the clean model (`interventions`)."""

    @property
    def anchor(self) -> str:
        """HTML id of this latent's section."""
        return f"L{self.layer}-F{self.feature}"


@dataclass
class DashboardData:
    """Dashboards of several latents from one run, with what they were computed from (`html.DashboardSet` adds
    their display in Jupyter)."""

    run: str
    model: str
    hook: str
    dataset: str
    template: str
    n_texts: int
    n_positions: int
    """Positions in the data (prefix once per text), sinks included."""
    sinks: dict[int, int]
    """Layer -> positions excluded as sinks (prefix positions once per text); empty with include_sinks."""
    threshold: float
    sink_rule: str
    logit_rule: str
    prompt_tokens: list[str]
    prompt_markers: dict[str, list[list[int]]]
    prompt_excluded: list[int]
    """Prompt positions the features run excluded (a BOS it prepended)."""
    marker_rule: str
    features: list[FeatureDashboard] = field(default_factory=list)

    def to_dict(self) -> dict:
        """Plain-dict form for JSON."""
        return asdict(self)
