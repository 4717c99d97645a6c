"""Does SAE-Tuning transfer an ability? The paper's central control, measured on the embedded SmolLM2-135M on CPU.

A source is made from the base by SFT on worked solutions (column addition and multiplication with carries,
two-step equations); then SAE-Tuning with the source's SAE, CoT-free SFT on the same data, SAE-Tuning with the
base's own SAE and a permuted-decoder control are tuned into the base, and every model answers the same held-out
problems greedily (`resa_interp.evaluation.transfer` says how). Writes `figures/transfer.json` and
`figures/transfer.{html,png}` (accuracy and recovery per condition, recovery per layer, with 95% intervals).

    python analysis/transfer.py               # the full run (94 min measured on 2 cores), kept in runs/transfer
    python analysis/transfer.py --quick       # a smoke run of every piece (15 min measured), runs/transfer-quick
    python analysis/transfer.py --replot      # the figure again from figures/transfer.json, nothing rerun

Resumable: every finished piece is kept in --out, and a rerun skips it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from resa_interp.evaluation import QUICK, TUNED, TransferConfig, run_transfer
from resa_interp.figures import save_figure
from resa_interp.runs import atomic_write_json

ROOT = Path(__file__).resolve().parents[1]
LABELS = {
    "sae_tuning": "SAE-Tuning (source SAE)",
    "cot_free_sft": "CoT-free SFT",
    "sae_tuning_base_sae": "SAE-Tuning (base SAE)",
    "control_permuted_decoder": "control: permuted decoder",
}


def figure(doc: dict):
    """Accuracy per condition (base and source as reference lines), recovery per condition and per layer."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    conditions, per_layer = doc["conditions"], doc["per_layer"]
    fig = make_subplots(rows=1, cols=3, subplot_titles=(
        "accuracy on held-out problems", "recovery at the middle layer", "SAE-Tuning recovery per layer"))
    names = [n for n in ("base", "source", *TUNED) if n in conditions]

    def bars(values: list[dict], key: str, ci: str, x: list[str], col: int) -> None:
        y = [v[key] if v[key] is not None else 0.0 for v in values]
        lo = [v[key] - v[ci][0] if v[ci] else 0.0 for v in values]
        hi = [v[ci][1] - v[key] if v[ci] else 0.0 for v in values]
        fig.add_trace(go.Bar(x=x, y=y, error_y={"type": "data", "array": hi, "arrayminus": lo}, showlegend=False),
                      row=1, col=col)

    bars([conditions[n] for n in names], "accuracy", "ci", [LABELS.get(n, n) for n in names], 1)
    tuned = [n for n in TUNED if n in conditions]
    bars([conditions[n] for n in tuned], "recovery", "recovery_ci", [LABELS[n] for n in tuned], 2)
    layers = sorted(per_layer, key=int)
    rows = [per_layer[layer] for layer in layers]
    fig.add_trace(go.Scatter(
        x=[int(layer) for layer in layers], y=[r["recovery"] for r in rows], mode="markers+lines", showlegend=False,
        error_y={"type": "data", "array": [r["recovery_ci"][1] - r["recovery"] if r["recovery_ci"] else 0
                                           for r in rows],
                 "arrayminus": [r["recovery"] - r["recovery_ci"][0] if r["recovery_ci"] else 0 for r in rows]},
    ), row=1, col=3)
    for col in (2, 3):
        fig.add_hline(y=0, line_dash="dot", row=1, col=col)
        fig.add_hline(y=1, line_dash="dash", row=1, col=col)
    fig.update_xaxes(title_text="layer (blocks.L.hook_resid_post)", row=1, col=3)
    settings = doc["settings"]
    model = settings["model"] or "the embedded SmolLM2-135M-Instruct"
    fig.update_layout(height=480, width=1400, margin={"t": 110}, title=(
        f"SAE-Tuning transfer on {model}: {conditions['base']['n']} held-out problems, seeds "
        f"{tuple(settings['seeds'])}, middle layer {settings['layer']}<br><sup>recovery 0 = base, 1 = source; "
        "95% paired bootstrap intervals</sup>"))
    return fig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run of every piece (" + ", ".join(
        f"{k}={v}" for k, v in QUICK.items()) + ")")
    parser.add_argument("--out", default=None, help="run folder (default: runs/transfer, or runs/transfer-quick)")
    parser.add_argument("--figures", default=None,
                        help="where transfer.json and the figure go (default: figures/, or the run folder with "
                             "--quick, so a smoke run never replaces the committed result)")
    parser.add_argument("--replot", action="store_true",
                        help="redraw the figure from the transfer.json in --figures; runs nothing")
    parser.add_argument("--model", default=None, help="base model (default: the embedded SmolLM2-135M-Instruct)")
    args = parser.parse_args()
    config = TransferConfig(model=args.model)
    if args.quick:
        config = dataclasses.replace(config, **QUICK)
    out = Path(args.out or ROOT / "runs" / ("transfer-quick" if args.quick else "transfer"))
    figures = Path(args.figures or (out if args.quick else ROOT / "figures"))
    if args.replot:
        if not (figures / "transfer.json").is_file():
            parser.error(f"--replot: {figures / 'transfer.json'} does not exist; run the experiment first, or point "
                         "--figures at a folder holding one")
        doc = json.loads((figures / "transfer.json").read_text())
    else:
        doc = run_transfer(config, out)
        atomic_write_json(figures / "transfer.json", doc)
    save_figure(figure(doc), figures / "transfer", plotlyjs="cdn")
    for name, row in doc["conditions"].items():
        rec = "" if row["recovery"] is None else (
            f"  recovery {row['recovery']:.2f} [{row['recovery_ci'][0]:.2f}, {row['recovery_ci'][1]:.2f}]")
        print(f"{name:26s} accuracy {row['accuracy']:.3f} [{row['ci'][0]:.3f}, {row['ci'][1]:.3f}]"
              f"  n={row['n']} seeds={row['seeds']}{rec}")


if __name__ == "__main__":
    main()
