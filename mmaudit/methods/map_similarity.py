"""How alike two saliency maps are: Spearman rank correlation and SSIM.

The randomisation sanity test compares each sample's map under the trained model with
its map under a randomised one (Adebayo et al. 2018): ``spearman_rows`` on the raw maps
(ties at average ranks), ``ssim`` on maps scaled to [0, 1] by ``minmax``, computed as
scikit-image does.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def spearman_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman rank correlation between matching rows of ``a`` and ``b`` (N, P); ties get
    average ranks; a constant row gives NaN."""
    from scipy.stats import rankdata

    ra = rankdata(a, axis=1)
    rb = rankdata(b, axis=1)
    ra -= ra.mean(1, keepdims=True)
    rb -= rb.mean(1, keepdims=True)
    den = np.sqrt((ra**2).sum(1) * (rb**2).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (ra * rb).sum(1) / np.where(den > 0, den, 1.0), np.nan)


def minmax(maps: torch.Tensor) -> torch.Tensor:
    """Each ``(..., H, W)`` map scaled to [0, 1] (constant maps become 0)."""
    flat = maps.reshape(*maps.shape[:-2], -1)
    lo = flat.min(-1, keepdim=True).values
    hi = flat.max(-1, keepdim=True).values
    return ((flat - lo) / (hi - lo).clamp_min(1e-12)).reshape(maps.shape)


def ssim(a: torch.Tensor, b: torch.Tensor, window: int = 7, sigma: float = 1.5) -> torch.Tensor:
    """Mean structural similarity (Wang et al. 2004) of matching ``(N, H, W)`` maps in [0, 1]
    (Gaussian window, data range 1, valid region only), as scikit-image computes it."""
    window = min(window, a.shape[-1], a.shape[-2])
    window -= 1 - window % 2
    xs = torch.arange(window, dtype=torch.float32) - (window - 1) / 2
    g = torch.exp(-(xs**2) / (2 * sigma**2))
    g = g / g.sum()
    k = (g[:, None] * g[None, :]).view(1, 1, window, window).to(a.device)
    x, y = a.float()[:, None], b.float()[:, None]

    def filt(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, k)

    mx, my = filt(x), filt(y)
    sxx = filt(x * x) - mx**2
    syy = filt(y * y) - my**2
    sxy = filt(x * y) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx**2 + my**2 + c1) * (sxx + syy + c2))
    return s.mean(dim=(1, 2, 3))
