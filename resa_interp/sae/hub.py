"""Hub export of a run's SAEs: a folder to upload as one Hugging Face hub repo, in SAELens' layout.

Layout: one subfolder per SAE id (`<hook_name>/`, and `seed-<s>/<hook_name>/` for a multi-seed run) holding the
run's cfg.json, sae_weights.safetensors and sparsity.safetensors unchanged, plus README.md, a model card with
YAML front matter (`library_name: saelens`, the base model when it is a hub id, tags), the SAEs' hooks, the
training data and tokens (from the run's manifest), and the held-out quality table (RUN/saes/metrics.json).

Why this layout: for a release that is not in SAELens' pretrained_saes.yaml and contains a '/', SAELens'
`SAE.from_pretrained(release, sae_id)` takes the release as the repo id and the sae_id as the folder in it
(`get_repo_id_and_folder_name`), and its default "sae_lens" loader (`get_conversion_loader_name`) downloads
`<sae_id>/cfg.json`, `<sae_id>/sae_weights.safetensors` and, when the repo has it, `<sae_id>/sparsity.safetensors`.
So after uploading DIR as ORG/NAME, `SAE.from_pretrained("ORG/NAME", "blocks.3.hook_resid_post")` loads it, and
`SAE.load_from_disk("DIR/blocks.3.hook_resid_post")` reads the folder before any upload.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from resa_interp.errors import ResaError
from resa_interp.model import hub_id
from resa_interp.runs import atomic_dir, read_manifest
from resa_interp.sae.folders import SAES_DIR
from resa_interp.sae.metrics import COLUMNS, run_metrics_rows

SAE_FILES = ("cfg.json", "sae_weights.safetensors", "sparsity.safetensors")
"""What SAELens' hub loader reads from an SAE id's folder (sae_lens.constants; sparsity is optional there)."""
CARD = "README.md"
REPO_PLACEHOLDER = "ORG/NAME"


def run_sae_ids(run: str | Path) -> dict[str, Path]:
    """SAE id -> folder for every finished SAE of a run: `RUN/saes/<hook_name>/` as '<hook_name>' and
    `RUN/saes/seed-<s>/<hook_name>/` as 'seed-<s>/<hook_name>' (checkpoints and temporary folders left out)."""
    root = Path(run) / SAES_DIR
    found = {}
    for cfg in [*root.glob("*/cfg.json"), *root.glob("seed-*/*/cfg.json")]:
        sae_id = cfg.parent.relative_to(root).as_posix()
        if not any(part.startswith(".") for part in sae_id.split("/")) and (cfg.parent / SAE_FILES[1]).is_file():
            found[sae_id] = cfg.parent
    return dict(sorted(found.items()))


def check_export_target(out: str | Path) -> Path:
    """Refuse, in one line, an export folder that exists and is not empty (an export never mixes with old files)."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ResaError(f"export folder {str(out)!r} exists and is not empty; give a new or empty folder")
    return out


@dataclass(frozen=True)
class HubExport:
    """What `export_hub` wrote."""

    out: Path
    sae_ids: list[str]
    card: Path
    quality: dict[str, dict]
    """SAE id -> its held-out metrics row (SAEs without one are missing)."""


def _cell(value, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


def quality_table(quality: dict[str, dict]) -> str:
    """Markdown table of held-out quality, one row per SAE id, columns and formats as `format_table`'s."""
    head = "| SAE id | " + " | ".join(title for _, title, _ in COLUMNS) + " |"
    rule = "|" + "---|" * (len(COLUMNS) + 1)
    body = [f"| {sae_id} | " + " | ".join(_cell(row.get(key), fmt) for key, _, fmt in COLUMNS) + " |"
            for sae_id, row in quality.items()]
    return "\n".join([head, rule, *body])


def model_card(run: str | Path, cfgs: dict[str, dict], quality: dict[str, dict], repo: str | None = None) -> str:
    """README.md of an exported folder: YAML front matter for the hub, then model, hooks, data, loading, quality."""
    manifest = read_manifest(run).get("stages", {}).get("train-saes", {})
    train = manifest.get("config", {})
    first = next(iter(cfgs.values()))
    meta = first.get("metadata", {})
    model = meta.get("model_name") or manifest.get("model")
    base = hub_id(model)
    dataset = train.get("dataset") or meta.get("dataset_path")
    tokens = manifest.get("tokens_per_layer", meta.get("training_tokens"))
    front = ["---", "library_name: saelens"]
    if base:
        front.append(f"base_model: {base}")
    if hub_id(dataset):
        front += ["datasets:", f"- {dataset}"]
    archs = sorted({cfg.get("architecture", "?") for cfg in cfgs.values()})
    front += ["tags:", "- sparse-autoencoder", "- saelens", "- resa-interp", *[f"- {a}-sae" for a in archs], "---"]
    repo = repo or REPO_PLACEHOLDER
    saes = ["| SAE id | hook | d_in | d_sae | architecture | k |", "|---|---|---|---|---|---|"]
    saes += [f"| {sae_id} | {cfg['metadata'].get('hook_name')} | {cfg['d_in']} | {cfg['d_sae']} | "
             f"{cfg.get('architecture', '?')} | {cfg.get('k', '-')} |" for sae_id, cfg in cfgs.items()]
    data = [
        f"- Model: `{model}`" + (f" (hub: [{base}](https://huggingface.co/{base}))" if base else " (not a hub id)"),
        f"- Trigger data: `{dataset}`, template `{train.get('template', meta.get('template'))}`, "
        f"packed: {train.get('pack', meta.get('packed'))}, context size {meta.get('context_size')}, "
        f"seqpos_slice {meta.get('seqpos_slice')} (the first position of each text excluded when [1, None])",
        f"- Training tokens per SAE: {tokens}",
        f"- Trainer: {meta.get('trainer')}, optimizer {meta.get('optimizer')}, lr {meta.get('lr')}, "
        f"seed {meta.get('seed')}, mode {meta.get('mode')}",
    ]
    card = [
        *front, "", f"# SAEs for {model} (resa-interp)", "",
        "Sparse autoencoders trained by resa-interp's Stage I (the Resa method) on CoT-free trigger text; each "
        "folder is an SAELens SAE (cfg.json, sae_weights.safetensors, sparsity.safetensors: log10 firing rates).",
        "", "## Load", "", "```python", "from sae_lens import SAE", "",
        f'sae = SAE.from_pretrained("{repo}", "{next(iter(cfgs))}")  # this repo, an SAE id below',
        f'local = SAE.load_from_disk("{next(iter(cfgs))}")  # a downloaded copy', "```", "",
        "## SAEs", "", *saes, "", "## Training", "", *data, "",
        "## Held-out quality", "",
        "EV: explained variance on held-out trigger texts (all counted tokens, and the question/answer tokens "
        "alone); L0: latents active per token; dead: fraction never active in the last training window; KL: "
        "next-token KL with the SAE spliced in (nats/token); dCE: next-token loss increase.", "",
        quality_table(quality) if quality else "(the run has no metrics.json)", "",
    ]
    return "\n".join(card)


def export_hub(run: str | Path, out: str | Path, repo: str | None = None) -> HubExport:
    """Write OUT: every SAE of the run in its SAE id's folder, and README.md (written to a temporary name and
    renamed as a whole). `repo` (ORG/NAME) only fills the card's loading example."""
    run, out = Path(run), check_export_target(out)
    ids = run_sae_ids(run)
    if not ids:
        raise ResaError(f"run {str(run)!r} has no SAEs (no {run}/{SAES_DIR}/<hook_name>/cfg.json); train them with: "
                        f"resa-interp train-saes --out {run}")
    rows = run_metrics_rows(run)
    quality = {sae_id: rows[folder.resolve()] for sae_id, folder in ids.items() if folder.resolve() in rows}
    cfgs = {sae_id: json.loads((folder / SAE_FILES[0]).read_text()) for sae_id, folder in ids.items()}
    with atomic_dir(out) as tmp:
        for sae_id, folder in ids.items():
            (tmp / sae_id).mkdir(parents=True)
            for name in SAE_FILES:
                if (folder / name).is_file():
                    shutil.copy2(folder / name, tmp / sae_id / name)
        (tmp / CARD).write_text(model_card(run, cfgs, quality, repo))
    return HubExport(out, list(ids), out / CARD, quality)
