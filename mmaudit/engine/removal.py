"""Removing a modality: the kinds of removal (``RemovalHow``), the memo key of a removal,
and the inputs that stand in for a removed modality: the empty report, a modality's encoder
rows under a removal, the donors' text and lab inputs of permuted coalitions, and a batch
tiled once per coalition. ``InferenceCache`` builds its ablated and coalition sweeps from
these.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

from mmaudit.engine.data import AuditDataset, Batch

RemovalHow = Literal["zero", "mean", "permute", "missing"]


def ablation_key(remove: dict[str, RemovalHow], level: str, draw: int) -> str:
    """The memo key of a removal; the draw counts only where something is permuted."""
    key = f"{level}:" + ",".join(f"{m}={h}" for m, h in sorted(remove.items()))
    return f"{key}#{draw}" if draw and "permute" in remove.values() else key


def encoder_rows(
    full: torch.Tensor,
    mean: torch.Tensor | None,
    how: RemovalHow | None,
    rows: np.ndarray,
    perm: np.ndarray,
) -> torch.Tensor:
    """One modality's encoder outputs for ``rows`` under a removal: the cached rows (kept,
    or 'missing', where the model's own presence handling replaces them), the donors' rows
    (permute), the mean over present samples (mean), or zeros."""
    if how == "permute":
        return full[torch.from_numpy(perm[rows])]
    if how == "mean":
        assert mean is not None
        return mean.expand(len(rows), *full.shape[1:])
    if how == "zero":
        return torch.zeros((len(rows), *full.shape[1:]), dtype=full.dtype)
    return full[torch.from_numpy(rows)]


def donor_inputs(
    batch: Batch, donor: Batch | None, group: list[dict[str, RemovalHow]]
) -> dict[str, torch.Tensor]:
    """The text and lab inputs of the coalitions in ``group``, stacked in order: the donor
    rows' (ids and attention mask; lab values and missing flags) where the coalition permutes
    that modality, ``batch``'s own otherwise. Empty when nothing moves (``donor`` None)."""
    if donor is None:
        return {}
    fields = {"text": ("input_ids", "attention_mask"), "tabular": ("tabular", "tabular_missing")}
    out: dict[str, torch.Tensor] = {}
    for m, names in fields.items():
        for name in names:
            own, theirs = getattr(batch, name), getattr(donor, name)
            if own is None or theirs is None:
                continue
            out[name] = torch.cat([theirs if r.get(m) == "permute" else own for r in group])
    return out


def tile_batch(batch: Batch, times: int) -> Batch:
    """``batch`` repeated ``times`` along the batch axis (one copy per coalition)."""
    if times == 1:
        return batch
    changes = {
        name: value.repeat(times, *([1] * (value.dim() - 1)))
        for name, value in vars(batch).items()
        if isinstance(value, torch.Tensor)
    }
    return batch.replace(**changes)


def empty_text(
    dataset: AuditDataset, n: int, device: torch.device | str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids of an empty report ([CLS] [SEP] + padding) for ``n`` samples."""
    tok = dataset.tokenizer
    length = dataset.input_ids.shape[1]  # type: ignore[union-attr]
    enc = tok([""], padding="max_length", truncation=True, max_length=length, return_tensors="pt")
    ids = enc["input_ids"].long().expand(n, -1).to(device)
    mask = enc["attention_mask"].long().expand(n, -1).to(device)
    return ids, mask
