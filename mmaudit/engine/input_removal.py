"""Removing a modality at the model's input, for ``InferenceCache``'s input-level ablated
sweeps: ``dataset_input_mean`` (what the 'mean' removal puts in: the mean image, the mean of
each lab column) and ``remove_inputs`` (a batch with modalities zeroed, set to that mean,
taken from a permuted donor or marked missing).

Kept apart from ``removal`` (the pieces both levels share: kinds of removal, memo keys,
encoder rows) because these need the cache itself: its loader for the mean image, its
permutation and the donor rows a pass brought along.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from mmaudit.engine.data import Batch
from mmaudit.engine.removal import RemovalHow, empty_text

if TYPE_CHECKING:
    from mmaudit.engine.cache import InferenceCache


def dataset_input_mean(cache: InferenceCache, modality: str) -> torch.Tensor:
    """The dataset mean of a modality's model input: the mean image over samples that have
    one, (1, C, H, W); the mean of each lab column over the rows where it is not missing,
    (1, F), in the model's input space (after the configured normalisation, so it is the
    audited data's mean whatever that normalisation is). The image mean costs a pass over
    the data; ``InferenceCache.input_mean`` computes it once."""
    ds = cache.dataset
    if modality == "tabular":
        values, missing = ds.tabular, ds.tabular_missing
        assert values is not None and missing is not None
        seen = (~missing).double()
        count = seen.sum(0).clamp(min=1)
        return ((values.double() * seen).sum(0) / count).float()[None]
    total, count = None, 0
    col = ds.modalities.index("image")
    with contextlib.closing(cache.iter_batches("mean image")) as batches:
        for b in batches:
            keep = b.present[:, col]
            s = b.image[keep].sum(0)  # type: ignore[index]
            total = s if total is None else total + s
            count += int(keep.sum())
    mean = (total / max(count, 1)).cpu()  # type: ignore[operator]
    return mean[None]


def remove_inputs(
    cache: InferenceCache, batch: Batch, remove: dict[str, RemovalHow], draw: int = 0
) -> Batch:
    """``batch`` with the named modalities removed at the input.

    'mean' is the dataset mean (``InferenceCache.input_mean``) for images and labs; a report
    has no mean, so for text 'mean' is the empty report, the same as 'zero'. 'missing' clears
    the presence flag and zeroes / empties the input as well. 'permute' takes the modality
    (and its presence flag) from the donor row ``cache.permutation(draw)`` names: the donor
    rows the pass decoded with the batch (``cache._donor``) when they are those, else
    collated here.
    """
    changes: dict[str, Any] = {}
    present = batch.present.clone()
    ds = cache.dataset
    donor: Batch | None = None
    if "permute" in remove.values():
        idx = cache.permutation(draw)[batch.index.cpu().numpy()]
        donor = cache._donor
        if donor is None or not np.array_equal(donor.index.cpu().numpy(), idx):
            # outside a pass that brought the donors along: decode here (images only
            # when the image is the one permuted)
            decode = remove.get("image") == "permute"
            items = [ds[int(i)] if decode else {"index": int(i)} for i in idx]
            donor = ds.collate(items).to(batch.index.device)
    for m, how in remove.items():
        col = ds.modalities.index(m)
        if how == "permute":
            assert donor is not None
            present[:, col] = donor.present[:, col]
            if m == "image":
                changes["image"] = donor.image
            elif m == "text":
                changes["input_ids"], changes["attention_mask"] = (
                    donor.input_ids,
                    donor.attention_mask,
                )
            else:
                changes["tabular"] = donor.tabular
                changes["tabular_missing"] = donor.tabular_missing
            continue
        if how == "missing":
            present[:, col] = False
        if m == "text":
            ids, mask = empty_text(ds, len(batch), batch.index.device)
            changes["input_ids"], changes["attention_mask"] = ids, mask
            continue
        current = batch.image if m == "image" else batch.tabular
        assert current is not None
        if how == "mean":
            changes[m] = cache.input_mean(m).to(current.device).expand_as(current)
        else:
            changes[m] = torch.zeros_like(current)
    changes["present"] = present
    return batch.replace(**changes)
