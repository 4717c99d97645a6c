"""Tuning checkpoints, CHECKPOINTS/step-N/: the adapter, the optimizer and schedule, and every process's RNG
state, so that a resumed run continues to the same result as an uninterrupted one."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from resa_interp.checkpoints import STATE, load_state, refuse_pickled, save_state
from resa_interp.errors import ResaError
from resa_interp.model import save_adapter
from resa_interp.runs import atomic_dir
from resa_interp.tuning.tuner import SAETuner

CHECKPOINTS = "checkpoints"


def checkpoint_dirs(out: Path) -> list[Path]:
    root = out / CHECKPOINTS
    found = [p for p in root.glob("step-*") if (p / STATE).is_file()] if root.is_dir() else []
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def refuse_pickled_checkpoints(out: Path) -> None:
    """Refuse the checkpoints of versions that pickled them (step-N/state.pt, rng-R.pt), without reading them."""
    for path in sorted((out / CHECKPOINTS).glob("step-*/*.pt")):
        refuse_pickled(path, f"rerun without --resume into another --out, or delete {out / CHECKPOINTS} to start over")


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(tuner: SAETuner, out: Path, step: int, elapsed_s: float) -> None:
    """CHECKPOINTS/step-N/: adapter/, the optimizer and schedule (state.json + tensors.safetensors) and each
    process's RNG state (rng-R/), the folder written atomically by the main process once every process has
    written its RNG state."""
    accelerator = tuner.accelerator
    target = out / CHECKPOINTS / f"step-{step:06d}"
    with atomic_dir(target.parent / f".rng-step-{step:06d}-rank{accelerator.process_index}") as tmp:
        save_state(tmp, _rng_state())
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        with atomic_dir(target) as tmp:
            save_adapter(tuner.model, tmp / "adapter", tuner.subject.spec)
            for rank in range(accelerator.num_processes):
                (target.parent / f".rng-step-{step:06d}-rank{rank}").rename(tmp / f"rng-{rank}")
            save_state(
                tmp,
                {
                    "step": step,
                    "optimizer": tuner.optimizer.state_dict(),
                    "scheduler": tuner.scheduler.state_dict(),
                    "elapsed_s": elapsed_s,
                },
            )
    accelerator.wait_for_everyone()


def load_checkpoint(tuner: SAETuner, checkpoint: Path) -> dict[str, Any]:
    """Restore the adapter, optimizer, schedule and this process's RNG state; every file is checked before any is
    applied."""
    from peft import set_peft_model_state_dict
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    state = load_state(checkpoint)
    rng = checkpoint / f"rng-{tuner.accelerator.process_index}"
    if not rng.is_dir():
        raise ResaError(f"checkpoint {checkpoint} was written by fewer processes; resume with the same process count")
    rng_state = load_state(rng)
    adapter = checkpoint / "adapter" / "adapter_model.safetensors"
    if not adapter.is_file():
        raise ResaError(f"checkpoint {checkpoint} is incomplete (no adapter); delete it to start over")
    try:
        weights = load_file(str(adapter), device=tuner.device)
    except SafetensorError as err:
        raise ResaError(f"checkpoint {checkpoint}: {adapter.name} is not a safetensors file ({err}); delete it to "
                        f"start over") from None
    set_peft_model_state_dict(tuner.model, weights)
    tuner.optimizer.load_state_dict(state["optimizer"])
    tuner.scheduler.load_state_dict(state["scheduler"])
    _set_rng_state(rng_state)
    return state
