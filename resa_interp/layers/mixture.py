"""Weighted one-dimensional Gaussian mixtures over layer indices: EM batched over restarts and data sets.

Two likelihoods, both for weighted points (a feature count or a transformed score per layer):

- `binned` (default): each layer l is the unit-width bin [l - 1/2, l + 1/2], and each component is truncated
  to the observed layers (renormalised over their bins): p(l) = Σ_k π_k m_k(l) / M_k with
  m_k(l) = Φ((l + 1/2 - μ_k)/σ_k) - Φ((l - 1/2 - μ_k)/σ_k) and M_k = Σ_{l observed} m_k(l). This is the exact
  likelihood of data that live on the integer layers a model has (no mass is lost below the first layer or
  above the last, so a component near an edge is not penalised for the layers that do not exist); its EM is
  the grouped and truncated-data EM of McLachlan & Jones (1988, Biometrics 44:571): the M-step uses the
  moments of each component truncated to each bin, plus the expected unobserved draws outside the observed
  layers. Means stay within the observed range (a component is a cluster of layers; without the bound a
  truncated component can slide off an edge and become a tail on the edge layer), and σ at most the span of the
  layers (a wider truncated component is flat there; its likelihood is a limit never reached). The likelihood is bounded
  (a layer's probability is at most 1), so nothing needs regularising. On feature counts BIC keeps its
  meaning; on transformed scores the "likelihood" treats a score profile as if it were a count distribution
  (a pseudo-likelihood), so their BIC is a heuristic.
- `continuous`: the density at each layer index, as scikit-learn's GaussianMixture fits the expanded
  observations (same E-step, same M-step with `reg_covar` added to every variance and `10 * eps` to every
  component mass, each point's responsibility multiplied by its weight), untruncated as GaussianMixture is.
  On integer weights it optimises exactly GaussianMixture's objective (tests/test_layers.py checks it reaches
  GaussianMixture's optimum). On layer data a point density rewards narrow components on single layers ever
  more as counts grow, so BIC drifts to more components; it is here to reproduce the paper's kind of fit.

Both run on the distinct layers only, batched over many restarts and resampled weight vectors at once, and
accelerated by SQUAREM, which keeps bootstrap and permutation studies with thousands of refits to seconds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.integrate import trapezoid
from scipy.special import log_ndtr, logsumexp, ndtr

_EPS = 10 * np.finfo(float).eps
_GRID_POINTS = 8001
_GRID_SPAN = 10.0  # standard deviations beyond the outermost components that density integrals cover
_CHUNK_ELEMENTS = 200_000  # rows x components x points per EM block: keeps the temporaries small
_LOG_SQRT_2PI = 0.5 * np.log(2 * np.pi)
_LOG_TINY = -600.0  # below this a bin mass from Φ differences has lost its digits (or underflowed to 0)
LIKELIHOODS = ("binned", "continuous")


@dataclass(frozen=True)
class Mixture:
    """A 1-D Gaussian mixture with components sorted by mean, each optionally truncated to a set of layers."""

    means: np.ndarray
    """Component means, ascending."""
    stds: np.ndarray
    """Component standard deviations (of the untruncated Gaussians)."""
    weights: np.ndarray
    """Mixing weights (sum to 1)."""
    support: np.ndarray | None = None
    """Layers each component is truncated to (renormalised over their unit-width bins): the observed layers of
    a binned fit. None: untruncated Gaussians on the real line (continuous fits)."""

    def _in_support(self, x: np.ndarray) -> np.ndarray:
        """Whether each point lies in a bin [l - 1/2, l + 1/2] of a support layer (all True when untruncated)."""
        if self.support is None:
            return np.ones(np.shape(x), dtype=bool)
        x = np.asarray(x, dtype=float)
        return np.isin(np.floor(x + 0.5), self.support) | np.isin(np.ceil(x - 0.5), self.support)

    def _norms(self) -> np.ndarray:
        """M_k: each component's untruncated mass on the support bins (1 when untruncated)."""
        if self.support is None:
            return np.ones_like(self.means)
        return self._component_bin_masses(self.support).sum(0)

    def _component_bin_masses(self, layers: np.ndarray) -> np.ndarray:
        """Untruncated mass of each component on each unit-width bin: [..., components]."""
        layers = np.asarray(layers, dtype=float)[..., None]
        return ndtr((layers + 0.5 - self.means) / self.stds) - ndtr((layers - 0.5 - self.means) / self.stds)

    def pdf(self, x: np.ndarray) -> np.ndarray:
        """Mixture density at each point of `x` (0 outside the support's bins)."""
        x = np.asarray(x, dtype=float)
        z = (x[..., None] - self.means) / self.stds
        dens = (self.weights / self._norms() * np.exp(-0.5 * z * z) / (np.sqrt(2 * np.pi) * self.stds)).sum(-1)
        return np.where(self._in_support(x), dens, 0.0)

    def bin_probs(self, layers: np.ndarray) -> np.ndarray:
        """Probability mass on each unit-width bin [l - 1/2, l + 1/2] (0 for layers outside the support)."""
        mass = (self.weights / self._norms() * self._component_bin_masses(layers)).sum(-1)
        return np.where(self._in_support(layers), mass, 0.0)

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
    """An evaluation grid wide enough that the mixtures' densities integrate to 1 on it (for truncated
    mixtures: from the first support bin's lower edge to the last one's upper edge)."""
    lo = min(_grid_edges(m)[0] for m in mixtures)
    hi = max(_grid_edges(m)[1] for m in mixtures)
    return np.linspace(lo, hi, _GRID_POINTS)


def _grid_edges(m: Mixture) -> tuple[float, float]:
    if m.support is not None:
        return float(m.support.min()) - 0.5, float(m.support.max()) + 0.5
    return float((m.means - _GRID_SPAN * m.stds).min()), float((m.means + _GRID_SPAN * m.stds).max())


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
    seeds, equal weights. `binned` truncates every component to the layers `x` (see the module docstring), keeps
    every mean within [min(x) - 1/2, max(x) + 1/2] and every σ between `min_std` (in layers) and the span
    max(x) - min(x) + 1: a component is a cluster of layers, below about 0.3 layer the bin masses, hence the
    likelihood, no longer tell widths apart, and above the span a truncated component is flat.
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
        support = x if likelihood == "binned" else None
        mixtures.append(Mixture(mu[i][order], np.sqrt(var[i][order]), pi[i][order], support))
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
    var_range: tuple[float, float],
    max_iter: int,
    tol: float,
    mean_range: tuple[float, float] = (-np.inf, np.inf),
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """EM accelerated by SQUAREM (Varadhan & Roland 2008, Scand. J. Statist. 35:335), rows batched.

    `e_step(mu, var, pi)` gives log π_k p_k(point) [rows, K, points] and whatever `moments` needs;
    `moments(resp, mu, var, aux)` gives, for weighted responsibilities `resp`, each component's complete-data
    mass and first two moments: Σ_l r_lk, Σ_l r_lk E[X | l, k] and Σ_l r_lk E[X² | l, k] (plus, for truncated
    components, the expected draws outside the observed layers); `var_step` regularises the new variances
    (within `var_range`) and means are clipped to `mean_range` (a conditional maximisation: the variance is
    then taken about the clipped mean, so the likelihood still never falls). Each cycle takes two EM steps
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
            nk = resp.sum(2) + _EPS
            s0, s1, s2 = moments(resp, mu, var, aux)
            s0 = s0 + _EPS
            mu = np.clip(s1 / s0, *mean_range)
            var = var_step(np.maximum(s2 - 2 * mu * s1 + mu * mu * s0, 0.0) / s0)
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
        jump[:, :k] = np.clip(jump[:, :k], *mean_range)
        jump[:, k : 2 * k] = np.clip(jump[:, k : 2 * k], *np.log(var_range))
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
        lambda resp, mu, var, aux: (resp.sum(2), resp @ x, resp @ xx),
        lambda v: v + reg_covar,
        (reg_covar, np.inf),
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
    """Grouped and truncated-data EM: each point is the bin [x - 1/2, x + 1/2], each component is renormalised
    over the bins of all points; means are kept within the bins' range, variances at or above `min_var` and at
    most the squared span of the bins (a wider component is flat over them: without the bound the likelihood
    of a uniform background is approached as σ → ∞ and never reached)."""
    span = float(x.max() - x.min()) + 1.0
    var_range = (min_var, max(min_var, span * span))
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
        log_norm = logsumexp(log_mass, axis=2)  # log M_k, the component's mass on the observed bins
        log_phi = -0.5 * z * z - _LOG_SQRT_2PI
        aux = (a, b, log_phi[:, :, lo], log_phi[:, :, hi], log_mass, log_norm)
        return np.log(pi)[:, :, None] + log_mass - log_norm[:, :, None], aux

    def moments(resp, mu, var, aux):
        a, b, log_phi_a, log_phi_b, log_mass, log_norm = aux
        # truncated standard normal on a bin [a, b] of mass P: E[Z] = (φ(a) - φ(b)) / P,
        # E[Z²] = 1 + (a φ(a) - b φ(b)) / P. Truncation: each observation from component k stands for
        # (1 - M_k) / M_k unobserved draws outside the observed bins, whose Z-moments are the Gaussian's (0 and 1)
        # minus the sum of its bin moments. With X = μ + σZ: Σ r E[X] = μ Σr + σ Σ r E[Z], and so on.
        pa, pb = np.exp(log_phi_a - log_mass), np.exp(log_phi_b - log_mass)
        r0 = resp.sum(2)
        rz = (resp * (pa - pb)).sum(2)
        rz2 = r0 + (resp * (a * pa - b * pb)).sum(2)
        phi_a, phi_b = np.exp(log_phi_a), np.exp(log_phi_b)
        bin_z = (phi_a - phi_b).sum(2)  # Σ_l ∫_bin z φ(z) dz
        bin_z2 = (np.exp(log_mass) + a * phi_a - b * phi_b).sum(2)  # Σ_l ∫_bin z² φ(z) dz
        scale = r0 / np.exp(log_norm)  # observed mass / M_k: observed plus expected unobserved draws
        out0, outz, outz2 = scale - r0, -scale * bin_z, scale * (1.0 - bin_z2)
        r0, rz, rz2 = r0 + out0, rz + outz, rz2 + outz2
        sd = np.sqrt(var)
        return r0, mu * r0 + sd * rz, mu * mu * r0 + 2 * mu * sd * rz + var * rz2

    return _em_loop(
        w,
        mu,
        var,
        pi,
        e_step,
        moments,
        lambda v: np.clip(v, *var_range),
        var_range,
        max_iter,
        tol,
        (float(x.min()) - 0.5, float(x.max()) + 0.5),
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
