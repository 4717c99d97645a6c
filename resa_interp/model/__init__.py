"""Model: any model spec (HF folder, .gguf, hub id, the embedded default) loaded as a `Subject` (HF model,
tokenizer, facts, a TransformerLens view on demand), its hookpoints, and reading or replacing activations there.

Takes a model spec (and optionally a peft adapter); gives a `Subject`, hook names and modules, activations
harvested at many layers in one forward pass (`Harvester`), SAEs spliced into the forward pass (`spliced`),
and adapters saved, merged or attached to another model of the family (`attach`).
"""

from resa_interp.model.adapters import attach, merge_adapter, save_adapter
from resa_interp.model.config import AttachConfig, InfoConfig
from resa_interp.model.harvest import (
    EncodedText,
    Harvester,
    Prefix,
    TextBatch,
    cache_kwarg,
    encode_packed,
    encode_texts,
    iter_batches,
    make_batch,
    shared_prefix_length,
)
from resa_interp.model.hooks import (
    HOOKS,
    MLP_NAMES,
    SPLICE_HOOKS,
    canonical_hook,
    check_splice_hook,
    decoder_layers,
    hf_point,
    hook_name,
    parse_hook_name,
    splice_point,
)
from resa_interp.model.loading import (
    EMBEDDED_ALIASES,
    cache_dir,
    hub_id,
    model_shape,
    quiet_transformers,
    resolve_device,
    resolve_dtype,
    resolve_model_path,
)
from resa_interp.model.splice import rewrite_at, spliced
from resa_interp.model.subject import ModelFacts, Subject, build_hooked, load_subject
from resa_interp.model.tiny import build_random_model, build_tiny_model

__all__ = [
    "AttachConfig",
    "EMBEDDED_ALIASES",
    "EncodedText",
    "HOOKS",
    "Harvester",
    "InfoConfig",
    "MLP_NAMES",
    "ModelFacts",
    "Prefix",
    "SPLICE_HOOKS",
    "Subject",
    "TextBatch",
    "attach",
    "build_hooked",
    "build_random_model",
    "build_tiny_model",
    "cache_dir",
    "cache_kwarg",
    "canonical_hook",
    "check_splice_hook",
    "decoder_layers",
    "encode_packed",
    "encode_texts",
    "hf_point",
    "hook_name",
    "hub_id",
    "iter_batches",
    "load_subject",
    "make_batch",
    "merge_adapter",
    "model_shape",
    "parse_hook_name",
    "quiet_transformers",
    "resolve_device",
    "resolve_dtype",
    "resolve_model_path",
    "rewrite_at",
    "save_adapter",
    "shared_prefix_length",
    "splice_point",
    "spliced",
]
