"""The two definitions of a reasoning feature on the same SAEs: the paper's marker rule (a features run's
features.json) against ReasonScore (Galichin et al. 2025, `features --definition reasonscore`) over reasoning texts.

Per layer: each set's count (every seed), their overlap in the primary seed (intersection, Jaccard), and at a few
layers where both sets are non-empty, `steer`'s ablation of each set against its frequency-matched control.
The texts default to the worked solutions of the transfer experiment (`data.traced_qa`, in the 'r1-trace'
template), written to OUT/worked_solutions.jsonl; when no reasoning word occurs in them, ReasonScore is refused
and that is what the report says. `--generate N` takes instead the run's model's own text: its answers to N
synthetic problems, sampled at the paper's temperature 0.6 and top-p 0.95, in its chat template with a request
to think step by step (or `--generate-template r1`: under the R1 prompt); kept in OUT/generations-*.jsonl.
Writes figures/reasonscore.json and figures/reasonscore.md.

    python analysis/reasonscore_comparison.py --run runs/default                    # the worked solutions
    python analysis/reasonscore_comparison.py --run runs/default --generate 200     # the model's own answers
    python analysis/reasonscore_comparison.py --run runs/default --texts FILE.jsonl # other reasoning texts

Reads --run only; everything it makes goes into --out (default runs/reasonscore).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from resa_interp.data import format_trigger, synthetic_qa, traced_qa
from resa_interp.evaluation.elicited import elicited_texts
from resa_interp.features import FeatureConfig
from resa_interp.interventions import compare_definitions
from resa_interp.runs import atomic_write_json, atomic_write_text

ROOT = Path(__file__).resolve().parents[1]


def worked_solutions(path: Path, n: int) -> Path:
    """The transfer source's worked solutions (`traced_qa(n, seed=1)`), each in the 'r1-trace' template, as JSONL."""
    rows = [json.dumps({"text": format_trigger(e.problem, e.answer, "r1-trace", e.trace)})
            for e in traced_qa(n, seed=1)]
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "\n".join(rows) + "\n")
    return path


INSTRUCTION = " Think it through step by step before you answer."
"""Appended to each problem in the chat format: a neutral request for reasoning that names none of the words."""


def generations(path: Path, run: Path, n: int, template: str) -> Path:
    """The run's model's own answers to `n` synthetic problems (`synthetic_qa(n, seed=1)`, not the trigger data's
    seed 0), sampled in `template` ('chat': its chat template, each problem with `INSTRUCTION`; 'r1': the R1
    prompt), each text the prompt and its completion, as JSONL; kept once written."""
    if not path.exists():
        model = json.loads((run / "features.json").read_text())["model_path"]
        problems = [e.problem + (INSTRUCTION if template == "chat" else "") for e in synthetic_qa(n, seed=1)]
        texts = elicited_texts(model, problems, template)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, "".join(json.dumps({"text": t}) + "\n" for t in texts))
    return path


def counts(values: dict[str, int]) -> str:
    return "/".join(str(v) for v in values.values()) or "-"


def report(doc: dict, command: str) -> str:
    """figures/reasonscore.md: the table, what the two definitions agree on, and the command."""
    occurring = {w: n for w, n in doc["word_occurrences"].items() if n}
    lines = ["# ReasonScore against the marker rule, on the same SAEs", "",
             f"Run: `{doc['run']}`; texts: `{doc['texts']}` ({doc['n_texts']} texts). Command:", "",
             f"    {command}", "",
             "Reasoning words (the authors' 10) in the texts, as substrings: "
             + (", ".join(f"{w} {n}" for w, n in occurring.items()) or "**none of the 10 occurs**") + ".", ""]
    refused = doc.get("reasonscore_refused")
    if refused:
        lines += [f"ReasonScore refused these texts: `{refused}`", "",
                  "So there is no ReasonScore set to compare: on these texts the two definitions cannot agree on "
                  "anything, and no `steer` comparison was run. The marker rule's counts per layer, for the "
                  "record:", ""]
    lines += ["| blocks.N | marker rule (seeds) | ReasonScore (seeds) | both (seed 0) | Jaccard |",
              "|---:|---:|---:|---:|---:|"]
    for r in doc["layers"]:
        jac = "-" if r.get("jaccard") is None else f"{r['jaccard']:.3f}"
        both = len(r["intersection"]) if "intersection" in r else "-"
        lines.append(f"| {r['layer']} | {counts(r['marker_counts'])} | {counts(r.get('reasonscore_counts', {}))} | "
                     f"{both} | {jac} |")
    seeds = sorted({s for r in doc["layers"] for s in r["marker_counts"]})
    totals = {s: sum(r["marker_counts"].get(s, 0) for r in doc["layers"]) for s in seeds}
    lines += ["", "Marker-rule features in all layers, per seed: "
              + ", ".join(f"seed {s}: {n}" for s, n in totals.items()) + "."]
    if not refused:
        total_m = sum(len(r["markers"]) for r in doc["layers"])
        total_r = sum(len(r["reasonscore"]) for r in doc["layers"])
        total_b = sum(len(r["intersection"]) for r in doc["layers"])
        lines += ["", f"In seed 0: {total_m} marker-rule features, {total_r} ReasonScore features, {total_b} in both."]
        if doc.get("steer"):
            lines += ["", "Ablation against frequency-matched controls (`steer`, trigger texts): mean Δlog p at the "
                      "`<think>`/`</think>` tokens and KL, set − control [95% CI]:", "",
                      "| blocks.N | set | n | Δlogp markers | control | difference | KL difference |",
                      "|---:|---|---:|---:|---:|---:|---:|"]
            fmt = lambda e: f"{e['mean']:+.4f} [{e['ci'][0]:+.4f}, {e['ci'][1]:+.4f}]"  # noqa: E731
            for layer, sets in doc["steer"].items():
                for name, eff in sets.items():
                    n = len(next(r for r in doc["layers"] if str(r["layer"]) == layer)[name])
                    lines.append(f"| {layer} | {name} | {n} | {fmt(eff['reasoning']['dlogp_marker'])} | "
                                 f"{fmt(eff['control']['dlogp_marker'])} | {fmt(eff['difference']['dlogp_marker'])}"
                                 f" | {fmt(eff['difference']['kl'])} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=ROOT / "runs" / "default", help="features run to compare with")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--texts", type=Path, help="reasoning texts (JSONL, 'text'); default: the worked solutions")
    source.add_argument("--generate", type=int, metavar="N",
                       help="reasoning texts: the run's model's own sampled answers to N synthetic problems")
    parser.add_argument("--generate-template", choices=("chat", "r1"), default="chat",
                        help="--generate's format: the model's chat template (default) or the R1 prompt")
    parser.add_argument("--n-texts", type=int, default=200, help="worked solutions to write when --texts is unset")
    parser.add_argument("--quantile", type=float, default=FeatureConfig.quantile, help="ReasonScore's selection")
    parser.add_argument("--steer-layers", type=int, default=3, help="layers to steer, where both sets are non-empty")
    parser.add_argument("--steer-texts", type=int, default=16, help="trigger texts per steer run")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "reasonscore", help="what it makes goes here")
    parser.add_argument("--figures", type=Path, default=ROOT / "figures", help="reasonscore.json/.md go here")
    args = parser.parse_args()
    if not (args.run / "features.json").is_file():
        sys.exit(f"error: {args.run}/features.json: missing; run `resa-interp features --out {args.run}` first")
    if args.generate is not None and args.generate < 1:
        parser.error(f"--generate {args.generate}: must be a number of problems >= 1")
    if args.generate:
        name = f"generations-{args.generate_template}-{args.generate}.jsonl"
        texts = generations(args.out / name, args.run, args.generate, args.generate_template)
    else:
        texts = args.texts or worked_solutions(args.out / "worked_solutions.jsonl", args.n_texts)
    doc = compare_definitions(args.run, texts, args.out, args.quantile, args.steer_layers, args.steer_texts)
    command = "python analysis/reasonscore_comparison.py " + shlex.join(sys.argv[1:])
    doc["command"] = command
    if texts.is_absolute() and texts.is_relative_to(ROOT):  # the record names the repository's files portably
        doc["texts"] = str(texts.relative_to(ROOT))
    atomic_write_json(args.figures / "reasonscore.json", doc)
    atomic_write_text(args.figures / "reasonscore.md", report(doc, command))
    print(report(doc, command))


if __name__ == "__main__":
    main()
