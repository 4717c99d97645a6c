"""The tables a features run prints: counts per layer with the SAEs' quality and margins (`format_table`), the
code paths' agreement (`format_paths`), and for a multi-seed run the headline (`format_headline`) and the counts
per seed (`format_seed_table`)."""

from __future__ import annotations

from resa_interp.features.extract import LayerFeatures
from resa_interp.features.stability import LayerStability
from resa_interp.numbering import paper_label


def format_table(layers: list[LayerFeatures]) -> str:
    """Per-layer count with the SAE quality beside it; layers by hook index (blocks.N) and the paper's 1-based name;
    the smallest margin of the layer's features and, when the noise was measured, how many of them sit within the
    float32 paths' / the other precision's noise of the boundary (and the latents outside within it, after '+')."""
    lines = [f"{'blocks.N':>8}  {'paper':>5}  {'count':>5}  {'EV':>6}  {'EV q/a':>6}  {'KL q/a':>7}  {'margin':>7}  "
             f"{'near fp32':>9}  {'near bf16':>9}  features"]
    for r in layers:
        q = r.sae_quality
        fmt = lambda key, spec, q=q: "-" if q.get(key) is None else format(q[key], spec)  # noqa: E731
        shown = ", ".join(map(str, r.features[:8])) + (" ..." if r.count > 8 else "")
        margin = f"{min(m['margin'] for m in r.margins.values()):.3f}" if r.margins else "-"
        near = {name: f"{len(r.boundary[f'fragile_{name}'])}+{len(r.boundary[f'near_miss_{name}'])}"
                if r.boundary else "-" for name in ("fp32", "precision")}
        lines.append(
            f"{r.layer:>8}  {paper_label(r.layer):>5}  {r.count:>5}  {fmt('explained_variance', '.3f'):>6}  "
            f"{fmt('explained_variance_qa', '.3f'):>6}  {fmt('kl_spliced_qa', '.4f'):>7}  {margin:>7}  "
            f"{near['fp32']:>9}  {near['precision']:>9}  {shown}"
        )
    return "\n".join(lines)


def format_paths(layers: list[LayerFeatures]) -> str:
    """One line: at how many layers every code path found the same features, and where one did not."""
    measured = [r for r in layers if r.boundary]
    if not measured:
        return ""
    differ = {r.layer: [p for p, found in r.boundary["paths"].items() if found != r.features] for r in measured}
    paths = ", ".join(measured[0].boundary["paths"])
    same = sum(not v for v in differ.values())
    text = f"code paths ({paths}): the same features at {same} of {len(measured)} layers"
    other = [f"blocks.{layer} ({', '.join(v)})" for layer, v in differ.items() if v]
    return text + (f"; different at {'; '.join(other)}" if other else "")


def format_headline(stability: list[LayerStability]) -> str:
    """The headline of a multi-seed run: the stable reasoning features in all, and per layer where there are any."""
    seeds = list(stability[0].counts)
    total = sum(st.stable_count for st in stability)
    where = ", ".join(f"blocks.{st.layer}: {st.stable_count}" for st in stability if st.stable_count)
    means = sum(st.mean for st in stability)
    return (f"stable reasoning features: {total} over {len(stability)} layers ({where or 'none at any layer'}); "
            f"{means:.1f} per seed on average, over seeds {','.join(map(str, seeds))}")


def format_seed_table(stability: list[LayerStability]) -> str:
    """Per layer: the count in each seed, mean ± spread, and the stable features (primary seed's ids); for a run of
    one seed, a line that says what stability needs."""
    if not stability:
        return ("one SAE seed per layer: stability across seeds needs a multi-seed run (resa-interp train-saes "
                "--n-seeds 3, or resa-interp features on an OUT without SAEs, which trains 3 seeds by default)")
    seeds = list(stability[0].counts)
    primary = seeds[0]
    lines = [f"{'blocks.N':>8}  " + "  ".join(f"{'seed ' + str(s):>7}" for s in seeds)
             + f"  {'mean':>5}  {'std':>5}  {'stable':>6}  stable ids (seed {primary})"]
    for st in stability:
        ids = [str(g.ids[primary][0]) if g.ids[primary] else "-" for g in st.groups if g.stable]
        lines.append(f"{st.layer:>8}  " + "  ".join(f"{c:>7}" for c in st.counts.values())
                     + f"  {st.mean:>5.2f}  {st.std:>5.2f}  {st.stable_count:>6}  {', '.join(ids)}")
    return "\n".join(lines)
