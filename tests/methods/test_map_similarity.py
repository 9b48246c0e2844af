"""Map similarity: Spearman rows against scipy, SSIM of identical and unrelated maps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmaudit.methods.map_similarity import minmax, spearman_rows, ssim

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_similarity_measures() -> None:
    from scipy.stats import spearmanr

    rng = np.random.default_rng(0)
    a, b = rng.random((5, 30)), rng.random((5, 30))
    b[:, :5] = 0.0  # ties
    rho = spearman_rows(a, b)
    for i in range(5):
        assert rho[i] == pytest.approx(spearmanr(a[i], b[i]).statistic)
    assert np.isnan(spearman_rows(np.ones((1, 4)), a[:1, :4]))[0]
    x = minmax(torch.rand(3, 12, 12))
    assert torch.allclose(ssim(x, x), torch.ones(3))
    assert (ssim(x, minmax(torch.rand(3, 12, 12))) < 0.5).all()
