"""The randomisation helpers: grafting and re-drawing weights leave the original alone."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mmaudit.methods.randomisation import cascade_stages, graft, parametrised_leaves, randomise_

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_graft_and_randomise_leave_the_original_untouched() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Sequential(nn.ReLU(), nn.Conv2d(2, 2, 1)))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    leaves = parametrised_leaves(model)
    assert leaves == ["1.1", "0"]  # nearest the output first
    assert cascade_stages(leaves, 5) == [["1.1"], ["1.1", "0"]]
    import copy

    inner = copy.deepcopy(model[1])
    randomise_(inner, parametrised_leaves(inner), torch.Generator().manual_seed(0))
    shell = graft(model, "1", inner)
    assert shell[1] is inner and model[1] is not inner and shell[0] is model[0]
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    assert not torch.equal(shell[1][1].weight, model[1][1].weight)
    assert graft(model, "", inner) is inner
