"""Stage I: TopK SAEs at every selected layer of a source model, all trained from ONE forward pass per batch.

Data flow: CoT-free trigger texts -> one HF forward pass per batch of sequences (`model.harvest.Harvester`), or
the same batches read from an activation cache (`sae.activations`) -> per-layer shuffle buffers in memory ->
each layer's SAE steps on minibatches (`sae.topk_kernel`; or SAELens' own trainer and architectures,
`sae.saelens_trainer`, with --trainer saelens) -> SAELens SAE folders `RUN/saes/<hook_name>/` ->
held-out quality (`sae.metrics`).

Training works on inputs scaled to unit mean norm (one factor per layer, measured on the first buffer); the
factor is folded into the saved weights, so the saved SAEs read raw activations and reconstruct them in raw
units. The first (sink) position of every sequence is excluded unless asked; with packing (`pack`) a sequence
is a chunk of the EOS-joined text stream, so that is each chunk's first position, wherever it falls in a text.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from resa_interp.data import chunk_length
from resa_interp.errors import ResaError
from resa_interp.model import Subject, hook_name, load_subject, resolve_device
from resa_interp.numbering import parse_layers
from resa_interp.runs import atomic_dir, record_stage, run_relative
from resa_interp.sae.activations import ActivationCache, ModelFeed, warn_emulated_bf16
from resa_interp.sae.checkpoint import Checkpoint
from resa_interp.sae.config import SAETrainConfig
from resa_interp.sae.folders import load_sae, record_firing, sae_dir
from resa_interp.sae.metrics import add_novel_quality, evaluate_saes, novel_texts, write_metrics
from resa_interp.sae.plan import plan_memory
from resa_interp.sae.pretrained import check_source_sae, load_source_sae
from resa_interp.sae.ranks import RoutedFeed, gather_objects, layer_owners, most_per_rank, sae_to_rank_zero
from resa_interp.sae.saelens_trainer import trainer_label
from resa_interp.sae.train_log import StageOneLog, merge_steps, summary
from resa_interp.sae.trainer import DEAD_WINDOW, GroupTrainer, TrainSteps, select_dtype
from resa_interp.sae.trigger_data import prepends_bos, trigger_data
from resa_interp.shards import Shard, is_main_process, launcher_shard, process_group
from resa_interp.tracking import Tracker, open_tracker

log = logging.getLogger(__name__)


@dataclass
class StageIResult:
    """What a Stage I run produced."""

    run: Path
    sae_dirs: dict[int, Path]
    metrics: list[dict] = field(default_factory=list)
    seed_dirs: dict[int, dict[int, Path]] = field(default_factory=dict)
    """Further seeds (`SAETrainConfig.seeds`): seed -> layer -> SAE folder."""
    seed_metrics: dict[int, list[dict]] = field(default_factory=dict)
    """Further seeds: seed -> their held-out metrics rows."""
    tokens_per_layer: int = 0
    wall_seconds: float = 0.0
    train_seconds: float = 0.0
    """Of the wall time, the training itself (activations in, SAE steps; no loading, export or metrics)."""


def _sae_metadata(cfg: SAETrainConfig, origin: dict, layer: int, tokens: int) -> dict:
    return {
        "model_name": origin["model"],
        "model_path": origin["model_path"],
        "hook_name": hook_name(cfg.hook, layer),
        "hook_layer": layer,
        "model_class_name": "HookedTransformer",
        "dataset_path": cfg.dataset,
        "dataset_fingerprint": origin["dataset_fingerprint"],
        "template": cfg.template,
        "packed": cfg.pack,
        "training_tokens": tokens,
        "mode": cfg.mode,
        "source": cfg.source,
        "source_hook": cfg.resolved_source_hook() if cfg.source else None,
        "seed": cfg.seed,
        "excluded_first_positions": 0 if cfg.keep_first else 1,
        "seqpos_slice": [None] if cfg.keep_first else [1, None],
        "exclude_special_tokens": False,
        "optimizer": cfg.optimizer,
        "lr": cfg.lr,
        "trainer": trainer_label(cfg),
        "select_precision": cfg.select_precision,
    }


def _export(sae_obj, path: Path) -> Path:
    with atomic_dir(path) as tmp:
        sae_obj.save_model(tmp)
    return path


def train_saes(
    cfg: SAETrainConfig, run: str | Path, subject: Subject | None = None, resume: bool = False
) -> StageIResult:
    """Train (or import) one SAE per selected layer into `run`/saes, then measure their held-out quality. With
    `cfg.activations` the SAEs train from that cache and the model is loaded only for the metrics. As one of
    several launcher ranks (torchrun, accelerate launch) the rank trains its share of the layers (`sae.ranks`)
    and sends each finished SAE to rank 0, which alone writes the SAE folders, measures them all and writes the
    metrics and the manifest; the other ranks return a result without metrics."""
    cfg.check()
    shard = launcher_shard()
    if shard.sharded and cfg.mode == "pretrained":
        raise ResaError(f"--mode pretrained under {shard.count} launcher ranks: importing SAEs trains nothing to "
                        "spread; run it in one process")
    tracker = open_tracker(cfg.report_to, main=is_main_process())
    with process_group(shard, resolve_device(cfg.device)):
        stage = _StageOne(cfg, Path(run), subject, shard, tracker)
        tracker.start(dataclasses.asdict(cfg), stage.run, stage.run.name)
        try:
            stage.produce(resume)
            if not stage.talks:  # rank 0 measures every layer's SAEs and writes the run's records
                return stage.result({}, time.time() - stage.t0)
            metrics = stage.measure()
            wall = time.time() - stage.t0
            stage.record(wall)
            tracker.summary(summary(cfg, metrics, {"tokens_per_layer": stage.tokens_trained, "wall_seconds": wall,
                                                   "train_seconds": stage.train_seconds}))
            return stage.result(metrics, wall)
        finally:
            stage.curves.close()
            tracker.finish()


class _StageOne:
    """One Stage I run as it goes: its inputs (model and data, or a cache), the SAEs finished so far and where they
    are, then the held-out metrics and the manifest (rank 0)."""

    def __init__(self, cfg: SAETrainConfig, run: Path, subject: Subject | None, shard: Shard, tracker: Tracker):
        self.cfg, self.run, self.shard = cfg, run, shard
        self.talks = is_main_process()
        self.curves = StageOneLog(cfg, run, tracker)
        """The training curves (RUN/saes/train_log.jsonl and the tracker; rank 0 writes them)."""
        self.t0 = time.time()
        self.cache = ActivationCache(cfg.activations) if cfg.activations else None
        self.subject, self.data = subject, None
        if self.cache is None:
            self.subject = subject or load_subject(cfg.model, dtype=cfg.model_dtype, device=cfg.device)
            warn_emulated_bf16(self.subject)
            self.layers = parse_layers(cfg.layers, self.subject.facts.n_layers)
            self.data = trigger_data(cfg, self.subject)
            self.origin = {"model": self.subject.spec, "model_path": str(self.subject.path),
                           "dataset_fingerprint": self.data.fingerprint}
            self.device, self.d_model = self.subject.device, self.subject.hook_width(cfg.hook)
        else:
            self.layers = parse_layers(cfg.layers, self.cache.manifest["n_layers"])
            self.cache.check(cfg, self.layers)
            self.origin = {key: self.cache.manifest[key] for key in ("model", "model_path", "dataset_fingerprint")}
            self.device, self.d_model = resolve_device(cfg.device), self.cache.d_model
        self.owners = layer_owners(self.layers, shard)
        self.checkpoint = Checkpoint(run, cfg.semantic_hash(), shard)
        self.done: dict[tuple[int, int], float] = {}
        """Finished (layer, seed) SAEs -> their dead fraction over the training window."""
        self.dirs: dict[tuple[int, int], Path] = {}
        self.tokens_trained, self.train_seconds = 0, 0.0

    def folder(self, key: tuple[int, int]) -> Path:
        """The SAE folder of (layer, seed)."""
        return sae_dir(self.run, self.cfg.hook, key[0], None if key[1] == self.cfg.seed else key[1])

    def produce(self, resume: bool) -> None:
        """Import or train every SAE not finished yet (resuming the checkpoint in the run folder, if any)."""
        cfg = self.cfg
        state = self.checkpoint.load()
        if resume and state is None:
            raise ResaError(f"--resume: {self.run} has no interrupted Stage I run to continue")
        plan = plan_memory(cfg, self.d_model, most_per_rank(self.owners), self.device)
        if self.talks:
            log.info("%s%s", plan.describe(most_per_rank(self.owners)),
                     f" on each of {self.shard.count} ranks" if self.shard.sharded else "")
        self.done = dict(state["done"]) if state else {}
        self.dirs = {key: self.folder(key) for key in self.done}
        todo = [layer for layer in self.layers if any((layer, seed) not in self.done for seed in cfg.all_seeds)]
        if cfg.mode == "pretrained":
            for layer in todo:
                sae = load_source_sae(cfg.source, layer, cfg.resolved_source_hook())
                check_source_sae(sae, self.subject.hook_width(cfg.hook), cfg.source)
                for key, value in _sae_metadata(cfg, self.origin, layer, 0).items():
                    setattr(sae.cfg.metadata, key, value)
                self.dirs[layer, cfg.seed] = _export(sae, self.folder((layer, cfg.seed)))
            return
        if self.talks:
            self.curves.open(state)
        # the ranks go through the same groups, each of them training its own layers of a group
        size = min(gather_objects(plan.group_size, "planning")) if self.shard.sharded else plan.group_size
        step = size * self.shard.count
        groups = [todo[i : i + step] for i in range(0, len(todo), step)]
        for group in groups:
            self.train_group(group, state)
            state = None
            if group is not groups[-1]:
                self.checkpoint.save({"done": self.done, "group": None})
        if self.talks:
            self.checkpoint.clear()

    def train_group(self, group: list[int], state: dict | None) -> None:
        """Train the SAEs of `group` (this rank's layers of it) and write them (rank 0)."""
        from tqdm.auto import tqdm

        cfg, shard = self.cfg, self.shard
        first = hook_name(cfg.hook, group[0])
        desc = f"SAEs {first}..{group[-1]}" if len(group) > 1 else first
        if len(cfg.all_seeds) > 1:
            desc += f" x {len(cfg.all_seeds)} seeds"
        mine = [layer for layer in group if self.owners[layer] == shard.index]
        if self.cache:
            feed = self.cache.feed(mine, self.device)
        else:
            harvest = dict(subject=self.subject, hook=cfg.hook, layers=group, texts=self.data.train,
                           prefix_len=self.data.prefix_len, seq_batch=cfg.seq_batch,
                           exclude=0 if cfg.keep_first else 1)
            feed = RoutedFeed(**harvest, owners=self.owners, shard=shard) if shard.sharded else ModelFeed(**harvest)
        started = time.time()
        with tqdm(total=cfg.tokens, desc=desc, unit="tok", unit_scale=True, dynamic_ncols=True,
                  disable=not self.talks) as progress:
            trainer = GroupTrainer(cfg, mine, feed.d_model, feed.device)
            if state is not None and state.get("group") == mine:
                trainer.load_state_dict(state)
            trained = trainer.fit(feed, progress, lambda group_state: self.checkpoint.save(
                {"done": self.done, **group_state}), self.report)
        if self.talks:
            self.curves.end_group(trainer.steps)
        self.train_seconds += time.time() - started
        for layer, seed in [(layer, seed) for layer in group for seed in cfg.all_seeds]:
            sae, exported = trained.get((layer, seed)), None
            if sae is not None:  # this rank's SAE
                self.tokens_trained = int(sae.tokens_seen)
                meta = {**_sae_metadata(cfg, self.origin, layer, self.tokens_trained), "seed": seed,
                        "source_folds": sae.source_notes}
                exported = sae.export(meta)
                self.done[layer, seed] = sae.dead_fraction(min(DEAD_WINDOW, max(self.tokens_trained, 1)))
            if shard.sharded:  # only rank 0 writes the run's files: the owner sends it the SAE (on the CPU)
                exported = sae_to_rank_zero(exported, shard,
                                            f"sending the SAE of {hook_name(cfg.hook, layer)} (seed {seed}) to rank 0")
            if self.talks:
                self.dirs[layer, seed] = _export(exported, self.folder((layer, seed)))
        if shard.sharded:  # every rank learns which SAEs are finished (rank 0 has written them by now)
            for finished, tokens in gather_objects((self.done, self.tokens_trained), "collecting finished layers"):
                self.done.update(finished)
                self.tokens_trained = max(self.tokens_trained, tokens)
            self.dirs.update({key: self.folder(key) for key in self.done})

    def report(self, steps: TrainSteps) -> None:
        """One flush's steps to the training curves (every rank's, which rank 0 gathers)."""
        if self.shard.sharded:
            steps = merge_steps(gather_objects(steps, "collecting the training curves"))
        if self.talks:
            self.curves.add(steps)

    def measure(self) -> dict[int, list[dict]]:
        """Rank 0: every seed's held-out metrics, written to the run with each SAE's firing counts."""
        cfg, run = self.cfg, self.run
        if self.cache is not None:  # the metrics need the model and the held-out texts, which the cache does not hold
            self.subject = self.subject or load_subject(cfg.model, dtype=cfg.model_dtype, device=cfg.device)
            self.data = trigger_data(cfg, self.subject)
            if self.data.fingerprint != self.origin["dataset_fingerprint"]:
                log.warning("dataset %s changed since the cache was harvested; held-out metrics use today's texts",
                            cfg.dataset)
        subject = self.subject
        context = chunk_length(subject.tokenizer, cfg.max_seq_len) if cfg.pack else cfg.max_seq_len
        facts = {"prepend_bos": prepends_bos(subject.tokenizer), "context_size": context}
        metrics: dict[int, list[dict]] = {}
        novel = novel_texts(subject.tokenizer, cfg.heldout, cfg.template, cfg.max_seq_len)
        for seed in cfg.all_seeds:
            final = {layer: load_sae(self.dirs[layer, seed], device=str(subject.device)) for layer in self.layers}
            firing: dict[int, Tensor] = {}
            # the spliced-in figures (a forward pass per layer) for the run's seed only: further seeds are there to be
            # matched, and their reconstruction figures say whether they are as good
            metrics[seed] = evaluate_saes(subject, final, cfg.hook, self.data.heldout, keep_first=cfg.keep_first,
                                          firing=firing, splice=seed == cfg.seed)
            add_novel_quality(metrics[seed], evaluate_saes(subject, final, cfg.hook, novel,
                                                           keep_first=cfg.keep_first, splice=False))
            for row in metrics[seed]:
                record_firing(self.dirs[row["layer"], seed], firing[row["layer"]], row["heldout_tokens"], facts)
                row["sae_path"] = run_relative(self.dirs[row["layer"], seed], run)
                row["dead_fraction_training"] = self.done.get((row["layer"], seed))
            write_metrics(run, metrics[seed], None if seed == cfg.seed else seed)
        return metrics

    def record(self, wall: float) -> None:
        """Rank 0: the run's manifest entry for this stage."""
        cfg, device = self.cfg, self.subject.device
        record_stage(
            self.run,
            "train-saes",
            {
                "config": dataclasses.asdict(cfg),
                **self.origin,
                "activations": str(self.cache.path) if self.cache else None,
                "layers": self.layers,
                "seeds": list(cfg.all_seeds),
                "world_size": self.shard.count,
                "rank_of_layer": {str(layer): rank for layer, rank in self.owners.items()},
                "tokens_per_layer": self.tokens_trained,
                "wall_seconds": round(wall, 1),
                "train_seconds": round(self.train_seconds, 1),
                "device": str(device),
                "select_precision": str(select_dtype(cfg, device) or torch.float32).removeprefix("torch."),
            },
        )

    def result(self, metrics: dict[int, list[dict]], wall: float) -> StageIResult:
        """The `StageIResult` (on ranks other than 0, without metrics)."""
        seed = self.cfg.seed
        extra = [s for s in metrics if s != seed]
        return StageIResult(
            self.run,
            {layer: self.dirs[layer, seed] for layer in self.layers},
            metrics.get(seed, []),
            {s: {layer: self.dirs[layer, s] for layer in self.layers} for s in extra},
            {s: metrics[s] for s in extra},
            self.tokens_trained,
            wall,
            self.train_seconds,
        )
