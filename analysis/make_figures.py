"""Regenerate every figure in figures/ (PNG and HTML).

From the README's main run on the embedded model (`resa-interp features --n-seeds 3 --out runs/default`; made
here first when RUN has no features.json, with --n-seeds SAE seeds per layer, 3 by default):

  embedded_feature_counts.{png,html}   reasoning features per layer (first seed's bars, every seed's count as a
                                       dot), with each SAE's explained variance
  embedded_sae_quality.{png,html}      SAE quality over layers (explained variance, spliced-in KL)
  embedded_layers_{gmm,bic}.{png,html} Gaussian mixtures over layers fitted to those counts (select-layers'
  embedded_layers.md                   defaults; counts only, as no per-layer scores exist for this model; the
                                       intervals resample seeds as well as features, and embedded_layers.md
                                       splits the variance into SAE training and feature sampling)
                                       layers are hook indices (blocks.N) on every axis and in every table
  dashboard_example.{png,html}         the feature dashboard of one layer's reasoning features

and, through analysis/paper_table6.py (not duplicated here), the paper's Table 6 analysis: paper_table6_*.

HTML files load plotly.js from its CDN to keep the repository small (the dashboard's PNG is a screenshot of
the same page with plotly.js inlined, taken by headless Chromium). Run from the repository root:

  .venv/bin/python analysis/make_figures.py                       # everything, making runs/default if needed
  .venv/bin/python analysis/make_figures.py --run /path/to/run    # from an existing main run
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
log = logging.getLogger("make_figures")


def ensure_main_run(run: Path, n_seeds: int) -> None:
    """The README's main job when `run` has no features.json: Stage I defaults at layers 1..L-2 with `n_seeds`
    seeds per layer, then features (matched across the seeds)."""
    if (run / "features.json").exists():
        return
    from resa_interp.features import FeatureConfig, run_features
    from resa_interp.model.subject import load_subject
    from resa_interp.numbering import default_layers
    from resa_interp.sae import SAETrainConfig, train_saes
    from resa_interp.sae.folders import run_sae_dirs

    subject = load_subject()
    layers = default_layers(subject.facts.n_layers)
    if not run_sae_dirs(run):
        print(f"{run} has no SAEs: training them (Stage I defaults, layers {layers}, {n_seeds} seeds)")
        train_saes(SAETrainConfig(layers=layers, seeds=tuple(range(1, n_seeds))), run, subject=subject)
    run_features(FeatureConfig(layers=layers), run, subject=subject)


def embedded_figures(run: Path, out: Path) -> None:
    """Counts, SAE quality and the mixture fit of the counts, from the main run."""
    from resa_interp.features import LayerFeatures, counts_figure
    from resa_interp.figures import save_figure
    from resa_interp.layers import LayerConfig, analyze_layers, figures, markdown_summary, read_counts
    from resa_interp.runs import atomic_write_text
    from resa_interp.sae.metrics import metrics_figure, read_metrics

    doc = json.loads((run / "features.json").read_text())
    layers = [LayerFeatures(**row) for row in doc["layers"]]
    seeds = doc.get("seeds")
    title = f"Reasoning features per layer — {doc['model']} (the README's main run"
    title += f", {len(seeds['seeds'])} SAE seeds)" if seeds else ")"
    per_seed = {s: [row["counts"][str(s)] for row in seeds["layers"]] for s in seeds["seeds"]} if seeds else None
    stable = [row["stable"] for row in seeds["layers"]] if seeds else None
    save_figure(counts_figure(layers, title, per_seed, stable), out / "embedded_feature_counts", plotlyjs="cdn")
    metrics = list(read_metrics(run).values())
    save_figure(metrics_figure(metrics), out / "embedded_sae_quality", plotlyjs="cdn")

    analysis = analyze_layers(read_counts(run / "counts.csv"), None, LayerConfig())
    figs = figures(analysis)
    for name in ("gmm", "bic"):
        save_figure(figs[name], out / f"embedded_layers_{name}", plotlyjs="cdn")
    atomic_write_text(out / "embedded_layers.md", markdown_summary(analysis).replace(str(run), "runs/default"))


def dashboard_example(run: Path, out: Path, layer: int | None, texts: int) -> None:
    """The dashboard page of one layer's reasoning features (None: the layer with the most), and a PNG of it."""
    from resa_interp.dashboard import DashboardConfig, build_dashboards, page_html
    from resa_interp.runs import atomic_write_text

    if layer is None:
        doc = json.loads((run / "features.json").read_text())
        layer = max(doc["layers"], key=lambda row: (row["count"], -row["layer"]))["layer"]
    dashboards = build_dashboards(run, layer, "reasoning", DashboardConfig(texts=texts))
    dashboards.run = "runs/default"
    atomic_write_text(out / "dashboard_example.html", page_html(dashboards, plotlyjs="cdn"))
    with tempfile.TemporaryDirectory() as tmp:
        page = Path(tmp) / "page.html"
        page.write_text(page_html(dashboards, plotlyjs="inline"))
        screenshot(page, out / "dashboard_example.png")


def screenshot(page: Path, png: Path, width: int = 1250, height: int = 2300) -> None:
    """PNG of the top of an HTML page by headless Chromium (skipped with a warning when none is installed)."""
    browser = next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
    if browser is None:
        log.warning("no Chromium found: %s not written", png.name)
        return
    with tempfile.TemporaryDirectory() as tmp:
        shot = Path(tmp) / "shot.png"
        subprocess.run(
            [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", f"--user-data-dir={tmp}",
             f"--window-size={width},{height}", "--virtual-time-budget=10000", f"--screenshot={shot}",
             page.as_uri()],
            check=True, capture_output=True, timeout=300,
        )
        png.write_bytes(shot.read_bytes())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=ROOT / "runs" / "default",
                        help="the README's main run (made there when it has no features.json)")
    parser.add_argument("--out", type=Path, default=ROOT / "figures", help="folder for the figures")
    parser.add_argument("--dashboard-layer", type=int, default=12,
                        help="layer of the dashboard example, a hook index (12: blocks.12, the paper's 13th layer "
                        "and Resa-STILL-v1's hookpoint; 0: the layer with the most reasoning features)")
    parser.add_argument("--texts", type=int, default=128, help="trigger texts for the dashboard example")
    parser.add_argument("--n-seeds", type=int, default=3,
                        help="SAE seeds per layer when the main run is made here (an existing run keeps its own)")
    parser.add_argument("--no-table6", action="store_true", help="skip analysis/paper_table6.py (about 2 minutes)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")

    ensure_main_run(args.run, args.n_seeds)
    embedded_figures(args.run, args.out)
    dashboard_example(args.run, args.out, args.dashboard_layer or None, args.texts)
    if not args.no_table6:
        subprocess.run([sys.executable, str(ROOT / "analysis" / "paper_table6.py"), "--out", str(args.out)],
                       check=True, cwd=ROOT)
    print(f"figures written to {args.out}")


if __name__ == "__main__":
    main()
