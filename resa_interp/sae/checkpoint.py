"""Resumable state of a Stage I run (`Checkpoint`): folders RUN/saes/.checkpoint-N/ written whole, one per launcher
rank under several ranks."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from resa_interp.checkpoints import load_state, refuse_pickled, save_state
from resa_interp.errors import ResaError
from resa_interp.runs import atomic_dir
from resa_interp.sae.folders import SAES_DIR
from resa_interp.sae.ranks import barrier
from resa_interp.shards import ONLY, Shard

CHECKPOINT = ".checkpoint"
RANK_STATE = "rank"
"""A checkpoint of several launcher ranks holds each rank's state in rank-R/."""
PICKLED_CHECKPOINT = ".checkpoint.pt"
"""Where versions before safetensors checkpoints kept a pickle (refused, never read)."""


class Checkpoint:
    """Resumable state of a run: RUN/saes/.checkpoint-N/, tensors in safetensors and the rest in JSON
    (`checkpoints.save_state`). Each save is a new folder renamed in whole, and older ones are removed only after
    it: whenever the process dies, a complete checkpoint is on disk. Across launcher ranks each rank writes its own
    state to .checkpoint-N.ranks/rank-R/, and rank 0 renames the folder to .checkpoint-N once all ranks have
    written theirs; it resumes only under the same number of ranks."""

    def __init__(self, run: Path, cfg_hash: str, shard: Shard = ONLY):
        self.root = run / SAES_DIR
        self.cfg_hash = cfg_hash
        self.shard = shard

    def saved(self) -> list[Path]:
        """Complete checkpoint folders, oldest first."""
        found = [p for p in self.root.glob(f"{CHECKPOINT}-*") if p.is_dir() and p.name.rsplit("-", 1)[1].isdigit()]
        return sorted(found, key=lambda p: int(p.name.rsplit("-", 1)[1]))

    def load(self) -> dict | None:
        """The latest complete checkpoint's state (this rank's), None when there is none; refused in one line when
        another configuration or number of ranks wrote it."""
        refuse_pickled(self.root / PICKLED_CHECKPOINT, "delete it to start this run over, or use another --out")
        if self.shard.index == 0:  # a save that ranks never finished (no rank writes before rank 0 has loaded)
            for staged in self.root.glob(f"{CHECKPOINT}-*.ranks"):
                shutil.rmtree(staged, ignore_errors=True)
        saved = self.saved()
        if not saved:
            return None
        ranks = len(list(saved[-1].glob(f"{RANK_STATE}-*")))
        if ranks != (self.shard.count if self.shard.sharded else 0):
            by, how = (f"{ranks} launcher ranks", f"--nproc-per-node {ranks}") if ranks else ("one process",
                                                                                               "no launcher")
            this = self.shard.label if self.shard.sharded else "one process"
            raise ResaError(f"{saved[-1]} was written by {by}, this is {this}: resume it with {how}, or delete it "
                            "to start over")
        state = load_state(saved[-1] / f"{RANK_STATE}-{self.shard.index}" if ranks else saved[-1])
        if not isinstance(state, dict) or state.get("cfg_hash") != self.cfg_hash:
            raise ResaError(
                f"{self.root.parent} holds an interrupted Stage I run with a different configuration; "
                f"use another --out, or delete {saved[-1]} to start over"
            )
        return state

    def save(self, state: dict) -> None:
        """Write `state` (tensors and JSON values) as the next checkpoint, then remove the older ones."""
        saved = self.saved()
        number = int(saved[-1].name.rsplit("-", 1)[1]) + 1 if saved else 0
        final = self.root / f"{CHECKPOINT}-{number}"
        staged = final.with_name(f"{final.name}.ranks") if self.shard.sharded else final
        with atomic_dir(staged / f"{RANK_STATE}-{self.shard.index}" if self.shard.sharded else final) as tmp:
            save_state(tmp, {**state, "cfg_hash": self.cfg_hash})
        if self.shard.sharded:
            barrier("writing a checkpoint")
            if self.shard.index == 0:
                os.replace(staged, final)
        if self.shard.index == 0:
            for old in saved:
                shutil.rmtree(old, ignore_errors=True)
        if self.shard.sharded:
            barrier("writing a checkpoint")  # the next save numbers its folder from what is on disk now

    def clear(self) -> None:
        """Remove every checkpoint (the run is finished)."""
        for folder in self.saved():
            shutil.rmtree(folder, ignore_errors=True)
