"""`export`: a run's SAEs as a hub repo folder (SAELens layout and model card), its dashboards for Neuronpedia, its
SAEs' latent cache for delphi, or its held-out quality in SAEBench's core-eval format."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from resa_interp.cli.fields import field_option, given

EXPORT_KINDS = ("hf", "neuronpedia", "delphi", "saebench")
NEURONPEDIA = ("dashboard.config", "NeuronpediaConfig")
"""Where the Neuronpedia export's config is declared (module relative to the package, class)."""
DELPHI = ("dashboard.config", "DelphiConfig")
"""Where the delphi export's config is declared."""
COMMAND_CONFIGS = {"export": [NEURONPEDIA, DELPHI]}
"""The configs each command of this module builds: its options named like their fields come from them."""


def _neuronpedia(name: str, default: str | None = None) -> Any:
    return field_option(*NEURONPEDIA, name, f"--{name.replace('_', '-')}", more="(neuronpedia)", default=default)


def _delphi(name: str, default: str | None = None) -> Any:
    return field_option(*DELPHI, name, f"--{name.replace('_', '-')}", more="(delphi)", default=default)


def export(
    run: Annotated[str, typer.Option("--run", help="Run directory with saes/ (and dashboard/ for neuronpedia).")],
    to: Annotated[
        tuple[str, str],
        typer.Option("--to", help="KIND DIR: hf (a folder to upload as a hub repo), neuronpedia (bulk-import "
                     "layout), delphi (delphi's latent cache) or saebench (core-eval JSON), written to DIR (new or "
                     "empty)."),
    ],
    repo: Annotated[
        str | None,
        typer.Option("--repo", help="Hub repo ORG/NAME the hf folder is uploaded to: named in the model card's loading "
                     "example, on each Neuronpedia source (hfRepoId, saelensRelease), and as the SAEBench release "
                     "(default there: the run folder's name)."),
    ] = None,
    dashboard: _neuronpedia("dashboard", default="RUN/dashboard") = None,
    model_id: _neuronpedia("model_id", default="the model's name, lowercased") = None,
    source_set: _neuronpedia("source_set", default="res-resa / mlp-resa") = None,
    release: _neuronpedia("release", default="the run folder's name") = None,
    creator_name: _neuronpedia("creator_name") = None,
    creator_id: _neuronpedia("creator_id", default="$DEFAULT_CREATOR_ID, else SAEDashboard's fallback id") = None,
    layers: _delphi("layers", default="every layer of the run") = None,
    seed: _delphi("seed", default="the run's own SAEs") = None,
    texts: _delphi("texts") = None,
    dataset: _delphi("dataset", default="the SAEs' dataset") = None,
    template: _delphi("template", default="the SAEs' template") = None,
    data_seed: _delphi("data_seed") = None,
    ctx_len: _delphi("ctx_len") = None,
    n_splits: _delphi("n_splits") = None,
    batch_size: _delphi("batch_size") = None,
    model: _delphi("model", default="the SAEs' model") = None,
    hook: _delphi("hook", default="features.json's, else resid_post") = None,
    device: _delphi("device") = None,
) -> None:
    """Export a run: `--to hf DIR` (SAELens folders plus a model card) or `--to neuronpedia DIR`.

    hf: one folder per SAE id (blocks.L.hook_<hook>, seed-S/blocks.L.hook_<hook>) with cfg.json,
    sae_weights.safetensors and sparsity.safetensors, and README.md (library_name: saelens, model, hooks, data,
    tokens, held-out quality). Upload DIR as ORG/NAME and SAE.from_pretrained("ORG/NAME", SAE_ID) loads it.
    neuronpedia: DIR/<model id>/<layer>-<source set>/ with release, model, sourceset and source .jsonl and
    features/ and activations/ batch-N.jsonl.gz, as SAEDashboard's Neuronpedia exporter writes them, from the
    dashboard data of `resa-interp dashboard --run RUN --out RUN/dashboard`.
    delphi: DIR/latents/<hook name>/<start>_<end>.safetensors (locations, activations, tokens) and config.json, as
    delphi's LatentCache writes them, from the run's model and SAEs over its trigger data, and DIR/tokenizer/.
    saebench: DIR/core/<release>_<sae id>_eval_results.json, SAEBench's CoreEvalOutput of each SAE's held-out
    metrics (metrics it does not measure are -1, SAEBench's value for a metric it could not compute).

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
    if kind == "saebench":
        from resa_interp.sae import export_saebench

        bench = export_saebench(run, out, release=repo)
        skipped = f"; no held-out metrics for {', '.join(bench.skipped)}" if bench.skipped else ""
        typer.echo(f"saebench: {len(bench.files)} core-eval files in {bench.out / 'core'}{skipped}")
        return
    if kind == "delphi":
        from resa_interp.dashboard import DelphiConfig, export_delphi

        cfg = DelphiConfig(**given(layers=layers, seed=seed, texts=texts, dataset=dataset, template=template,
                                   data_seed=data_seed, ctx_len=ctx_len, n_splits=n_splits, batch_size=batch_size,
                                   model=model, hook=hook, device=device))
        cache = export_delphi(run, out, cfg)
        typer.echo(f"delphi: {len(cache.hookpoints)} hookpoints ({', '.join(cache.hookpoints)}), {cache.rows} rows "
                   f"of {cache.ctx_len} tokens, {sum(cache.hookpoints.values())} activations in "
                   f"{cache.out / 'latents'}")
        return
    from resa_interp.dashboard import NeuronpediaConfig, export_neuronpedia

    cfg = NeuronpediaConfig(**given(dashboard=dashboard, model_id=model_id, source_set=source_set, release=release,
                                    creator_name=creator_name, creator_id=creator_id),
                            url=repo and f"https://huggingface.co/{repo}", hf_repo=repo)
    result = export_neuronpedia(run, out, cfg)
    typer.echo(f"neuronpedia: {result.features} latents, {result.activations} activations in "
               f"{len(result.sources)} sources under {result.out}")
