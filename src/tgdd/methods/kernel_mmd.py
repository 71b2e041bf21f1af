"""The kernel maximum mean discrepancy of M3D (Zhang et al., AAAI 2024): the distance between the mean
embeddings of two samples in a reproducing kernel Hilbert space, estimated from the samples.

M3D matches, per class, the features of real and synthetic images under this distance instead of DM's
distance between their plain means. With the linear kernel ``k(x, y) = x . y`` the biased estimate is
exactly DM's ``|| mean(x) - mean(y) ||^2`` (tested); with a Gaussian kernel (characteristic: the
embedding is injective) it compares every moment of the two samples.

The estimate is the *biased* one (a V-statistic: the diagonal terms ``k(x_i, x_i)`` are kept), the
squared norm of the difference of the empirical mean embeddings, so that it is never negative:

    MMD_b^2 = 1/m^2 sum_ij k(x_i, x_j) + 1/n^2 sum_ij k(y_i, y_j) - 2/(mn) sum_ij k(x_i, y_j)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def squared_distances(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``[m, d] x [n, d] -> [m, n]``: ``|x_i - y_j|^2`` via ``|x|^2 + |y|^2 - 2 x.y`` (one matrix product, no
    ``[m, n, d]`` difference tensor), clamped at 0 against rounding; its gradient at ``x_i = y_j`` is 0."""
    sq = x.pow(2).sum(1, keepdim=True) + y.pow(2).sum(1).unsqueeze(0) - 2 * x @ y.T
    return sq.clamp_min(0)


def median_bandwidth(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The median heuristic (Gretton et al. 2012): sigma^2 = the median of the squared distances between the
    distinct points of the pooled sample (off the diagonal), without gradient: a scale that follows the
    features of whatever network embeds them (a random network's feature norms vary by orders of magnitude
    with its architecture and input size). Falls back to 1 where every distance is 0."""
    with torch.no_grad():
        pooled = torch.cat([x, y])
        d = squared_distances(pooled, pooled)
        off = ~torch.eye(len(pooled), dtype=torch.bool, device=pooled.device)
        median = d[off].median() if off.any() else torch.ones((), device=pooled.device, dtype=pooled.dtype)
        return torch.where(median > 0, median, torch.ones_like(median))


def gaussian_gram(d2: torch.Tensor, sigmas2: Sequence[torch.Tensor | float]) -> torch.Tensor:
    """``sum_s exp(-d2 / (2 sigma_s^2))`` for the squared distances ``d2``: one Gaussian kernel per bandwidth,
    summed (a sum of characteristic kernels is characteristic)."""
    return sum(torch.exp(-d2 / (2 * s2)) for s2 in sigmas2)


def kernel_mmd(
    x: torch.Tensor, y: torch.Tensor, kernel: str = "gaussian", bandwidths: Sequence[float] | None = None
) -> torch.Tensor:
    """Biased MMD^2 between the rows of ``x`` ``[m, d]`` and ``y`` ``[n, d]`` (module docstring).

    ``kernel``: ``"gaussian"`` (``bandwidths`` the sigma^2 of each summed Gaussian; None: one Gaussian at
    :func:`median_bandwidth`) or ``"linear"`` (DM's loss)."""
    if kernel == "linear":
        kxx, kyy, kxy = x @ x.T, y @ y.T, x @ y.T
    elif kernel == "gaussian":
        sigmas2 = [median_bandwidth(x, y)] if bandwidths is None else list(bandwidths)
        kxx = gaussian_gram(squared_distances(x, x), sigmas2)
        kyy = gaussian_gram(squared_distances(y, y), sigmas2)
        kxy = gaussian_gram(squared_distances(x, y), sigmas2)
    else:
        raise ValueError(f"unknown kernel {kernel!r} (gaussian or linear)")
    return kxx.mean() + kyy.mean() - 2 * kxy.mean()
