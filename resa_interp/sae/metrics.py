"""Held-out quality of SAEs: explained variance, MSE, L0, dead latents, and what splicing them in costs the
model (KL to the clean next-token distribution, change in next-token loss) — on all counted positions and
on the question/answer tokens alone (the repeated system prompt makes the whole-text figures easy).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from resa_interp.data import NOVEL_KINDS, format_trigger, synthetic_qa
from resa_interp.figures import save_figure
from resa_interp.model import (
    SPLICE_HOOKS,
    EncodedText,
    Prefix,
    canonical_hook,
    encode_texts,
    make_batch,
    shared_prefix_length,
    spliced,
)
from resa_interp.runs import atomic_write_json
from resa_interp.sae.folders import saes_root

if TYPE_CHECKING:
    from sae_lens import SAE

    from resa_interp.model import Subject

METRICS_FILE = "metrics.json"
COLUMNS = (
    ("layer", "blocks.N", "{}"),
    ("explained_variance", "EV", "{:.3f}"),
    ("explained_variance_qa", "EV q/a", "{:.3f}"),
    ("explained_variance_novel", "EV novel", "{:.3f}"),
    ("l0", "L0", "{:.1f}"),
    ("dead_fraction_training", "dead", "{:.3f}"),
    ("kl_spliced", "KL", "{:.4f}"),
    ("kl_spliced_qa", "KL q/a", "{:.4f}"),
    ("ce_increase", "dCE", "{:.4f}"),
)


class _Sums:
    """Running sums for explained variance over a set of positions."""

    def __init__(self) -> None:
        self.n = 0
        self.sse = 0.0
        self.sum = None
        self.sumsq = 0.0

    def add(self, x: torch.Tensor, recon: torch.Tensor) -> None:
        x, recon = x.double(), recon.double()
        self.n += x.shape[0]
        self.sse += (x - recon).pow(2).sum().item()
        self.sumsq += x.pow(2).sum().item()
        self.sum = x.sum(0) if self.sum is None else self.sum + x.sum(0)

    def explained_variance(self) -> float:
        total = self.sumsq - self.sum.pow(2).sum().item() / self.n
        return 1.0 - self.sse / total


class _Reference:
    """Clean next-token log-probabilities of a batch, computed once and compared with every spliced run."""

    def __init__(self, clean_logits: torch.Tensor, ids: torch.Tensor):
        self.log_p = F.log_softmax(clean_logits.float(), -1)
        self.p = self.log_p.exp()
        self.target = ids[:, 1:]
        self.ce = self._ce(self.log_p)

    def _ce(self, log_probs: torch.Tensor) -> torch.Tensor:
        return -log_probs[:, :-1].gather(-1, self.target[..., None])[..., 0]

    def compare(self, spliced_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-position KL(clean || spliced) [b, t] and the spliced next-token loss [b, t-1]."""
        log_q = F.log_softmax(spliced_logits.float(), -1)
        kl = (self.p * (self.log_p - log_q)).sum(-1)
        return kl, self._ce(log_q)


@torch.inference_mode()
def evaluate_saes(
    subject: Subject,
    saes: dict[int, SAE],
    hook: str,
    heldout: Sequence[EncodedText],
    keep_first: bool = False,
    batch_size: int = 8,
    firing: dict[int, torch.Tensor] | None = None,
    splice: bool = True,
) -> list[dict]:
    """One row of quality metrics per layer, measured on held-out trigger texts. When `firing` is given it is
    filled with layer -> how many of the counted held-out tokens (`heldout_tokens`) each latent fired on. The
    spliced-in figures (KL, next-token loss) are None at hooks the HF model cannot splice at (`SPLICE_HOOKS`), and
    without `splice` (reconstruction figures only)."""
    device = subject.device
    exclude = 0 if keep_first else 1
    pad = subject.tokenizer.pad_token_id if subject.tokenizer.pad_token_id is not None else 0
    harvest = subject.harvester(hook, list(saes), stop_early=False)
    splices = splice and canonical_hook(hook) in SPLICE_HOOKS and harvest.points is not None
    n_prefix = shared_prefix_length(heldout)
    prefix_ids = heldout[0].ids[:n_prefix]
    clean_prefix = harvest.run_prefix(prefix_ids, keep_logits=True) if n_prefix else None
    spliced_prefix: dict[int, Prefix] = {}
    stats = {
        layer: {"all": _Sums(), "qa": _Sums(), "l0": 0.0, "fired": torch.zeros(sae.cfg.d_sae, dtype=torch.long,
                device=device), "kl": [], "kl_qa": [], "ce_clean": [], "ce_spliced": []}
        for layer, sae in saes.items()
    }
    for start in range(0, len(heldout), batch_size):
        texts = heldout[start : start + batch_size]
        batch = make_batch(texts, pad, exclude)
        suffixes = make_batch(texts, pad, exclude, prefix_len=n_prefix)
        ids, attn = batch.input_ids.to(device), batch.attention_mask.to(device)
        mask, qa = batch.train_mask.to(device), batch.qa_mask.to(device)
        acts, clean_logits = harvest.capture_full(suffixes, clean_prefix)
        reference = _Reference(clean_logits, ids)
        next_mask = mask[:, :-1] & attn[:, 1:].bool()
        for layer, sae in saes.items():
            row = stats[layer]
            x = acts[layer].float()
            latents = sae.encode(x[mask])
            recon = sae.decode(latents)
            row["all"].add(x[mask], recon)
            row["qa"].add(x[qa], sae.decode(sae.encode(x[qa])))
            row["l0"] += (latents > 0).sum().item()
            row["fired"] += (latents > 0).sum(0)
            if not splices:
                continue
            with spliced(subject.hf, {(hook, layer): sae}, keep_first=exclude):
                if n_prefix and layer not in spliced_prefix:
                    spliced_prefix[layer] = harvest.run_prefix(prefix_ids, keep_logits=True)
            # the suffixes start after the sink position, so every one of their positions is spliced
            with spliced(subject.hf, {(hook, layer): sae}, keep_first=0 if n_prefix else exclude):
                _, logits = harvest.capture_full(suffixes, spliced_prefix.get(layer))
            kl, ce_s = reference.compare(logits)
            row["kl"].append(kl[mask])
            row["kl_qa"].append(kl[qa])
            row["ce_clean"].append(reference.ce[next_mask])
            row["ce_spliced"].append(ce_s[next_mask])
    rows = []
    for layer, row in stats.items():
        if firing is not None:
            firing[layer] = row["fired"].cpu()
        mean = {key: torch.cat(row[key]).mean().item() if row[key] else None
                for key in ("kl", "kl_qa", "ce_clean", "ce_spliced")}
        rows.append(
            {
                "layer": layer,
                "hook_name": saes[layer].cfg.metadata.hook_name,
                "explained_variance": row["all"].explained_variance(),
                "explained_variance_qa": row["qa"].explained_variance(),
                "mse": row["all"].sse / max(row["all"].n, 1),
                "l0": row["l0"] / max(row["all"].n, 1),
                "heldout_inactive_fraction": (row["fired"] == 0).float().mean().item(),
                "kl_spliced": mean["kl"],
                "kl_spliced_qa": mean["kl_qa"],
                "ce_clean": mean["ce_clean"],
                "ce_spliced": mean["ce_spliced"],
                "ce_increase": mean["ce_spliced"] - mean["ce_clean"] if splices else None,
                "heldout_tokens": row["all"].n,
                "heldout_tokens_qa": row["qa"].n,
            }
        )
    return rows


def format_table(rows: Sequence[dict]) -> str:
    """The metrics as a fixed-width text table."""
    header = "  ".join(f"{title:>8}" for _, title, _ in COLUMNS)
    lines = [header]
    for row in rows:
        cells = []
        for key, _, fmt in COLUMNS:
            value = row.get(key)
            cells.append(f"{'-' if value is None else fmt.format(value):>8}")
        lines.append("  ".join(cells))
    return "\n".join(lines)


def metrics_figure(rows: Sequence[dict]):
    """Plotly figure: explained variance (all / q-a, and on novel question kinds where measured) and spliced KL over
    layers."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    layers = [r["layer"] for r in rows]
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    fig.add_trace(go.Scatter(x=layers, y=[r["explained_variance"] for r in rows], name="explained variance"))
    fig.add_trace(go.Scatter(x=layers, y=[r["explained_variance_qa"] for r in rows], name="explained variance (q/a)"))
    if all(r.get("explained_variance_novel") is not None for r in rows):
        fig.add_trace(go.Scatter(x=layers, y=[r["explained_variance_novel"] for r in rows],
                                 name="explained variance (novel question kinds)"))
    fig.add_trace(
        go.Scatter(x=layers, y=[r["kl_spliced_qa"] for r in rows], name="spliced KL (q/a)", line={"dash": "dot"}),
        secondary_y=True,
    )
    fig.update_layout(title="SAE quality on held-out trigger text", xaxis_title="layer (hook index: blocks.N)",
                      template="plotly_white")
    fig.update_yaxes(title_text="explained variance", secondary_y=False)
    fig.update_yaxes(title_text="KL (nats/token)", secondary_y=True)
    return fig


def write_metrics(run: str | Path, rows: Sequence[dict], seed: int | None = None) -> Path:
    """RUN/saes/metrics.json plus the figure RUN/saes/metrics.html/.png (under RUN/saes/seed-<seed>/ for a further
    seed of a multi-seed run)."""
    root = saes_root(run, seed)
    path = atomic_write_json(root / METRICS_FILE, list(rows))
    save_figure(metrics_figure(rows), root / "metrics")
    return path


def read_metrics(run: str | Path, seed: int | None = None) -> dict[int, dict]:
    """Layer -> metrics row of a run, or of one further seed of a multi-seed run (empty when it has none)."""
    import json

    path = saes_root(run, seed) / METRICS_FILE
    return {row["layer"]: row for row in json.loads(path.read_text())} if path.exists() else {}


def run_metrics_rows(run: str | Path) -> dict[Path, dict]:
    """Resolved SAE folder -> its held-out metrics row, from every metrics.json under RUN/saes (a row's sae_path,
    else the folder of its hook name beside the metrics file; temporary folders left out)."""
    import json

    run = Path(run)
    rows = {}
    for path in sorted(saes_root(run).rglob(METRICS_FILE)):
        if any(part.startswith(".") for part in path.relative_to(run).parts):
            continue
        for row in json.loads(path.read_text()):
            folder = run / row["sae_path"] if row.get("sae_path") else path.parent / row["hook_name"]
            rows[folder.resolve()] = row
    return rows


def novel_texts(tokenizer, n: int, template: str, max_len: int = 1024) -> list[EncodedText]:
    """`n` held-out trigger texts of question kinds the synthetic training set lacks (`data.synthetic.NOVEL_KINDS`),
    in the run's template."""
    examples = synthetic_qa(n, seed=10_009, kinds=NOVEL_KINDS)
    return encode_texts(tokenizer, [format_trigger(e.problem, e.answer, template) for e in examples], max_len)


def add_novel_quality(rows: Sequence[dict], novel: Sequence[dict]) -> None:
    """Copy the explained variance on novel-kind texts (`novel_texts`, rows of `evaluate_saes(..., splice=False)`)
    into `rows` as `explained_variance_novel` and `explained_variance_novel_qa`."""
    by_layer = {row["layer"]: row for row in novel}
    for row in rows:
        row["explained_variance_novel"] = by_layer[row["layer"]]["explained_variance"]
        row["explained_variance_novel_qa"] = by_layer[row["layer"]]["explained_variance_qa"]
