"""Weighted one-dimensional Gaussian mixtures over layer indices: EM batched over restarts and data sets.

Two likelihoods, both for weighted points (a feature count or a transformed score per layer):

- `binned` (default): each layer l is the unit-width bin [l - 1/2, l + 1/2] and gets the probability mass the
  mixture puts there, Σ_k π_k (Φ((l + 1/2 - μ_k)/σ_k) - Φ((l - 1/2 - μ_k)/σ_k)). This is the exact likelihood
  of data that live on integer layers; its EM is the grouped-data EM of McLachlan & Jones (1988, Biometrics
  44:571), whose M-step uses the moments of each component truncated to each bin. The likelihood is bounded
  (a layer's probability is at most 1), so nothing needs regularising, and BIC keeps its meaning however many
  features there are.
- `continuous`: the density at each layer index, as scikit-learn's GaussianMixture fits the expanded
  observations (same E-step, same M-step with `reg_covar` added to every variance and `10 * eps` to every
  component mass, each point's responsibility multiplied by its weight). On integer weights it optimises
  exactly GaussianMixture's objective (tests/test_layers.py checks it reaches GaussianMixture's optimum).
  On layer data a point density rewards narrow components on single layers ever more as counts grow, so BIC
  drifts to more components; it is here to reproduce the paper's kind of fit.

Both run on the distinct layers only, batched over many restarts and resampled weight vectors at once, and
accelerated by SQUAREM, which keeps bootstrap and permutation studies with thousands of refits to seconds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.integrate import trapezoid
from scipy.special import log_ndtr, ndtr

_EPS = 10 * np.finfo(float).eps
_GRID_POINTS = 8001
_GRID_SPAN = 10.0  # standard deviations beyond the outermost components that density integrals cover
_CHUNK_ELEMENTS = 200_000  # rows x components x points per EM block: keeps the temporaries small
_LOG_SQRT_2PI = 0.5 * np.log(2 * np.pi)
_LOG_TINY = -600.0  # below this a bin mass from Φ differences has lost its digits (or underflowed to 0)
LIKELIHOODS = ("binned", "continuous")


@dataclass(frozen=True)
class Mixture:
    """A 1-D Gaussian mixture with components sorted by mean."""

    means: np.ndarray
    """Component means, ascending."""
    stds: np.ndarray
    """Component standard deviations."""
    weights: np.ndarray
    """Mixing weights (sum to 1)."""

    def pdf(self, x: np.ndarray) -> np.ndarray:
        """Mixture density at each point of `x`."""
        x = np.asarray(x, dtype=float)[..., None]
        z = (x - self.means) / self.stds
        return (self.weights * np.exp(-0.5 * z * z) / (np.sqrt(2 * np.pi) * self.stds)).sum(-1)

    def bin_probs(self, layers: np.ndarray) -> np.ndarray:
        """Probability mass on each unit-width bin [l - 1/2, l + 1/2]."""
        layers = np.asarray(layers, dtype=float)[..., None]
        upper = ndtr((layers + 0.5 - self.means) / self.stds)
        lower = ndtr((layers - 0.5 - self.means) / self.stds)
        return (self.weights * (upper - lower)).sum(-1)

    def entropy(self) -> float:
        """Differential entropy -∫ f log f dx in nats (numerical; mixtures have no closed form)."""
        grid = density_grid(self)
        f = self.pdf(grid)
        return float(-trapezoid(np.where(f > 0, f * np.log(np.where(f > 0, f, 1.0)), 0.0), grid))

    def weight_entropy(self) -> float:
        """Shannon entropy of the mixing weights, -Σ w log w, in nats."""
        w = self.weights[self.weights > 0]
        return float(-(w * np.log(w)).sum())


@dataclass(frozen=True)
class BatchFit:
    """The best restart for each of several weight vectors fitted on the same points."""

    mixtures: list[Mixture]
    """One fitted mixture per weight vector."""
    mean_loglik: np.ndarray
    """Σ_l w_l log p(l) / Σ_l w_l of each best fit (p: bin probability, or density for `continuous`)."""
    converged: np.ndarray
    """Whether each best fit met the tolerance before the iteration limit."""


def density_grid(*mixtures: Mixture) -> np.ndarray:
    """An evaluation grid wide enough that the mixtures' densities integrate to 1 on it."""
    lo = min(float((m.means - _GRID_SPAN * m.stds).min()) for m in mixtures)
    hi = max(float((m.means + _GRID_SPAN * m.stds).max()) for m in mixtures)
    return np.linspace(lo, hi, _GRID_POINTS)


def hellinger(a: Mixture, b: Mixture) -> float:
    """Hellinger distance sqrt(1 - ∫ sqrt(f_a f_b) dx) between two mixture densities, in [0, 1]."""
    grid = density_grid(a, b)
    overlap = trapezoid(np.sqrt(a.pdf(grid) * b.pdf(grid)), grid)
    return float(np.sqrt(max(0.0, 1.0 - overlap)))


def fit_weighted(
    x: np.ndarray,
    weights: np.ndarray,
    n_components: int,
    *,
    restarts: int,
    seed: int,
    likelihood: str = "binned",
    reg_covar: float = 1.0 / 12.0,
    min_std: float = 0.5,
    max_iter: int = 2000,
    tol: float = 1e-9,
    start: Mixture | None = None,
    progress: Callable[[int], object] | None = None,
) -> BatchFit:
    """Fit a `n_components` mixture to integer points `x` under each row of `weights` ([n_sets, len(x)] or [len(x)]).

    Every row gets `restarts` EM runs, each started as GaussianMixture's `init_params="k-means++"` starts:
    narrow components (variance `reg_covar` for `continuous`, `min_std`² for `binned`) at weighted k-means++
    seeds, equal weights. `binned` keeps every σ at or above `min_std` (in layers): a component is a cluster
    of layers, and below about 0.3 layer the bin masses, hence the likelihood, no longer tell widths apart.
    A run stops when its mean log-likelihood changes by less than `tol` over one SQUAREM cycle (at most
    `max_iter` EM steps); the highest-likelihood run wins (the first on ties). With `start` (e.g. the fit to
    the full data, when the rows are bootstrap resamples of it) the first run of every row starts there
    instead. `reg_covar` is added to each variance at every M-step of the `continuous` likelihood, as in
    GaussianMixture. The same seed and
    data give the same result. `progress(n)` is called as each block of `n` rows finishes.
    """
    if likelihood not in LIKELIHOODS:
        raise ValueError(f"likelihood must be one of {LIKELIHOODS}, not {likelihood!r}")
    x = np.asarray(x, dtype=float)
    w = np.atleast_2d(np.asarray(weights, dtype=float))
    if w.shape[1] != x.shape[0] or (w < 0).any() or not (w.sum(1) > 0).all():
        raise ValueError("weights must be non-negative rows of len(x) with a positive sum")
    w = w / w.sum(1, keepdims=True)
    n_sets = w.shape[0]
    rows = np.repeat(w, restarts, axis=0)
    means = _kmeanspp_seeds(x, rows, n_components, np.random.default_rng(seed))
    var = np.full(means.shape, reg_covar if likelihood == "continuous" else min_std**2)
    pi = np.full(means.shape, 1.0 / n_components)
    if start is not None:
        means[::restarts], var[::restarts], pi[::restarts] = start.means, start.stds**2, start.weights
    step = max(1, _CHUNK_ELEMENTS // (n_components * x.shape[0] * restarts)) * restarts
    em = _em_binned if likelihood == "binned" else _em_continuous
    parts = []
    for begin in range(0, rows.shape[0], step):
        block = slice(begin, begin + step)
        floor = reg_covar if likelihood == "continuous" else min_std**2
        parts.append(em(x, rows[block], means[block], var[block], pi[block], floor, max_iter, tol))
        if progress is not None:
            progress(parts[-1][0].shape[0] // restarts)
    mu, var, pi, ll, done = (np.concatenate(part) for part in zip(*parts))
    best = ll.reshape(n_sets, restarts).argmax(1) + np.arange(n_sets) * restarts
    mixtures = []
    for i in best:
        order = np.argsort(mu[i], kind="stable")
        mixtures.append(Mixture(mu[i][order], np.sqrt(var[i][order]), pi[i][order]))
    return BatchFit(mixtures, ll[best], done[best])


def _kmeanspp_seeds(x: np.ndarray, w: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Weighted k-means++ seeding, one seed set per row: first ∝ w, then ∝ w · (distance to nearest seed)²."""
    n = w.shape[0]
    seeds = np.empty((n, k))
    d2 = np.full(w.shape, np.inf)
    for j in range(k):
        p = w if j == 0 else w * d2
        p = np.where(p.sum(1, keepdims=True) > 0, p, w)  # fewer distinct weighted points than seeds: repeat one
        cdf = np.cumsum(p, axis=1)
        idx = np.minimum((cdf < rng.random((n, 1)) * cdf[:, -1:]).sum(1), x.shape[0] - 1)
        seeds[:, j] = x[idx]
        d2 = np.minimum(d2, (x[None, :] - seeds[:, j : j + 1]) ** 2)
    return seeds


def _em_loop(
    w: np.ndarray,
    mu: np.ndarray,
    var: np.ndarray,
    pi: np.ndarray,
    e_step: Callable[[np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, object]],
    moments: Callable[[np.ndarray, np.ndarray, np.ndarray, object], tuple[np.ndarray, np.ndarray]],
    var_step: Callable[[np.ndarray], np.ndarray],
    var_min: float,
    max_iter: int,
    tol: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """EM accelerated by SQUAREM (Varadhan & Roland 2008, Scand. J. Statist. 35:335), rows batched.

    `e_step(mu, var, pi)` gives log π_k p_k(point) [rows, K, points] and whatever `moments` needs;
    `moments(resp, mu, var, aux)` gives Σ_l r_lk E[X | l, k] and Σ_l r_lk E[X² | l, k] for weighted
    responsibilities `resp`; `var_step` regularises the new variances. Each cycle takes two EM steps
    θ0 → θ1 → θ2, extrapolates θ' = θ0 - 2α r + α² v (r = θ1 - θ0, v = θ2 - 2θ1 + θ0, α = -|r|/|v|, in
    means, log-variances and log-weights) and takes one EM step from θ'; when that is not at least as likely
    as θ1 the cycle ends at θ2 instead, so the likelihood never falls behind plain EM. A row stops when its
    log-likelihood changes by less than `tol` over a cycle; rows that stop are written out and dropped.
    Returns means, variances, weights, the mean log-likelihood of the returned parameters, and convergence.
    """
    n, k = mu.shape
    result = (np.empty((n, k)), np.empty((n, k)), np.empty((n, k)), np.empty(n), np.zeros(n, dtype=bool))
    rows = np.arange(n)
    theta = _pack(mu, var, pi)
    ll = np.full(n, -np.inf)

    def em(theta, w):
        """One EM step from packed parameters: (new packed parameters, log-likelihood at the old ones)."""
        mu, var, pi = _unpack(theta, k)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):  # far tails: exp/log of 0 and inf
            resp, aux = e_step(mu, var, pi)
            top = resp.max(1)
            resp -= top[:, None, :]
            np.exp(resp, out=resp)
            total = resp.sum(1)
            ll = (w * (np.log(total) + top)).sum(1)
            resp *= (w / total)[:, None, :]
            s0 = resp.sum(2)
            s1, s2 = moments(resp, mu, var, aux)
            nk = s0 + _EPS
            mu = s1 / nk
            var = var_step(np.maximum(s2 - 2 * mu * s1 + mu * mu * s0, 0.0) / nk)
            return _pack(mu, var, nk / nk.sum(1, keepdims=True)), ll

    cycles = max(1, max_iter // 3)
    for cycle in range(cycles + 1):
        theta1, new_ll = em(theta, w)
        new_ll = np.where(np.isnan(new_ll), -np.inf, new_ll)
        finished = np.abs(new_ll - ll) < tol
        ll = new_ll
        stop = finished | ~np.isfinite(ll) | (cycle == cycles)  # a start with zero likelihood is abandoned
        if stop.any():
            for out, value in zip(result, (*_unpack(theta[stop], k), ll[stop], finished[stop])):
                out[rows[stop]] = value
            keep = ~stop
            if not keep.any():
                break
            rows, theta, theta1, ll, w = (a[keep] for a in (rows, theta, theta1, ll, w))
        theta2, ll1 = em(theta1, w)
        r = theta1 - theta
        v = theta2 - theta1 - r
        alpha = -np.sqrt((r * r).sum(1) / np.maximum((v * v).sum(1), 1e-300))
        alpha = np.minimum(alpha, -1.0)[:, None]
        jump = theta - 2 * alpha * r + alpha * alpha * v
        jump[:, k : 2 * k] = np.maximum(jump[:, k : 2 * k], np.log(var_min))
        theta3, ll_jump = em(jump, w)
        good = np.isfinite(ll_jump) & (ll_jump >= ll1) & np.isfinite(theta3).all(1)
        theta = np.where(good[:, None], theta3, theta2)
    return result


def _pack(mu: np.ndarray, var: np.ndarray, pi: np.ndarray) -> np.ndarray:
    return np.concatenate([mu, np.log(var), np.log(pi)], axis=1)


def _unpack(theta: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    log_pi = theta[:, 2 * k :]
    pi = np.exp(log_pi - log_pi.max(1, keepdims=True))
    with np.errstate(over="ignore"):  # an overshooting SQUAREM jump; its EM step is then refused
        var = np.exp(theta[:, k : 2 * k])
    return theta[:, :k], var, pi / pi.sum(1, keepdims=True)


def _em_continuous(
    x: np.ndarray,
    w: np.ndarray,
    mu: np.ndarray,
    var: np.ndarray,
    pi: np.ndarray,
    reg_covar: float,
    max_iter: int,
    tol: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """GaussianMixture's EM on weighted points."""
    xx = x * x

    def e_step(mu, var, pi):
        log_p = (x - mu[:, :, None]) ** 2
        log_p /= -2 * var[:, :, None]
        log_p += np.log(pi / np.sqrt(2 * np.pi * var))[:, :, None]
        return log_p, ()

    return _em_loop(
        w,
        mu,
        var,
        pi,
        e_step,
        lambda resp, mu, var, aux: (resp @ x, resp @ xx),
        lambda v: v + reg_covar,
        reg_covar,
        max_iter,
        tol,
    )


def _em_binned(
    x: np.ndarray,
    w: np.ndarray,
    mu: np.ndarray,
    var: np.ndarray,
    pi: np.ndarray,
    min_var: float,
    max_iter: int,
    tol: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Grouped-data EM: each point is the bin [x - 1/2, x + 1/2]; variances are kept at or above `min_var`."""
    edges = np.union1d(x - 0.5, x + 0.5)
    lo, hi = np.searchsorted(edges, x - 0.5), np.searchsorted(edges, x + 0.5)

    def e_step(mu, var, pi):
        sd = np.sqrt(var)[:, :, None]
        z = (edges - mu[:, :, None]) / sd
        a, b = z[:, :, lo], z[:, :, hi]
        log_mass = np.log(_interval_mass(a, b, ndtr(-np.abs(z)), lo, hi))
        far = ~(log_mass > _LOG_TINY)  # underflowed far-tail bins: recompute in the log domain
        if far.any():
            log_mass[far] = _log_interval_mass(a[far], b[far])
        log_phi = -0.5 * z * z - _LOG_SQRT_2PI
        return np.log(pi)[:, :, None] + log_mass, (a, b, log_phi[:, :, lo] - log_mass, log_phi[:, :, hi] - log_mass)

    def moments(resp, mu, var, aux):
        a, b, log_ratio_a, log_ratio_b = aux
        # truncated standard normal on [a, b]: E[Z] = (φ(a) - φ(b)) / P, E[Z²] = 1 + (a φ(a) - b φ(b)) / P;
        # with X = μ + σZ: Σ r E[X] = μ Σr + σ Σ r E[Z], Σ r E[X²] = μ² Σr + 2μσ Σ r E[Z] + σ² Σ r E[Z²]
        pa, pb = np.exp(log_ratio_a), np.exp(log_ratio_b)
        r0 = resp.sum(2)
        rz = (resp * (pa - pb)).sum(2)
        rz2 = r0 + (resp * (a * pa - b * pb)).sum(2)
        sd = np.sqrt(var)
        return mu * r0 + sd * rz, mu * mu * r0 + 2 * mu * sd * rz + var * rz2

    return _em_loop(
        w,
        mu,
        var,
        pi,
        e_step,
        moments,
        lambda v: np.maximum(v, min_var),
        min_var,
        max_iter,
        tol,
    )


def _interval_mass(a: np.ndarray, b: np.ndarray, tail: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Φ(b) - Φ(a) from the small tail Φ(-|z|) at each edge, without cancellation in either tail."""
    ta, tb = tail[:, :, lo], tail[:, :, hi]
    return np.where(b <= 0, tb - ta, np.where(a >= 0, ta - tb, 1.0 - ta - tb))


def _log_interval_mass(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """log(Φ(b) - Φ(a)) for a < b, accurate in both tails (an interval above 0 is mirrored below it)."""
    upper = a > 0
    lo, hi = np.where(upper, -b, a), np.where(upper, -a, b)
    log_hi = log_ndtr(hi)
    return log_hi + np.log1p(-np.exp(log_ndtr(lo) - log_hi))
