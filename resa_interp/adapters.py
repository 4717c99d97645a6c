"""peft LoRA adapters: check that an adapter fits a model, and merge it into the weights."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from resa_interp.errors import ResaError

if TYPE_CHECKING:
    from transformers import PreTrainedModel


def read_adapter_config(adapter: str | Path) -> dict:
    """The adapter's `adapter_config.json`, or a one-line error if the path is no peft adapter."""
    path = Path(adapter)
    config = path / "adapter_config.json"
    if not config.is_file():
        raise ResaError(f"adapter {str(adapter)!r}: no adapter_config.json there, so it is not a peft adapter folder")
    return json.loads(config.read_text())


def merge_adapter(model: PreTrainedModel, adapter: str | Path) -> PreTrainedModel:
    """Load a peft LoRA adapter onto `model` and merge it into the base weights (returns the plain model)."""
    from peft import PeftModel

    read_adapter_config(adapter)
    try:
        peft_model = PeftModel.from_pretrained(model, str(adapter))
    except (RuntimeError, ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ResaError(f"adapter {str(adapter)!r} does not fit this model: {first}") from exc
    return peft_model.merge_and_unload()
