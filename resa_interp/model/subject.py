"""Load any decoder-only causal LM as a `Subject`: the HF model (for hooks, peft and tuning), its tokenizer,
facts about it, and on demand a TransformerLens view of the same weights (for analysis).

The view is a HookedTransformer where TransformerLens can build one from the checkpoint's config, else a
TransformerBridge (TransformerLens 3's wrapper of an HF model, with the same hook names; SAELens'
`SAETransformerBridge`), else none: every stage runs on the HF model with hooks and needs no view.

A model spec is one of: a local HF model directory, a `.gguf` file, a hub id (`org/name`), or an alias of
the embedded default (`smollm2-135m`, also `default`). GGUF files are converted once into an ordinary HF
directory in the cache, so later loads are fast. TransformerLens configs are derived from the checkpoint's
own HF config, so checkpoints outside TransformerLens' official list (DeepSeek-R1-Distill-Qwen-1.5B, Tina
merges, local fine-tunes) load with their own rope settings and embedding tying.
"""

from __future__ import annotations

import contextlib
import copy
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from resa_interp.data import R1_SYSTEM_PROMPT, marker_spans
from resa_interp.errors import ResaError, first_line
from resa_interp.model.adapters import merge_adapter
from resa_interp.model.harvest import Harvester
from resa_interp.model.hooks import HOOKS, canonical_hook, decoder_layers, hf_point, hook_name
from resa_interp.model.loading import (
    EMBEDDED_ALIASES,
    quiet_transformers,
    resolve_device,
    resolve_dtype,
    resolve_model_path,
)

if TYPE_CHECKING:
    from sae_lens import HookedSAETransformer, SAETransformerBridge
    from transformer_lens import HookedTransformerConfig
    from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

VIEWS = ("HookedTransformer", "TransformerBridge", "none")
"""TransformerLens views of a model, in order of preference."""

@dataclass(frozen=True)
class ModelFacts:
    """What later stages need to know about a model, printable by `resa-interp info`."""

    architecture: str
    n_layers: int
    d_model: int
    d_vocab: int
    tied_embeddings: bool
    rope_theta: float | None
    adds_bos: bool
    hook_names: dict[str, list[str]] = field(repr=False)
    view: str
    """Which TransformerLens view `Subject.hooked` gives (one of `VIEWS`; 'none': no analysis view)."""
    markers: dict[str, list[str]]
    """How `<think>` and `</think>` tokenize inside the R1 system prompt (token strings)."""

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form for JSON."""
        return asdict(self)


@dataclass
class Subject:
    """A loaded model: HF weights and tokenizer, facts, and a lazily built TransformerLens view."""

    spec: str
    path: Path
    hf: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    facts: ModelFacts
    tl_config: HookedTransformerConfig | None = field(repr=False)
    """The HookedTransformer config derived from the checkpoint, None where TransformerLens cannot build one."""
    adapter: str | None = None
    _hooked: HookedSAETransformer | SAETransformerBridge | None = field(default=None, repr=False)

    @property
    def device(self) -> torch.device:
        """Device of the HF model's parameters."""
        return next(self.hf.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """Dtype of the HF model's parameters."""
        return next(self.hf.parameters()).dtype

    @property
    def hooked(self) -> HookedSAETransformer | SAETransformerBridge:
        """The same weights as a TransformerLens view that SAELens attaches SAEs to (`facts.view` says which):
        no weight processing, so hook activations are the model's own."""
        if self._hooked is None:
            if self.facts.view == "HookedTransformer":
                self._hooked = build_hooked(self)
            elif self.facts.view == "TransformerBridge":
                self._hooked = build_bridge(self)
            else:
                raise ResaError(
                    f"model {self.spec!r}: TransformerLens has no view of {self.facts.architecture} (neither "
                    "HookedTransformer nor TransformerBridge); every stage runs without one, analysis in "
                    "TransformerLens does not"
                )
        return self._hooked

    def layers(self) -> nn.ModuleList:
        """The HF decoder layers, in order."""
        return decoder_layers(self.hf)

    def harvester(self, hook: str, layers: Sequence[int], stop_early: bool = True) -> Harvester:
        """The `Harvester` of `hook` at `layers`: forward hooks on the HF model where it has a module for the hook
        at every layer, else this subject's TransformerLens view (built on first use)."""
        fast = all(hf_point(self.hf, hook, layer) is not None for layer in layers)
        return Harvester(self.hf, hook, layers, stop_early, view=None if fast else self.hooked)

    def hook_width(self, hook: str) -> int:
        """Width of `hook`'s activation per position: d_model on the residual stream and sublayer outputs, else
        measured on a two-token input (n_heads * d_head for attn.hook_z, d_mlp for mlp.hook_post, ...)."""
        if canonical_hook(hook) in HOOKS:
            return self.facts.d_model
        return int(self.harvester(hook, [0])(torch.zeros(1, 2, dtype=torch.long))[0].shape[-1])

    def check_layer(self, layer: int) -> None:
        """Raise a one-line error for a layer outside the model."""
        if not 0 <= layer < self.facts.n_layers:
            raise ResaError(f"layer {layer} is outside the model: it has layers 0..{self.facts.n_layers - 1}")


def load_subject(
    spec: str | None = None,
    *,
    adapter: str | None = None,
    dtype: str | torch.dtype = "float32",
    device: str = "cpu",
) -> Subject:
    """Load a model spec (plus an optional peft LoRA adapter merged on load) as a `Subject`."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    quiet_transformers()
    path = resolve_model_path(spec)
    torch_dtype = resolve_dtype(dtype)
    target = resolve_device(device)
    try:
        config = AutoConfig.from_pretrained(path)
    except Exception as exc:  # an unknown model type or a malformed config.json
        raise ResaError(f"model {spec!r}: transformers cannot read {path / 'config.json'} ({first_line(exc)})") from exc
    check_decoder_only(config, spec)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype)
        tokenizer = AutoTokenizer.from_pretrained(path)
    except Exception as exc:  # corrupt or foreign files raise many types (OSError, SafetensorError, ValueError, ...)
        raise ResaError(f"model {spec!r}: transformers could not load {path} ({first_line(exc)})") from exc
    if adapter is not None:
        model = merge_adapter(model, adapter)
    model.to(target).eval()
    tl_config = transformer_lens_config(path, model)
    view = "HookedTransformer" if tl_config is not None else "TransformerBridge" if has_bridge(config) else "none"
    return Subject(
        spec=spec or EMBEDDED_ALIASES[0],
        path=path,
        hf=model,
        tokenizer=tokenizer,
        facts=_facts(model, tokenizer, view),
        tl_config=tl_config,
        adapter=adapter,
    )


def check_decoder_only(config: PretrainedConfig, spec: str | None) -> None:
    """Refuse in one line an encoder-decoder (seq2seq) model, a model type without a causal LM in
    transformers, and a checkpoint saved from another head (an encoder such as BertForMaskedLM)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES as CAUSAL

    declared = list(getattr(config, "architectures", None) or [])
    named = declared[0] if declared else config.model_type
    if getattr(config, "is_encoder_decoder", False):
        raise ResaError(
            f"model {spec!r}: {named} is an encoder-decoder (seq2seq) model; accepted: decoder-only causal LMs"
        )
    if config.model_type not in CAUSAL or (declared and not set(declared) & set(CAUSAL.values())):
        raise ResaError(
            f"model {spec!r}: {named} is not a decoder-only causal LM (transformers' causal LM for model type "
            f"{config.model_type!r}: {CAUSAL.get(config.model_type, 'none')}); accepted: decoder-only causal LMs"
        )


def has_bridge(config: PretrainedConfig) -> bool:
    """Whether TransformerLens 3 has a TransformerBridge adapter for this HF config's architecture."""
    from transformer_lens.factories.architecture_adapter_factory import SUPPORTED_ARCHITECTURES
    from transformer_lens.model_bridge.sources.transformers import determine_architecture_from_hf_config

    try:
        return determine_architecture_from_hf_config(config) in SUPPORTED_ARCHITECTURES
    except ValueError:
        return False


def _facts(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, view: str) -> ModelFacts:
    config = model.config.get_text_config()
    n_layers = config.num_hidden_layers
    rope = getattr(config, "rope_parameters", None) or {}
    rope_theta = rope.get("rope_theta", getattr(config, "rope_theta", None))
    encoded = tokenizer(R1_SYSTEM_PROMPT, add_special_tokens=True)
    ids = encoded["input_ids"]
    spans = marker_spans(R1_SYSTEM_PROMPT, tokenizer)
    markers = {m: tokenizer.convert_ids_to_tokens(ids[s:e]) for m, ((s, e), *_) in spans.spans.items()}
    return ModelFacts(
        architecture=type(model).__name__,
        n_layers=n_layers,
        d_model=config.hidden_size,
        d_vocab=config.vocab_size,
        tied_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
        rope_theta=float(rope_theta) if rope_theta is not None else None,
        adds_bos=spans.bos_prepended,
        hook_names={hook: [hook_name(hook, layer) for layer in range(n_layers)] for hook in HOOKS},
        view=view,
        markers=markers,
    )


@contextlib.contextmanager
def _neutral_name(path: Path) -> Iterator[str]:
    """`path` reached through a link named 'model', with TransformerLens' warnings silenced: TransformerLens
    guesses the architecture from names that contain 'llama' or 'gemma'."""
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        neutral = Path(tmp) / "model"
        neutral.symlink_to(path, target_is_directory=True)
        yield str(neutral)


def transformer_lens_config(path: Path, hf_model: PreTrainedModel) -> HookedTransformerConfig | None:
    """HookedTransformerConfig derived from the checkpoint's own HF config (never a listed model's), or None
    where TransformerLens cannot build a HookedTransformer for it.

    TransformerLens guesses the architecture from names that contain 'llama' or 'gemma', so the config is
    read through a neutrally named link to the directory.
    """
    from transformer_lens.loading_from_pretrained import get_pretrained_model_config

    n_ctx = min(int(getattr(hf_model.config, "max_position_embeddings", 2048) or 2048), 4096)
    with _neutral_name(path) as neutral:
        try:
            return get_pretrained_model_config(
                neutral,
                hf_cfg=hf_model.config.to_dict(),
                fold_ln=False,
                device=str(next(hf_model.parameters()).device),
                dtype=next(hf_model.parameters()).dtype,
                n_ctx=n_ctx,
            )
        except (NotImplementedError, ValueError, KeyError, AttributeError):
            return None


def build_hooked(subject: Subject) -> HookedSAETransformer:
    """HookedTransformer (SAELens' HookedSAETransformer) with the subject's own weights and no weight
    processing (no folding, no centring), so activations at every hook equal the HF model's and SAEs trained
    on them splice back into it."""
    from sae_lens import HookedSAETransformer
    from transformer_lens.loading_from_pretrained import get_pretrained_state_dict

    cfg = subject.tl_config
    with _neutral_name(subject.path) as neutral:
        model = HookedSAETransformer(cfg, subject.tokenizer, move_to_device=False, default_padding_side="right")
        state = get_pretrained_state_dict(neutral, cfg, hf_model=subject.hf, dtype=subject.dtype)
        model.load_and_process_state_dict(
            state,
            fold_ln=False,
            center_writing_weights=False,
            center_unembed=False,
            fold_value_biases=False,
            refactor_factored_attn_matrices=False,
        )
    return model.to(subject.device).eval()



def build_bridge(subject: Subject) -> SAETransformerBridge:
    """TransformerBridge (SAELens' SAETransformerBridge) around a copy of the subject's HF model (the bridge
    rewires the model it wraps, and the subject's own model keeps its module names for hooks and peft), with
    HookedTransformer's hook names in hooks and caches and no weight processing, so its hooks see the HF
    model's own activations."""
    from sae_lens import SAETransformerBridge

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bridge = SAETransformerBridge.boot_transformers(
            str(subject.path),
            hf_model=copy.deepcopy(subject.hf),
            tokenizer=subject.tokenizer,
            device=subject.device,
            dtype=subject.dtype,
        )
        bridge.enable_compatibility_mode(disable_warnings=True, no_processing=True)  # HookedTransformer names
    return bridge.eval()
