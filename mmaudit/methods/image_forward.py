"""How an image attribution runs the model and which score it explains.

Every image attribution (CAMs, Integrated Gradients, occlusion, the in-fill tests of the
saliency check) differentiates or evaluates the same thing: the model on *replaced*
images of one batch, other modalities held at their observed values, scored per row.

* ``target_scores``: the explained score of each row -- a class logit, or for one output
  (or a multilabel column) the logit signed by the decision, so a negative decision is
  explained by its own evidence.
* ``repeat_batch`` / ``ImageForward``: the batch repeated as often as the image tensor is
  larger than it (chunk-major, as the IG steps and occlusion windows stack), and, where
  the other encoders' outputs are cached, those encoders swapped for the cached rows so
  they never run again.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from mmaudit.engine.adapter import ModelAdapter
    from mmaudit.engine.data import Batch


# --------------------------------------------------------------------------- targets


def target_scores(logits: torch.Tensor, cls: torch.Tensor, column: int = 0) -> torch.Tensor:
    """The score explained for each row: the logit of class ``cls`` (several outputs), or,
    for one output (or a multilabel ``column``), the logit when ``cls`` is 1 and its
    negation when 0 (evidence for the negative decision)."""
    if logits.shape[1] == 1 or column > 0:
        z = logits[:, column]
        return torch.where(cls.to(z.device) == 1, z, -z)
    return logits.gather(1, cls.to(logits.device).long()[:, None])[:, 0]


# --------------------------------------------------------------------------- forward


def repeat_batch(batch: Batch, k: int, image: torch.Tensor | None = None) -> Batch:
    """``batch`` repeated ``k`` times along the batch axis (chunk-major), image replaced."""
    from dataclasses import fields

    changes: dict[str, object] = {}
    for f in fields(batch):
        v = getattr(batch, f.name)
        if isinstance(v, torch.Tensor) and k > 1:
            changes[f.name] = v.repeat(k, *([1] * (v.dim() - 1)))
    if image is not None:
        changes["image"] = image
    return batch.replace(**changes) if changes else batch


class ImageForward:
    """Run the model on replaced images of one batch, other modalities at observed values.

    ``fixed`` maps layer names (e.g. ``text``, ``tabular``) to their cached outputs for
    the whole dataset (N, ...), in dataset order. Inside ``active()`` those modules are
    swapped for the cached rows of the current batch (repeated as often as the image
    batch is larger than the batch), so they never run; without ``fixed`` the whole
    batch is repeated and the model runs in full.
    """

    def __init__(self, adapter: ModelAdapter, fixed: dict[str, torch.Tensor] | None = None) -> None:
        self.adapter = adapter
        self.fixed = fixed or {}
        self._rows: torch.Tensor | None = None
        self._device_cache: dict[str, torch.Tensor] = {}

    @contextlib.contextmanager
    def active(self) -> Iterator[ImageForward]:
        """Swap the fixed modules for their cached outputs while the context is open."""
        stack = contextlib.ExitStack()
        with stack:
            for name in self.fixed:
                stack.enter_context(self.adapter.substitute(name, self._supplier(name)))
            yield self
        self._device_cache.clear()

    def _supplier(self, name: str) -> Callable[[], torch.Tensor]:
        def supply() -> torch.Tensor:
            assert self._rows is not None, "ImageForward called outside __call__"
            full = self._device_cache.get(name)
            if full is None:
                full = self.fixed[name].to(self.adapter.device)
                self._device_cache[name] = full
            return full[self._rows]

        return supply

    def __call__(self, batch: Batch, images: torch.Tensor) -> torch.Tensor:
        """Logits (k*B, K) for ``images`` (k*B, C, H, W), chunk-major copies of ``batch``."""
        b = len(batch)
        if images.shape[0] % b:
            raise ValueError(f"{images.shape[0]} images for a batch of {b}")
        k = images.shape[0] // b
        self._rows = batch.index.to(self.adapter.device).repeat(k)
        try:
            return self.adapter.logits(repeat_batch(batch, k, images))
        finally:
            self._rows = None
