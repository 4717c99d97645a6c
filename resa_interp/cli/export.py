"""`export`: a run's SAEs as a hub repo folder (SAELens layout and model card), or its dashboards for Neuronpedia."""

from __future__ import annotations

from typing import Annotated

import typer

EXPORT_KINDS = ("hf", "neuronpedia")


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
    dashboard: Annotated[
        str | None,
        typer.Option("--dashboard", help="neuronpedia: dashboard.json or its folder [default: RUN/dashboard].")
    ] = None,
    model_id: Annotated[
        str | None, typer.Option("--model-id", help="neuronpedia: model id [default: the model's name, lowercased].")
    ] = None,
    source_set: Annotated[
        str | None, typer.Option("--source-set", help="neuronpedia: source set name [default: res-resa / mlp-resa].")
    ] = None,
    release: Annotated[
        str | None, typer.Option("--release", help="neuronpedia: release id [default: the run folder's name].")
    ] = None,
    creator_name: Annotated[str, typer.Option("--creator-name", help="neuronpedia: creator name.")] = "resa-interp",
    creator_id: Annotated[
        str | None,
        typer.Option("--creator-id", help="neuronpedia: creator id [default: $DEFAULT_CREATOR_ID, else SAEDashboard's "
                     "fallback id]."),
    ] = None,
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
        from resa_interp.sae.hub import export_hub

        result = export_hub(run, out, repo=repo)
        typer.echo(f"hf: {len(result.sae_ids)} SAEs ({', '.join(result.sae_ids)}) and {result.card.name} in "
                   f"{result.out}")
        return
    from resa_interp.dashboard import NeuronpediaConfig, export_neuronpedia

    cfg = NeuronpediaConfig(dashboard=dashboard, model_id=model_id, source_set=source_set, release=release,
                            creator_name=creator_name, creator_id=creator_id, url=repo and f"https://huggingface.co/"
                            f"{repo}", hf_repo=repo)
    result = export_neuronpedia(run, out, cfg)
    typer.echo(f"neuronpedia: {result.features} latents, {result.activations} activations in "
               f"{len(result.sources)} sources under {result.out}")
