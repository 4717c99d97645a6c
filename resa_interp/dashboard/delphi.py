"""delphi's latent cache of a run's SAEs over its trigger data, so delphi's explainers and scorers label them.

delphi (EleutherAI's auto-interpretability) reads a folder per hookpoint (`delphi.latents.LatentDataset`), as its
`LatentCache.save_splits` and `save_config` write them (`delphi/latents/cache.py`):

- `<start>_<end>.safetensors`: the latents `start..end` (inclusive) of the SAE, the width split into `n_splits`
  ranges at `torch.linspace(0, width, n_splits + 1).long()`; in each, `locations` [N, 3] (row, position, latent
  minus `start`; uint16 when the rows and offsets fit, else uint32), `activations` [N] (float16) of every
  activation above 1e-5 in (row, position, latent) order, and `tokens` [rows, ctx_len] (the whole cache's ids);
- `config.json`: delphi's `CacheConfig` fields and `model_name` (the hub id, else the local model), plus a
  `resa_interp` block (the run, the SAE, the trigger data, and the run's reasoning features at that layer when
  its features.json has them).

The cache: the trigger texts (by default the SAEs' dataset and template) packed into rows of `ctx_len` tokens as
delphi's own cache is (`model.encode_packed`, one stream; every position kept), run through the model, and
encoded by each SAE. OUT/latents/ is delphi's `raw_dir` (its `results/<name>/latents/`), one folder per hook
name; OUT/tokenizer/ is the model's tokenizer, which delphi needs to show the contexts.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from resa_interp.dashboard.config import DelphiConfig
from resa_interp.data import format_trigger, load_qa
from resa_interp.errors import ResaError
from resa_interp.features import model_spec
from resa_interp.model import canonical_hook, encode_packed, hook_name, hub_id, load_subject
from resa_interp.numbering import layer_ranges, parse_layers
from resa_interp.runs import atomic_dir
from resa_interp.sae import check_export_target, check_sae_fits, load_sae, require_sae_dirs, run_sae_dirs

LATENTS_DIR = "latents"
TOKENIZER_DIR = "tokenizer"
ACTIVE = 1e-5
"""delphi's cache keeps an activation where its magnitude exceeds this (`InMemoryCache.get_nonzeros`)."""


@dataclass(frozen=True)
class DelphiExport:
    """What `export_delphi` wrote."""

    out: Path
    hookpoints: dict[str, int]
    """Hook name (the folder under OUT/latents) -> activations cached."""
    shards: dict[str, list[tuple[int, int]]]
    """Hook name -> the (start, end) latent range of each shard, inclusive."""
    rows: int
    ctx_len: int


def shard_ranges(width: int, n_splits: int) -> list[tuple[int, int]]:
    """The inclusive latent ranges of the shards, as delphi's `LatentCache._generate_split_indices` makes them."""
    bounds = torch.linspace(0, width, steps=n_splits + 1).long().tolist()
    return list(zip(bounds[:-1], [b - 1 for b in bounds[1:]]))


def shard_arrays(locations: torch.Tensor, activations: torch.Tensor, tokens: np.ndarray, start: int,
                 end: int) -> dict[str, np.ndarray]:
    """One shard's tensors from a hookpoint's (row, position, latent) `locations` and `activations`: the latents
    start..end, offsets from `start`, in delphi's dtypes (`LatentCache.save_splits`)."""
    mask = (locations[:, 2] >= start) & (locations[:, 2] <= end)
    loc = locations[mask].numpy().copy()
    loc[:, 2] -= start
    small = len(loc) == 0 or (loc[:, 2].max() < 2**16 and loc[:, 0].max() < 2**16)
    return {"locations": loc.astype(np.uint16 if small else np.uint32),
            "activations": activations[mask].half().numpy(), "tokens": tokens}


def _reasoning(run: Path, hook: str, seed: int | None) -> dict[int, list[int]]:
    """Layer -> the run's reasoning features (features.json) when they are of these SAEs."""
    path = run / "features.json"
    if seed is not None or not path.is_file():
        return {}
    doc = json.loads(path.read_text())
    if canonical_hook(doc.get("hook", "resid_post")) != hook:
        return {}
    return {row["layer"]: list(row["features"]) for row in doc.get("layers", [])}


def _checked(run: Path, cfg: DelphiConfig) -> tuple[str, dict[int, Path]]:
    """The hook and layer -> SAE folder to cache, every input checked (one line) before anything is loaded."""
    cfg.check()
    doc_path = run / "features.json"
    doc_hook = json.loads(doc_path.read_text()).get("hook") if doc_path.is_file() else None
    hook = canonical_hook(cfg.hook or doc_hook or "resid_post")
    found = run_sae_dirs(run, hook, cfg.seed)
    if not found:
        which = "" if cfg.seed is None else f" of seed {cfg.seed}"
        raise ResaError(f"run {str(run)!r} has no {hook} SAEs{which}; train them with: resa-interp train-saes "
                        f"--out {run}")
    # the model is not loaded yet: parse the spec unbounded, then name the layers the run has no SAE for
    layers = list(found) if cfg.layers is None else parse_layers(cfg.layers, 1 << 30)
    if cfg.layers is not None and not set(layers) <= set(found):
        missing = ",".join(str(layer) for layer in layers if layer not in found)
        raise ResaError(f"--layers {cfg.layers!r}: the run has no {hook} SAE at layer(s) {missing}; it has "
                        f"{layer_ranges(found)}")
    dirs = require_sae_dirs(run, hook, layers, cfg.seed)
    for folder in dirs.values():
        width = json.loads((folder / "cfg.json").read_text())["d_sae"]
        if cfg.n_splits > width:
            raise ResaError(f"--n-splits {cfg.n_splits}: more shards than the {width} latents of {folder.name}")
    return hook, dirs


@torch.inference_mode()
def export_delphi(run: str | Path, out: str | Path, cfg: DelphiConfig | None = None,
                  progress: bool = True) -> DelphiExport:
    """Write OUT/latents/<hook name>/ (delphi's shards and config.json per SAE) and OUT/tokenizer/, from the run's
    model and SAEs over its trigger data (the folder written under a temporary name and renamed as a whole)."""
    from safetensors.numpy import save_file
    from tqdm.auto import tqdm

    cfg = cfg or DelphiConfig()
    run = Path(run)
    hook, dirs = _checked(run, cfg)
    out = check_export_target(out)
    saes = {layer: load_sae(folder, device=cfg.device) for layer, folder in dirs.items()}
    first = next(iter(saes.values()))
    spec = cfg.model or model_spec(first, None)
    subject = load_subject(spec, device=cfg.device)
    for layer, sae in saes.items():
        check_sae_fits(sae, subject, hook, layer)
    meta = first.cfg.metadata
    dataset = cfg.dataset or getattr(meta, "dataset_path", None) or "synthetic"
    template = cfg.template or getattr(meta, "template", None) or "r1"
    examples = load_qa(dataset, limit=cfg.texts, seed=cfg.data_seed)
    chunks = encode_packed(subject.tokenizer, [format_trigger(e.problem, e.answer, template) for e in examples],
                           cfg.ctx_len)
    tokens = torch.tensor([c.ids for c in chunks], dtype=torch.long)
    found: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {layer: [] for layer in saes}
    harvest = subject.harvester(hook, list(saes))
    with tqdm(total=len(tokens), desc="delphi: cache", unit="row", disable=not progress) as bar:
        for start in range(0, len(tokens), cfg.batch_size):
            batch = tokens[start : start + cfg.batch_size]
            acts = harvest(batch, torch.ones_like(batch))
            for layer, sae in saes.items():
                z = sae.encode(acts[layer].float().to(sae.dtype)).float().cpu()
                active = z.abs() > ACTIVE
                where = torch.nonzero(active)
                where[:, 0] += start
                found[layer].append((where, z[active]))
            bar.update(len(batch))
    reasoning = _reasoning(run, hook, cfg.seed)
    ids = tokens.numpy()
    counts, shards = {}, {}
    with atomic_dir(out) as tmp:
        subject.tokenizer.save_pretrained(str(tmp / TOKENIZER_DIR))
        for layer, sae in saes.items():
            name = hook_name(hook, layer)
            folder = tmp / LATENTS_DIR / name
            folder.mkdir(parents=True)
            locations = torch.cat([w for w, _ in found[layer]])
            values = torch.cat([v for _, v in found[layer]])
            shards[name] = shard_ranges(sae.cfg.d_sae, cfg.n_splits)
            for lo, hi in shards[name]:
                save_file(shard_arrays(locations, values, ids, lo, hi), str(folder / f"{lo}_{hi}.safetensors"))
            counts[name] = len(values)
            config = {
                "dataset_repo": dataset, "dataset_split": f"first {len(examples)} examples", "dataset_name": "",
                "dataset_column": "text", "batch_size": cfg.batch_size, "cache_ctx_len": tokens.shape[1],
                "n_tokens": tokens.numel(), "n_splits": cfg.n_splits,
                # delphi loads the tokenizer from model_name when it is given none: the hub id where there is one
                "model_name": hub_id(getattr(meta, "model_name", None)) or spec,
                "resa_interp": {
                    "run": str(run), "sae": str(dirs[layer]), "hook_name": name, "layer": layer, "d_sae": sae.cfg.d_sae,
                    "template": template, "texts": len(examples), "rows": len(tokens), "active_above": ACTIVE,
                    "tokenizer": f"../../{TOKENIZER_DIR}", "reasoning_features": reasoning.get(layer),
                    "config": asdict(cfg),
                },
            }
            (folder / "config.json").write_text(json.dumps(config, indent=2))
    return DelphiExport(out, counts, shards, len(tokens), tokens.shape[1])
