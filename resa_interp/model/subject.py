"""Load any causal LM as a `Subject`: the HF model (for hooks, peft and tuning), its tokenizer, facts about
it, and on demand the same weights as a HookedTransformer (for analysis).

A model spec is one of: a local HF model directory, a `.gguf` file, a hub id (`org/name`), or an alias of
the embedded default (`smollm2-135m`, also `default`). GGUF files are converted once into an ordinary HF
directory in the cache, so later loads are fast. TransformerLens configs are derived from the checkpoint's
own HF config, so checkpoints outside TransformerLens' official list (DeepSeek-R1-Distill-Qwen-1.5B, Tina
merges, local fine-tunes) load with their own rope settings and embedding tying.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from resa_interp.data.templates import R1_SYSTEM_PROMPT, marker_spans
from resa_interp.errors import ResaError
from resa_interp.model.adapters import merge_adapter
from resa_interp.model.hooks import HOOKS, decoder_layers, hook_module, hook_name
from resa_interp.model.loading import (
    EMBEDDED_ALIASES,
    quiet_transformers,
    resolve_device,
    resolve_dtype,
    resolve_model_path,
)

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

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
    markers: dict[str, list[str]]
    """How `<think>` and `</think>` tokenize inside the R1 system prompt (token strings)."""

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form for JSON."""
        return asdict(self)


@dataclass
class Subject:
    """A loaded model: HF weights and tokenizer, facts, and a lazily built HookedTransformer view."""

    spec: str
    path: Path
    hf: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    facts: ModelFacts
    tl_config: HookedTransformerConfig = field(repr=False)
    adapter: str | None = None
    _hooked: HookedTransformer | None = field(default=None, repr=False)

    @property
    def device(self) -> torch.device:
        """Device of the HF model's parameters."""
        return next(self.hf.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """Dtype of the HF model's parameters."""
        return next(self.hf.parameters()).dtype

    @property
    def hooked(self) -> HookedTransformer:
        """The same weights as a HookedTransformer (no weight processing: hook activations are the model's own)."""
        if self._hooked is None:
            self._hooked = build_hooked(self)
        return self._hooked

    def layers(self) -> nn.ModuleList:
        """The HF decoder layers, in order."""
        return decoder_layers(self.hf)

    def hook_module(self, hook: str, layer: int) -> nn.Module:
        """HF module whose output is the activation named by `hook_name(hook, layer)`."""
        return hook_module(self.hf, hook, layer)

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
    from transformers import AutoModelForCausalLM, AutoTokenizer

    quiet_transformers()
    path = resolve_model_path(spec)
    torch_dtype = resolve_dtype(dtype)
    target = resolve_device(device)
    config = json.loads((path / "config.json").read_text())
    architecture = (config.get("architectures") or ["?"])[0]
    if not architecture.endswith("ForCausalLM"):
        raise ResaError(f"model {spec!r}: architecture {architecture} is not a causal LM")
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype)
        tokenizer = AutoTokenizer.from_pretrained(path)
    except Exception as exc:  # corrupt or foreign files raise many types (OSError, SafetensorError, ValueError, ...)
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ResaError(f"model {spec!r}: transformers could not load {path} ({reason})") from exc
    if adapter is not None:
        model = merge_adapter(model, adapter)
    model.to(target).eval()
    return Subject(
        spec=spec or EMBEDDED_ALIASES[0],
        path=path,
        hf=model,
        tokenizer=tokenizer,
        facts=_facts(model, tokenizer, architecture),
        tl_config=transformer_lens_config(path, model),
        adapter=adapter,
    )


def _facts(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, architecture: str) -> ModelFacts:
    config = model.config
    n_layers = config.num_hidden_layers
    rope = getattr(config, "rope_parameters", None) or {}
    rope_theta = rope.get("rope_theta", getattr(config, "rope_theta", None))
    encoded = tokenizer(R1_SYSTEM_PROMPT, add_special_tokens=True)
    ids = encoded["input_ids"]
    spans = marker_spans(R1_SYSTEM_PROMPT, tokenizer)
    markers = {m: tokenizer.convert_ids_to_tokens(ids[s:e]) for m, ((s, e), *_) in spans.spans.items()}
    return ModelFacts(
        architecture=architecture,
        n_layers=n_layers,
        d_model=config.hidden_size,
        d_vocab=config.vocab_size,
        tied_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
        rope_theta=float(rope_theta) if rope_theta is not None else None,
        adds_bos=spans.bos_prepended,
        hook_names={hook: [hook_name(hook, layer) for layer in range(n_layers)] for hook in HOOKS},
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


def transformer_lens_config(path: Path, hf_model: PreTrainedModel) -> HookedTransformerConfig:
    """HookedTransformerConfig derived from the checkpoint's own HF config (never a listed model's).

    TransformerLens guesses the architecture from names that contain 'llama' or 'gemma', so the config is
    read through a neutrally named link to the directory. Raises a one-line error for unsupported models.
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
        except (NotImplementedError, ValueError, KeyError, AttributeError) as exc:
            raise ResaError(
                f"model {path}: TransformerLens cannot build architecture "
                f"{hf_model.config.architectures[0]} ({exc})"
            ) from exc


def build_hooked(subject: Subject) -> HookedTransformer:
    """HookedTransformer with the subject's own weights and no weight processing (no folding, no centring),
    so activations at every hook equal the HF model's and SAEs trained on them splice back into it."""
    from transformer_lens import HookedTransformer
    from transformer_lens.loading_from_pretrained import get_pretrained_state_dict

    cfg = subject.tl_config
    with _neutral_name(subject.path) as neutral:
        model = HookedTransformer(cfg, subject.tokenizer, move_to_device=False, default_padding_side="right")
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

