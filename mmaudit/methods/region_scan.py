"""A grid scan of an image region for a used patch: where the boxes go, which rows are
scanned, how one box's effect is tested against matched random controls, and the smallest
effect the test can see.

Why a scan beside the map-proposed boxes: attribution maps can be blind to a patch the
model reads (a thresholded or saturated path has no gradient; Sun et al., MICCAI 2023;
Adebayo et al., ICLR 2022), so occluding only the boxes the maps propose misses it. Filling
every box of a grid over the region where no finding belongs (outside the ROI, or the
border band) and comparing each with same-size random boxes of that region asks the model
directly, with forward passes only.

The test of one box is paired per image (box fill against its matched control fill) and
clustered by patient: per patient the mean of (flip with the box filled) - (flip with the
control filled), then an exact one-sided sign test over the patients whose mean is not 0.
A sign test because its p-value is exact at any size (a bootstrap p-value cannot go below
1 / n_boot, and Holm over a grid of a hundred boxes needs p near 5e-4)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

Box = tuple[int, int, int, int]  # image pixels (r0, r1, c0, c1), end-exclusive


def grid_starts(length: int, side: int, stride: int) -> list[int]:
    """Start positions of boxes of ``side`` along an axis of ``length``, ``stride`` apart,
    the last flush with the far edge (so the edge and the corners are always covered)."""
    if side >= length:
        return [0]
    starts = list(range(0, length - side + 1, max(1, stride)))
    if starts[-1] != length - side:
        starts.append(length - side)
    return starts


def grid_boxes(
    size: tuple[int, int],
    box: tuple[int, int],
    stride: float,
    forbidden: torch.Tensor | None = None,
    region: torch.Tensor | None = None,
) -> list[Box]:
    """The boxes of ``box`` side (rows, cols) on a grid over an image of ``size``, a step of
    ``stride`` x the side apart, that touch no ``forbidden`` pixel and whose centre lies in
    ``region`` (both ``(H, W)`` booleans; None: no limit), in row-major order."""
    h, w = size
    bh, bw = min(box[0], h), min(box[1], w)
    rows = grid_starts(h, bh, max(1, round(stride * bh)))
    cols = grid_starts(w, bw, max(1, round(stride * bw)))
    out: list[Box] = []
    for r0 in rows:
        for c0 in cols:
            if forbidden is not None and bool(forbidden[r0 : r0 + bh, c0 : c0 + bw].any()):
                continue
            if region is not None and not bool(region[r0 + bh // 2, c0 + bw // 2]):
                continue
            out.append((r0, r0 + bh, c0, c0 + bw))
    return out


def legal_corners(
    size: tuple[int, int],
    box: tuple[int, int],
    forbidden: torch.Tensor | None = None,
    region: torch.Tensor | None = None,
) -> torch.Tensor:
    """``(H - bh + 1, W - bw + 1)`` boolean: top-left corners of every box of ``box`` side
    the grid could hold (no ``forbidden`` pixel inside, centre in ``region``): where the
    random controls of that size may go."""
    h, w = size
    bh, bw = min(box[0], h), min(box[1], w)
    ok = torch.ones(h - bh + 1, w - bw + 1, dtype=torch.bool)
    if forbidden is not None:
        hit = torch.nn.functional.max_pool2d(forbidden[None, None].float(), (bh, bw), stride=1)
        ok &= hit[0, 0] <= 0
    if region is not None:
        ok &= region[bh // 2 : bh // 2 + h - bh + 1, bw // 2 : bw // 2 + w - bw + 1].bool()
    return ok


def stratified_subset(strata: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Positions (sorted) of ``n`` of the ``len(strata)`` rows, drawn without replacement
    within each stratum in proportion to its size (largest remainders round; every stratum
    keeps at least one row when ``n`` allows), so that a capped scan keeps the label and
    site mix of the audited rows. All rows when ``n`` is 0 or at least their number."""
    total = len(strata)
    if n <= 0 or n >= total:
        return np.arange(total)
    levels, codes = np.unique(np.asarray(strata).astype(str), return_inverse=True)
    sizes = np.bincount(codes, minlength=len(levels))
    quota = sizes * n / total
    take = np.floor(quota).astype(int)
    if n >= len(levels):
        take = np.maximum(take, 1)
    while take.sum() < n:
        gap = np.where(take < sizes, quota - take, -np.inf)
        take[int(np.argmax(gap))] += 1
    while take.sum() > n:
        take[int(np.argmax(take - quota))] -= 1
    picked = [
        rng.choice(np.flatnonzero(codes == k), int(t), replace=False)
        for k, t in enumerate(take)
        if t > 0
    ]
    return np.sort(np.concatenate(picked))


def patient_means(values: np.ndarray, groups: np.ndarray | None) -> np.ndarray:
    """Mean of the finite ``values`` per patient (``groups``; each row its own without)."""
    ok = np.isfinite(values)
    v = values[ok]
    if groups is None:
        return v
    _, codes = np.unique(np.asarray(groups)[ok].astype(str), return_inverse=True)
    sums = np.bincount(codes, weights=v)
    return sums / np.bincount(codes)


def sign_test_p(diffs: np.ndarray) -> float:
    """One-sided exact sign test that positive ``diffs`` outnumber negative ones (zeros
    dropped): P(Bin(k, 1/2) >= positives), k the non-zero count; 1 when k is 0."""
    from scipy.stats import binom

    d = diffs[np.isfinite(diffs)]
    pos, k = int((d > 0).sum()), int((d != 0).sum())
    if k == 0:
        return 1.0
    return float(binom.sf(pos - 1, k, 0.5))


def sign_test_power(n: int, effect: float, control_rate: float, alpha: float) -> float:
    """Power of :func:`sign_test_p` at level ``alpha`` on ``n`` independent pairs of flips,
    when filling the box flips a decision with probability ``control_rate + effect`` and
    the control with ``control_rate`` (independently): a pair is discordant with
    probability psi = p10 + p01 and, given D discordant pairs, the box's count is
    Bin(D, p10 / psi); power = sum_D Bin(D; n, psi) P(Bin(D, p10/psi) >= c_D), c_D the
    smallest count whose null tail is at most ``alpha``."""
    from scipy.stats import binom

    r = min(max(control_rate, 0.0), 1.0)
    hot = min(r + effect, 1.0)
    p10, p01 = hot * (1 - r), r * (1 - hot)
    psi = p10 + p01
    if psi <= 0 or n <= 0:
        return 0.0
    d = np.arange(1, n + 1)
    crit = binom.isf(alpha, d, 0.5) + 1  # smallest c with P(Bin(d, 1/2) >= c) <= alpha
    reject = binom.sf(crit - 1, d, p10 / psi)
    return float(np.sum(binom.pmf(d, n, psi) * reject))


def min_detectable_flip(n: int, control_rate: float, alpha: float, power: float = 0.8) -> float:
    """The smallest flip excess (box flip rate - control flip rate) that :func:`sign_test_p`
    detects with probability ``power`` at level ``alpha`` (already divided for the
    multiple-test correction) on ``n`` patients, at the observed ``control_rate``; NaN
    when even an excess of 1 - control_rate is not detected (too few patients). Found by
    bisection on :func:`sign_test_power`, which grows with the effect. In the normal
    approximation it is about (z_(1-alpha) sqrt(psi) + z_power sqrt(psi - delta^2)) /
    sqrt(n), psi the discordant share."""
    top = 1.0 - min(max(control_rate, 0.0), 1.0)
    if n <= 0 or top <= 0 or sign_test_power(n, top, control_rate, alpha) < power:
        return float("nan")
    lo, hi = 0.0, top
    for _ in range(40):
        mid = (lo + hi) / 2
        if sign_test_power(n, mid, control_rate, alpha) >= power:
            hi = mid
        else:
            lo = mid
    return hi


def boxes_overlap(a: Box, b: Box, share: float = 0.25) -> bool:
    """Whether boxes ``a`` and ``b`` share at least ``share`` of the smaller one's area."""
    dr = min(a[1], b[1]) - max(a[0], b[0])
    dc = min(a[3], b[3]) - max(a[2], b[2])
    if dr <= 0 or dc <= 0:
        return False
    small = min((a[1] - a[0]) * (a[3] - a[2]), (b[1] - b[0]) * (b[3] - b[2]))
    return dr * dc >= share * small - 1e-9


def scan_sizes(base: tuple[int, int], factors: Sequence[float]) -> list[tuple[int, int]]:
    """Distinct box sides (rows, cols) ``base`` x each factor (at least 2 px), in order."""
    out: list[tuple[int, int]] = []
    for f in factors:
        side = (max(2, round(base[0] * f)), max(2, round(base[1] * f)))
        if side not in out:
            out.append(side)
    return out


def holm_count(n_tests: int, alpha: float) -> float:
    """The level the most significant of ``n_tests`` Holm-corrected tests is held to."""
    return alpha / max(1, n_tests)


__all__ = [
    "Box",
    "boxes_overlap",
    "grid_boxes",
    "grid_starts",
    "holm_count",
    "legal_corners",
    "min_detectable_flip",
    "patient_means",
    "scan_sizes",
    "sign_test_p",
    "sign_test_power",
    "stratified_subset",
]
