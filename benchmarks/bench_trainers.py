"""Stage I trainers on the same activations: the fused TopK kernel (`--trainer fused`) vs SAELens' own trainer
(`--trainer saelens`) with its topk and batchtopk SAEs.

Every trainer is the one train-saes builds (`LayerSAE`, `SAELensLayer`) with the same settings (latents, k, batch,
Adam, seed; the lr of each can be set, since their inputs are scaled differently), initialised on the same first
buffer and stepped on the same shuffled batches, one batch of each trainer in turn so load on the machine hits all
alike. Reported per trainer: training tokens/s (median step) and the explained variance of its saved form (export:
raw units, SAELens' inference SAE) on held-out rows at equal tokens, both also as ratios to the fused kernel
measured in this same run; for SAELens also the explained variance of its training SAE (batchtopk's saved form is a
JumpReLU SAE at the threshold it learned by moving average, which needs many steps to settle).

Activations: an activation cache (`resa-interp cache-activations`, e.g. the embedded SmolLM2-135M at one layer)
with --cache DIR --layer L, else a Gaussian mixture of width 576 (SmolLM2's d_model).

    python benchmarks/bench_trainers.py [--cache DIR --layer L] [--tokens 65536] [--latents 4608] [--k 32]
        [--lr 2e-3] [--saelens-lr 3e-4]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from resa_interp.sae import DEAD_WINDOW, LayerSAE, SAETrainConfig
from resa_interp.sae.activations import ActivationCache
from resa_interp.sae.saelens_trainer import SAELensLayer


def mixture(n: int, d: int, seed: int = 0, components: int = 64) -> torch.Tensor:
    """A Gaussian mixture: `components` random centres (norm ~12 at d 576) plus isotropic noise of std 0.5."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(components, d, generator=gen) * 12 / d**0.5
    which = torch.randint(0, components, (n,), generator=gen)
    return centres[which] + torch.randn(n, d, generator=gen) * 0.5


def cached_rows(path: str, layer: int, n: int) -> torch.Tensor:
    """The first `n` rows of `layer` in an activation cache, as float32."""
    cache = ActivationCache(path)
    rows = cache.rows(layer)
    if rows.shape[0] < n:
        raise SystemExit(f"the cache holds {rows.shape[0]} tokens at layer {layer}; {n} are needed")
    return torch.from_numpy(rows[:n].copy()).view(cache.torch_dtype).float()


def explained_variance(sae, x: torch.Tensor) -> float:
    """1 - SSE / total variance of `x`, reconstructed by an SAELens SAE."""
    with torch.no_grad():
        recon = sae.decode(sae.encode(x)).double()
    x = x.double()
    return 1 - ((x - recon).pow(2).sum() / (x - x.mean(0)).pow(2).sum()).item()


def training_form_ev(trainer, x: torch.Tensor) -> float | None:
    """Explained variance of a SAELens trainer's training SAE itself on `x` (scaled as in training; batch top-k
    over the held-out rows as one batch), where its saved form differs (a learned JumpReLU threshold)."""
    if not isinstance(trainer, SAELensLayer):
        return None
    return explained_variance(trainer.sae, trainer.trainer.activation_scaler(x))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", default=None, help="activation cache folder [default: a Gaussian mixture]")
    parser.add_argument("--layer", type=int, default=None, help="layer of the cache to train on")
    parser.add_argument("--tokens", type=int, default=65_536, help="training tokens per trainer")
    parser.add_argument("--heldout", type=int, default=4096)
    parser.add_argument("--latents", type=int, default=4608)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--lr", type=float, default=2e-3, help="the fused kernel's [default: train-saes' 2e-3]")
    parser.add_argument("--saelens-lr", type=float, default=None, help="SAELens' trainers' [default: --lr]")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    n = args.tokens + args.heldout
    data = cached_rows(args.cache, args.layer, n) if args.cache else mixture(n, 576)
    data = data[torch.randperm(n, generator=torch.Generator().manual_seed(0))]
    train, heldout = data[: args.tokens], data[args.tokens :]
    d_in, device = data.shape[1], torch.device("cpu")
    saelens_lr = args.saelens_lr or args.lr
    source = f"{args.cache} layer {args.layer}" if args.cache else "Gaussian mixture"
    print(f"{source}: d_in {d_in}, {args.latents} latents, k {args.k}, batch {args.batch}, Adam lr {args.lr} "
          f"(SAELens {saelens_lr}), "
          f"{args.tokens} training tokens, {args.heldout} held out, {args.threads} threads")

    fused = LayerSAE(d_in, args.latents, args.k, seed=0)
    trainers = {"fused topk": fused}
    for architecture in ("topk", "batchtopk"):
        cfg = SAETrainConfig(k=args.k, latents=args.latents, batch_tokens=args.batch, lr=saelens_lr,
                             trainer="saelens", architecture=architecture)
        trainers[f"saelens {architecture}"] = SAELensLayer(cfg, d_in, args.latents, 0, device, DEAD_WINDOW)
    for trainer in trainers.values():
        trainer.make_optimizer("adam", args.lr if trainer is fused else saelens_lr)
        trainer.data_init(train, from_pretrained=False)
    times: dict[str, list[float]] = {name: [] for name in trainers}
    for batch in train.split(args.batch):
        for name, trainer in trainers.items():
            start = time.perf_counter()
            trainer.step(batch)
            times[name].append(time.perf_counter() - start)
    meta = {"hook_name": "bench"}
    results = {name: (args.batch / statistics.median(times[name]), explained_variance(t.export(meta), heldout),
                      training_form_ev(t, heldout)) for name, t in trainers.items()}
    base_speed, base_ev, _ = results["fused topk"]
    print(f"\n{'trainer':<18} {'tok/s':>9} {'x fused':>8} {'EV':>7} {'x fused':>8} {'EV training form':>17}")
    for name, (speed, ev, ev_train) in results.items():
        train_form = "-" if ev_train is None else f"{ev_train:.3f}"
        print(f"{name:<18} {speed:>9.0f} {speed / base_speed:>8.2f} {ev:>7.3f} {ev / base_ev:>8.2f} {train_form:>17}")


if __name__ == "__main__":
    main()
