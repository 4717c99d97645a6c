"""peft LoRA adapters: check that an adapter fits a model, merge it into the weights, and attach an adapter
trained on one model to another of the same architecture (the paper's reasoning-as-an-adapter, section 4)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from resa_interp.errors import ResaError, first_line
from resa_interp.model.loading import resolve_dtype, resolve_model_path
from resa_interp.runs import atomic_dir, atomic_write_json

if TYPE_CHECKING:
    from transformers import PreTrainedModel

ADAPTER_FACTS = "resa_adapter.json"
"""Written beside a peft adapter by `tune`: the architecture and shape of the model it was trained on."""
_WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")
_PEFT_PREFIX = "base_model.model."


def read_adapter_config(adapter: str | Path) -> dict:
    """The adapter's `adapter_config.json`, or a one-line error if the path is no peft adapter."""
    path = Path(adapter)
    config = path / "adapter_config.json"
    if not config.is_file():
        raise ResaError(f"adapter {str(adapter)!r}: no adapter_config.json there, so it is not a peft adapter folder")
    return json.loads(config.read_text())


def model_facts(model: PreTrainedModel) -> dict:
    """What an adapter records about the model it was trained on (compared again when it is attached)."""
    config = model.config
    return {
        "architecture": (getattr(config, "architectures", None) or [type(model).__name__])[0],
        "model_type": config.model_type,
        "n_layers": config.num_hidden_layers,
        "d_model": config.hidden_size,
    }


def write_adapter_facts(adapter: str | Path, model: PreTrainedModel, base_model: str) -> None:
    """Record beside a saved adapter which model (spec and architecture) it was trained on."""
    atomic_write_json(Path(adapter) / ADAPTER_FACTS, {"base_model": base_model, **model_facts(model)})


def save_adapter(peft_model, out: str | Path, base_model: str) -> Path:
    """Save a peft model's adapter (plus which model it was trained on) into `out`, atomically."""
    with atomic_dir(out) as tmp:
        peft_model.save_pretrained(tmp)
        write_adapter_facts(tmp, peft_model.get_base_model(), base_model)
        world_readable(tmp)
    return Path(out)


def world_readable(root: Path) -> None:
    """Files under `root` readable by all (safetensors writes 0600), like every other artifact of a run."""
    for path in root.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)


def adapter_shapes(adapter: str | Path) -> dict[str, dict[str, tuple[int, ...]]]:
    """Module path -> {'lora_A': shape, 'lora_B': shape} for every LoRA pair in the adapter's weight file."""
    path = Path(adapter)
    weights = next((path / name for name in _WEIGHT_FILES if (path / name).is_file()), None)
    if weights is None:
        raise ResaError(f"adapter {str(adapter)!r}: no {' or '.join(_WEIGHT_FILES)} there")
    if weights.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(weights), framework="pt") as handle:
            shapes = {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
    else:
        shapes = {key: tuple(t.shape) for key, t in torch.load(weights, map_location="cpu", weights_only=True).items()}
    modules: dict[str, dict[str, tuple[int, ...]]] = {}
    for key, shape in shapes.items():
        for part in ("lora_A", "lora_B"):
            marker = f".{part}."
            if marker in key:
                module = key.split(marker)[0].removeprefix(_PEFT_PREFIX)
                modules.setdefault(module, {})[part] = shape
    return modules


def check_adapter_fits(model: PreTrainedModel, adapter: str | Path, spec: str = "the model") -> None:
    """Refuse, in one line, an adapter trained on another architecture or whose modules or shapes the model
    does not have (peft itself would only warn about adapter weights that go nowhere)."""
    from torch import nn

    read_adapter_config(adapter)
    facts_file = Path(adapter) / ADAPTER_FACTS
    if facts_file.is_file():
        trained_on = json.loads(facts_file.read_text())
        here = model_facts(model)
        if trained_on.get("architecture") != here["architecture"]:
            raise ResaError(
                f"adapter {str(adapter)!r} was trained on {trained_on.get('architecture')} "
                f"({trained_on.get('base_model')}), but {spec} is {here['architecture']}; "
                f"attach needs a model of the same architecture"
            )
    modules = adapter_shapes(adapter)
    if not modules:
        raise ResaError(f"adapter {str(adapter)!r}: its weight file holds no LoRA (lora_A/lora_B) weights")
    by_position = sorted(modules.items(), key=lambda item: [int(t) if t.isdigit() else t for t in item[0].split(".")])
    for name, pair in by_position:
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise ResaError(
                f"adapter {str(adapter)!r} adapts module {name}, which {spec} does not have "
                f"({model.config.num_hidden_layers} layers); attach needs the same architecture and size"
            ) from None
        if not isinstance(module, nn.Linear) or "lora_A" not in pair or "lora_B" not in pair:
            raise ResaError(f"adapter {str(adapter)!r}: module {name} is not a LoRA-adapted linear layer in {spec}")
        want = (pair["lora_A"][1], pair["lora_B"][0])
        have = (module.in_features, module.out_features)
        if want != have:
            raise ResaError(
                f"adapter {str(adapter)!r}: {name} was {want[0]}->{want[1]} where it was trained, but is "
                f"{have[0]}->{have[1]} in {spec}; attach needs the same architecture and size"
            )


def merge_adapter(model: PreTrainedModel, adapter: str | Path, spec: str = "the model") -> PreTrainedModel:
    """Load a peft LoRA adapter onto `model` and merge it into the base weights (returns the plain model)."""
    from peft import PeftModel

    check_adapter_fits(model, adapter, spec)
    try:
        peft_model = PeftModel.from_pretrained(model, str(adapter))
    except (RuntimeError, ValueError, KeyError) as exc:
        raise ResaError(f"adapter {str(adapter)!r} does not fit {spec}: {first_line(exc)}") from exc
    return peft_model.merge_and_unload()


def attach(adapter: str | Path, model: str | None, out: str | Path, dtype: str = "auto") -> Path:
    """Merge `adapter` into the model `model` (any spec, possibly not the one it was trained on) and write
    the merged HF model with its tokenizer into `out`. The merge is computed in float32 and saved in `dtype`
    ('auto': the checkpoint's own dtype). Returns `out`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model_path(model)
    config = json.loads((path / "config.json").read_text())
    saved = resolve_dtype(config.get("dtype") or config.get("torch_dtype") or "float32") if dtype == "auto" else None
    target_dtype = saved or resolve_dtype(dtype)
    base = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    merged = merge_adapter(base, adapter, spec=model or "the embedded default model").to(target_dtype)
    with atomic_dir(out) as tmp:
        merged.save_pretrained(tmp)
        AutoTokenizer.from_pretrained(path).save_pretrained(tmp)
        world_readable(tmp)
    return Path(out)
