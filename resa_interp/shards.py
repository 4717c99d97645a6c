"""Which share of a job this process does: shard I of N, from `--shard I/N` (job arrays: one independent process
per shard) or from the launcher (torchrun/accelerate: the rank and world size, from torch.distributed when it is
initialised, else the RANK and WORLD_SIZE variables), and the split of a list of work items among the shards."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

import torch
import torch.distributed as dist

from resa_interp.errors import ResaError, first_line

T = TypeVar("T")


@dataclass(frozen=True)
class Shard:
    """Shard `index` of `count` (0 <= index < count)."""

    index: int = 0
    count: int = 1
    launched: bool = False
    """True for a rank of a launcher (torchrun, accelerate), whose processes run at the same time and can wait for
    each other; False for `--shard` (job arrays), whose shards may run at any time, one after another too."""

    @property
    def sharded(self) -> bool:
        """More than one shard."""
        return self.count > 1

    @property
    def label(self) -> str:
        """'rank 1/4' (launcher) or 'shard 1/4' (--shard)."""
        return f"{'rank' if self.launched else 'shard'} {self.index}/{self.count}"

    def take(self, items: list[T]) -> list[T]:
        """This shard's items: every count-th from the index-th, `items[index::count]` (balanced to within one
        item, and the same split in every process)."""
        return items[self.index::self.count]


ONLY = Shard()
"""The whole job in one process."""


def parse_shard(text: str) -> Shard:
    """`--shard I/N`: shard I of N, 0 <= I < N."""
    index, sep, count = text.partition("/")
    if sep and index.strip().isdigit() and count.strip().isdigit() and int(index) < int(count):
        return Shard(int(index), int(count))
    raise ResaError(f"--shard {text!r}: expected I/N with 0 <= I < N (e.g. 0/4 for the first of four shards)")


def launcher_shard() -> Shard:
    """This process's rank among a launcher's: torch.distributed's when initialised, else RANK/WORLD_SIZE (set by
    torchrun and accelerate), else the only shard."""
    if dist.is_available() and dist.is_initialized():
        return Shard(dist.get_rank(), dist.get_world_size(), launched=True)
    if "WORLD_SIZE" in os.environ and "RANK" in os.environ:
        return Shard(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), launched=True)
    return ONLY


def is_main_process() -> bool:
    """Whether this process is its launcher's rank 0, or runs on its own (a `--shard` process too): the one that
    prints a run's settings and summary and writes what all ranks share."""
    return launcher_shard().index == 0


def process_shard(option: str | None) -> Shard:
    """The shard of this process: `--shard` when given (refused under a launcher with more than one rank, whose
    ranks would all do the same shard), else the launcher's."""
    launched = launcher_shard()
    if option is None:
        return launched
    if launched.sharded:
        raise ResaError(f"--shard {option!r} under a launcher with {launched.count} ranks: the ranks already split "
                        "the work; drop --shard (or launch one process per shard)")
    return parse_shard(option)


def pin_rank_gpu() -> None:
    """Under a launcher, give each rank its own GPU: CUDA_VISIBLE_DEVICES becomes the LOCAL_RANK-th of the visible
    devices, so that 'cuda' (and a vLLM engine started from this process) means that GPU. It must run before
    anything touches CUDA; nothing happens without LOCAL_RANK or with one rank. One rank per GPU: a rank beyond
    the node's GPUs is left with none (CUDA cannot be asked how many there are without fixing the choice)."""
    local_rank = os.environ.get("LOCAL_RANK")
    if local_rank is None or not launcher_shard().sharded:
        return
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    devices = visible.split(",") if visible else None
    if devices is None:
        os.environ["CUDA_VISIBLE_DEVICES"] = local_rank
    elif int(local_rank) < len(devices):
        os.environ["CUDA_VISIBLE_DEVICES"] = devices[int(local_rank)]


RANK_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE",
                  "ROLE_RANK", "ROLE_WORLD_SIZE")
"""What torchrun and accelerate set to tell a process its rank (MASTER_ADDR and MASTER_PORT are kept)."""


@contextlib.contextmanager
def on_its_own() -> Iterator[None]:
    """Inside: this rank looks like a single process to what it runs (the launcher's rank variables removed), so
    that accelerate (tuning) and vLLM (evaluation) do not join the other ranks, which run other work; restored
    after. A process group already initialised cannot be hidden and is refused."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        raise ResaError(f"torch.distributed is initialised with {dist.get_world_size()} ranks: per-rank work runs "
                        "one process per rank; start it before init_process_group (torchrun does not initialise one)")
    saved = {name: os.environ.pop(name) for name in RANK_VARIABLES if name in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def wait_for_all_ranks(shard: Shard, timeout: timedelta = timedelta(days=7)) -> None:
    """Block until every rank of the launcher got here (a gloo barrier, set up for it and taken down after, at the
    launcher's MASTER_ADDR:MASTER_PORT). The timeout is long: ranks wait for the slowest one's work, and a rank
    that fails ends the others through the launcher."""
    dist.init_process_group("gloo", rank=shard.index, world_size=shard.count, timeout=timeout)
    try:
        dist.barrier()
    finally:
        dist.destroy_process_group()


def require_one_process(command: str) -> None:
    """Refuse, in one line, to run `command` as one of several launcher ranks: it is single-process, and every rank
    would do the whole job into the same output folder."""
    launched = launcher_shard()
    if launched.sharded:
        raise ResaError(f"{command} under a launcher with {launched.count} ranks: it runs in one process (every rank "
                        "would do the whole job into the same folder); run it without torchrun/accelerate launch")


TIMEOUT_VARIABLE = "RESA_DIST_TIMEOUT"
"""Seconds a rank waits in a collective (and for the others to start) before it gives up; default 600."""


def collective_timeout() -> timedelta:
    """The collectives' timeout: RESA_DIST_TIMEOUT seconds, else 10 minutes."""
    text = os.environ.get(TIMEOUT_VARIABLE, "600")
    if not text.isdigit() or int(text) < 1:
        raise ResaError(f"{TIMEOUT_VARIABLE}={text!r}: expected a whole number of seconds, at least 1")
    return timedelta(seconds=int(text))


@contextlib.contextmanager
def process_group(shard: Shard, device: torch.device) -> Iterator[None]:
    """Inside: torch.distributed joins the launcher's ranks (NCCL for a CUDA device, else gloo; the launcher's
    MASTER_ADDR:MASTER_PORT; `collective_timeout`), taken down after. Nothing happens for a single process or when
    a process group is already initialised (by accelerate, say), which is then left as it is."""
    if not shard.sharded or dist.is_initialized():
        yield
        return
    with peers("setting up the process group"):
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=shard.index,
                                world_size=shard.count, timeout=collective_timeout())
    try:
        yield
    finally:
        dist.destroy_process_group()


@contextlib.contextmanager
def peers(what: str) -> Iterator[None]:
    """Around a collective: the error of a rank that died, or stopped answering within the timeout, becomes one
    line that names this rank and the step (the launcher then stops the others)."""
    try:
        yield
    except RuntimeError as err:  # torch.distributed.DistError and the backends' errors derive from it
        shard, first = launcher_shard(), first_line(err)
        raise ResaError(f"{shard.label}: another rank died or stopped answering while {what} ({first[:200]}); "
                        "the run stopped; rerun it with the same number of ranks once that rank's cause is fixed "
                        f"(it resumes from the last checkpoint; {TIMEOUT_VARIABLE} sets the wait in seconds)") from None
