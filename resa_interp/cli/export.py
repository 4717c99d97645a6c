"""`export`: a run's SAEs as a hub repo folder (SAELens layout and model card), or its dashboards for Neuronpedia."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from resa_interp.cli.fields import field_option, given

EXPORT_KINDS = ("hf", "neuronpedia")
NEURONPEDIA = ("dashboard.config", "NeuronpediaConfig")
"""Where the Neuronpedia export's config is declared (module relative to the package, class)."""
COMMAND_CONFIGS = {"export": [NEURONPEDIA]}
"""The configs each command of this module builds: its options named like their fields come from them."""


def _neuronpedia(name: str, default: str | None = None) -> Any:
    return field_option(*NEURONPEDIA, name, f"--{name.replace('_', '-')}", more="(neuronpedia)", default=default)


def export(
    run: Annotated[str, typer.Option("--run", help="Run directory with saes/ (and dashboard/ for neuronpedia).")],
    to: Annotated[
        tuple[str, str],
        typer.Option("--to", help="KIND DIR: hf (a folder to upload as a hub repo) or neuronpedia (bulk-import "
                     "layout), written to DIR (new or empty)."),
    ],
    repo: Annotated[
        str | None,
        typer.Option("--repo", help="Hub repo ORG/NAME the hf folder is uploaded to: named in the model card's loading "
                     "example, and on each Neuronpedia source (hfRepoId, saelensRelease)."),
    ] = None,
    dashboard: _neuronpedia("dashboard", default="RUN/dashboard") = None,
    model_id: _neuronpedia("model_id", default="the model's name, lowercased") = None,
    source_set: _neuronpedia("source_set", default="res-resa / mlp-resa") = None,
    release: _neuronpedia("release", default="the run folder's name") = None,
    creator_name: _neuronpedia("creator_name") = None,
    creator_id: _neuronpedia("creator_id", default="$DEFAULT_CREATOR_ID, else SAEDashboard's fallback id") = None,
) -> None:
    """Export a run: `--to hf DIR` (SAELens folders plus a model card) or `--to neuronpedia DIR`.

    hf: one folder per SAE id (blocks.L.hook_<hook>, seed-S/blocks.L.hook_<hook>) with cfg.json,
    sae_weights.safetensors and sparsity.safetensors, and README.md (library_name: saelens, model, hooks, data,
    tokens, held-out quality). Upload DIR as ORG/NAME and SAE.from_pretrained("ORG/NAME", SAE_ID) loads it.
    neuronpedia: DIR/<model id>/<layer>-<source set>/ with release, model, sourceset and source .jsonl and
    features/ and activations/ batch-N.jsonl.gz, as SAEDashboard's Neuronpedia exporter writes them, from the
    dashboard data of `resa-interp dashboard --run RUN --out RUN/dashboard`.

    Example: resa-interp export --run runs/default --to hf runs/default-hub
    """
    from resa_interp.errors import check_choice

    kind, out = to
    check_choice("--to", kind, EXPORT_KINDS)
    if kind == "hf":
        from resa_interp.sae import export_hub

        result = export_hub(run, out, repo=repo)
        typer.echo(f"hf: {len(result.sae_ids)} SAEs ({', '.join(result.sae_ids)}) and {result.card.name} in "
                   f"{result.out}")
        return
    from resa_interp.dashboard import NeuronpediaConfig, export_neuronpedia

    cfg = NeuronpediaConfig(**given(dashboard=dashboard, model_id=model_id, source_set=source_set, release=release,
                                    creator_name=creator_name, creator_id=creator_id),
                            url=repo and f"https://huggingface.co/{repo}", hf_repo=repo)
    result = export_neuronpedia(run, out, cfg)
    typer.echo(f"neuronpedia: {result.features} latents, {result.activations} activations in "
               f"{len(result.sources)} sources under {result.out}")
